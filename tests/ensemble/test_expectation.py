"""The algebraic expectation of Ens-Avg (review ensembling D10) and the ensemble-size curve."""

import math

import numpy as np
import pytest
import torch

from concilium.ensemble import ens_avg
from concilium.ensemble.expectation import (
    averaging_expectation,
    ensemble_size_curve,
    member_subsets,
    predicted_ratio,
)
from concilium.metrics import evaluate


def _d10_stack(n=60, h=24, k=5):
    """The review's D10 repro: members of random quality over a square mask."""
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, h, h, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, h - 8, (2,), generator=g).tolist()
        masks[i, r:r + 8, c:c + 8] = True
    stack = (torch.rand(k, n, 1, 1, generator=g) * 2 * masks
             + torch.rand(k, n, h, h, generator=g) ** 3 * 3)
    return stack, masks


def test_identity_d10_observed_ens_avg_equals_the_sigma_weighted_formula():
    stack, masks = _d10_stack()
    t = averaging_expectation(stack, masks)
    observed = evaluate("mask_correlation", ens_avg(stack, normalisation="max_abs"),
                        masks=masks).double().numpy()
    members = torch.stack([evaluate("mask_correlation", s, masks=masks) for s in stack])
    np.testing.assert_allclose(t["ens_avg"], observed, atol=1e-6)
    np.testing.assert_allclose(t["identity"], observed, atol=1e-6)
    np.testing.assert_allclose(t["exp_avg"], members.double().mean(0).numpy(), atol=1e-6)
    # the inequality that makes the gain on this metric algebraic: never below the weighted mean
    assert (t["ens_avg"] >= t["exp_avg_sigma"] - 1e-9).all()


def test_sigma_weights_are_the_normalised_maps_centred_norms():
    # two members whose max_abs maps have different centred norms: the weighted mean differs
    # from the plain mean by exactly these weights
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])          # corr 1, sigma = sqrt(3)/4
    b = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])          # corr 1/3, sigma = sqrt(3)/4
    c = torch.tensor([[[1.0, 0.5], [0.5, 0.5]]])          # corr 1, sigma = sqrt(3)/8
    t = averaging_expectation(torch.stack([b, c]), masks)
    assert t["exp_avg"].item() == pytest.approx((1 / 3 + 1) / 2)
    assert t["exp_avg_sigma"].item() == pytest.approx((2 * (1 / 3) + 1 * 1) / 3)
    t = averaging_expectation(torch.stack([a, b]), masks)
    assert t["exp_avg_sigma"].item() == pytest.approx((1 + 1 / 3) / 2)


def test_predicted_gain_uses_rho_bar():
    assert float(predicted_ratio(0.0, 4)) == pytest.approx(2.0)
    assert float(predicted_ratio(1.0, 4)) == pytest.approx(1.0)
    assert float(predicted_ratio(0.5, 2)) == pytest.approx(1 / math.sqrt(0.75))
    # equal-norm members orthogonal to each other: rho_bar = -1/(K-1) would be exact; here two
    # members of equal norm with rho known by construction -> expected equals observed
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])          # same norm, rho(a, b) = -1/3
    t = averaging_expectation(torch.stack([a, b]), masks)
    assert t["rho_bar"].item() == pytest.approx(-1 / 3)
    assert t["expected"].item() == pytest.approx(
        t["exp_avg_sigma"].item() / math.sqrt(1 / 2 + 1 / 2 * (-1 / 3)))
    assert t["expected"].item() == pytest.approx(t["ens_avg"].item())
    assert t["beyond"].item() == pytest.approx(0.0, abs=1e-12)


def test_expectation_rejects_masks_of_another_shape():
    with pytest.raises(ValueError, match="masks must be"):
        averaging_expectation(torch.rand(2, 3, 4, 4), torch.zeros(3, 5, 5, dtype=torch.bool))


def test_member_subsets_enumerate_or_draw_distinct():
    assert member_subsets(4, 4, subsets=3, rng=np.random.default_rng(0)) == [(0, 1, 2, 3)]
    drawn = member_subsets(11, 5, subsets=7, rng=np.random.default_rng(0))
    assert len(set(drawn)) == 7 and all(len(s) == 5 for s in drawn)
    assert drawn == member_subsets(11, 5, subsets=7, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        member_subsets(3, 4, subsets=2, rng=np.random.default_rng(0))


def test_ensemble_size_curve_hand_checked():
    # three members on one image; score = the map's mean: Ens-Avg of max_abs maps is linear,
    # so the score of a K-subset is the mean of its members' scores
    maps = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 4.0)])
    maps[1, 0, 0, 0] = 4.0                               # member 1 normalises to [.5, .5, .5, 1]
    curve = ensemble_size_curve(maps, lambda m: m.flatten(1).mean(1),
                                rng=np.random.default_rng(0), subsets=10)
    member = [1.0, 0.625, 1.0]
    assert curve["k"].tolist() == [1, 2, 3]
    assert curve["subsets"].tolist() == [3, 3, 1]
    assert curve.loc[0, "mean"] == pytest.approx(np.mean(member))
    assert curve.loc[0, "low"] == pytest.approx(np.quantile(member, 0.025))
    assert curve.loc[2, "mean"] == pytest.approx(np.mean(member))
    assert curve.loc[2, "low"] == curve.loc[2, "high"] == pytest.approx(np.mean(member))


def test_ensemble_size_curve_drops_an_image_nan_for_any_subset():
    maps = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def score(m):
        out = m.flatten(1).mean(1).clone()
        out[1] = math.nan                                  # image 1 never scores
        return out

    curve = ensemble_size_curve(maps, score, rng=np.random.default_rng(0))
    assert (curve["images"] == 1).all() and np.isfinite(curve["mean"]).all()
