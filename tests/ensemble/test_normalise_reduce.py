"""Normalisations and reducers: hand values, per-image independence, constant maps, registry."""

import numpy as np
import pytest
import scipy.stats
import torch

from concilium.ensemble.normalise import NORMALISATIONS, normalise
from concilium.ensemble.reduce import REDUCERS, aggregate, reduce, stack_maps

MAP = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", [[1.0, -2.0], [0.5, 0.0]]),
        ("max_abs", [[0.5, -1.0], [0.25, 0.0]]),
        ("min_max", [[1.0, 0.0], [2.5 / 3, 2.0 / 3]]),
        ("l1", [[1 / 3.5, -2 / 3.5], [0.5 / 3.5, 0.0]]),
        ("l2", [[1 / 5.25**0.5, -2 / 5.25**0.5], [0.5 / 5.25**0.5, 0.0]]),
        ("second_moment", [[1 / 1.3125**0.5, -2 / 1.3125**0.5], [0.5 / 1.3125**0.5, 0.0]]),
        ("rank", [[1.0, 0.0], [2 / 3, 1 / 3]]),
    ],
)
def test_normalisation_hand_values(name, expected):
    torch.testing.assert_close(normalise(MAP, name), torch.tensor([expected]))


def test_z_score_and_median_iqr_hand_values():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    std = float(np.std([1, 2, 3, 4]))
    torch.testing.assert_close(normalise(x, "z_score"), (x - 2.5) / std)
    # numpy quantiles of [1, 2, 3, 4]: q1 = 1.75, median = 2.5, q3 = 3.25 -> IQR 1.5
    torch.testing.assert_close(normalise(x, "median_iqr"), (x - 2.5) / 1.5)


def test_median_iqr_falls_back_when_iqr_is_zero():
    x = torch.zeros(1, 4, 4)
    x[0, 0, 0] = 3.0  # mostly zero: IQR = 0 but the map is not constant
    out = normalise(x, "median_iqr")
    assert out[0, 0, 0] == 1.0 and out.abs().sum() == 1.0


def test_rank_ties_match_scipy():
    x = torch.tensor([[[3.0, 1.0, 3.0], [2.0, 2.0, 0.0]]])
    ranks = scipy.stats.rankdata(x.flatten().numpy(), method="average")
    expected = torch.tensor((ranks - 1) / 5, dtype=torch.float32).reshape(1, 2, 3)
    torch.testing.assert_close(normalise(x, "rank"), expected)


@pytest.mark.parametrize("name", NORMALISATIONS.names())
def test_normalisation_is_per_image_and_finite_on_constant_maps(name):
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 6, generator=gen)
    alone = normalise(maps[1:2], name)
    together = normalise(maps, name)
    torch.testing.assert_close(together[1:2], alone)  # never across the batch
    const = torch.full((2, 4, 4), 7.0)
    const[1] = 0.0
    out = normalise(const, name)
    assert torch.isfinite(out).all()
    assert out.shape == const.shape
    # stacked (K, N, H, W) input works the same
    torch.testing.assert_close(normalise(maps[None], name)[0], together)


def test_normalise_bad_inputs():
    with pytest.raises(ValueError, match="valid names"):
        normalise(MAP, "max")
    with pytest.raises(TypeError, match="floating-point"):
        normalise(MAP.long(), "l1")
    with pytest.raises(ValueError, match="NaN"):
        normalise(torch.full((1, 2, 2), float("nan")), "l1")


STACK = torch.tensor([1.0, -5.0, 2.0, 4.0]).reshape(4, 1, 1, 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mean", 0.5), ("median", 1.5), ("min", -5.0), ("max", 4.0), ("max_abs", -5.0),
     ("trimmed_mean", 1.5), ("rank_mean", 0.5)],
)
def test_reducer_hand_values(name, expected):
    # trim=0.25 of K=4 drops one value from each end: mean(1, 2) = 1.5
    assert reduce(STACK, name, trim=0.25).item() == pytest.approx(expected)


def test_trimmed_mean_matches_scipy():
    gen = torch.Generator().manual_seed(1)
    stack = torch.randn(10, 2, 3, 3, generator=gen)
    expected = scipy.stats.trim_mean(stack.numpy(), 0.2, axis=0)
    torch.testing.assert_close(reduce(stack, "trimmed_mean", trim=0.2), torch.tensor(expected))


@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_of_one_is_identity_up_to_ranking(name):
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(1, 3, 4, 4, generator=gen)
    out = reduce(maps, name)
    assert out.shape == (3, 4, 4)
    expected = normalise(maps[0], "rank") if name == "rank_mean" else maps[0]
    torch.testing.assert_close(out, expected)


def test_aggregate_is_normalise_then_reduce():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 4, 4, generator=gen), 10 * torch.randn(2, 4, 4, generator=gen)
    out = aggregate({"a": a, "b": b}, normalisation="max_abs", reducer="max")
    torch.testing.assert_close(out, torch.maximum(normalise(a), normalise(b)))


def test_stack_maps_rejects_different_image_sets():
    with pytest.raises(ValueError, match="different images"):
        stack_maps({"m0": torch.zeros(3, 4, 4), "m1": torch.zeros(2, 4, 4)})
    with pytest.raises(ValueError, match="torch.stack"):
        reduce(torch.zeros(3, 4, 4), "mean")
    with pytest.raises(ValueError, match="trim"):
        reduce(STACK, "trimmed_mean", trim=0.5)


@pytest.mark.parametrize("side", [31, 32, 224])
@pytest.mark.parametrize("lead", [(1,), (4,), (11, 2)])
@pytest.mark.parametrize("value", [0.1, 1 / 3])
def test_z_score_of_a_constant_float32_map_is_zero(side, lead, value):
    """Review D16: a constant float32 map gave -1 everywhere where the float32 mean differs from
    the value by a rounding error and the float32 std is not exactly 0 (e.g. one 32x32 map of
    0.1 in torch 2.13); the statistics are now float64, exact for a constant map."""
    out = normalise(torch.full((*lead, side, side), value, dtype=torch.float32), "z_score")
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))


def test_rank_mean_hand_values_on_maps_with_several_pixels():
    """Review section 3: the 1x1 hand value hit the ``p == 1`` branch (0.5 whatever the ranks).
    Two voters over 2x2 maps, pixel quantiles (rank - 1) / 3, ties at their mean rank."""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])      # quantiles 0, 1/3, 2/3, 1
    b = torch.tensor([[40.0, 30.0], [10.0, 10.0]])  # 1, 2/3, (0 + 1/3)/2 twice
    out = reduce(torch.stack([a, b])[:, None], "rank_mean")[0]
    expected = torch.tensor([[(0 + 1) / 2, (1 / 3 + 2 / 3) / 2], [(2 / 3 + 1 / 6) / 2, (1 + 1 / 6) / 2]])
    torch.testing.assert_close(out, expected)


def test_z_score_of_a_constant_map_is_the_documented_zero():
    """Review D16 / section 3: the constant-map test checked finiteness only; a float32 map of
    0.1 gave -1 everywhere."""
    for size in (4, 32, 224):
        torch.testing.assert_close(normalise(torch.full((1, size, size), 0.1), "z_score"),
                                   torch.zeros(1, size, size))
