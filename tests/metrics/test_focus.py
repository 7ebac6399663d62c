"""Focus: how the mosaics are built, hand values (layer a), properties (b) and agreement with
Quantus 0.6.0 on the same mosaics (d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import input_x_gradient, make_batch

from concilium.metrics import MetricWarning, evaluate
from concilium.metrics.mosaic import build_mosaics, quadrant_masks


def _batch(n=6, size=8):
    """Images whose constant value is their index, labels 0, 0, 1, 1, 2, 2, ..."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size)
    return images.contiguous(), torch.arange(n) // 2


@pytest.mark.parametrize("tile", ["half", "full"])
def test_each_mosaic_holds_the_image_a_same_class_image_and_two_others(tile):
    images, labels = _batch()
    mosaics, target, valid = build_mosaics(
        images, labels, generator=torch.Generator().manual_seed(0), tile=tile
    )
    side = 8 if tile == "half" else 16
    assert mosaics.shape == (6, 1, side, side) and valid.all()
    assert (target.sum(1) == 2).all()
    for i in range(6):
        corners = mosaics[i, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # one pixel per quadrant
        tiles = corners.long()
        inside, outside = tiles[target[i]], tiles[~target[i]]
        assert sorted(inside.tolist()) == sorted([i, i ^ 1])  # itself and its class partner
        assert (labels[outside] != labels[i]).all() and outside[0] != outside[1]


def test_mosaics_are_seeded_and_leave_the_global_rng():
    images, labels = _batch()
    state = torch.get_rng_state()
    first = build_mosaics(images, labels, generator=torch.Generator().manual_seed(4))
    second = build_mosaics(images, labels, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert torch.equal(state, torch.get_rng_state())


def test_alone_in_its_class_the_image_is_its_own_partner_and_one_class_is_nan():
    images, labels = _batch(n=3)  # labels 0, 0, 1: image 2 has no partner
    mosaics, target, valid = build_mosaics(
        images, labels, generator=torch.Generator().manual_seed(1)
    )
    corners = mosaics[2, 0, [0, 0, -1, -1], [0, -1, 0, -1]].long()
    assert corners[target[2]].tolist() == [2, 2] and valid.all()
    assert not build_mosaics(images, torch.zeros(3, dtype=torch.long), generator=None)[2].any()


def test_quadrant_masks_split_at_the_half_as_quantus():
    m = quadrant_masks(torch.tensor([[True, False, False, True]]), (5, 4))
    assert m[0].int().tolist() == [[1, 1, 0, 0]] * 2 + [[0, 0, 1, 1]] * 3


def _explain_where(value_inside, value_outside):
    """An explainer that puts ``value_inside`` on the mosaic tiles of the target class (their
    pixel value's class equals the target: the test images hold their own index)."""

    def explain(model, x, t):
        cls = x[:, 0].long() // 2
        return torch.where(cls == t.view(-1, 1, 1), value_inside, value_outside).float()

    return explain


@pytest.mark.parametrize(
    ("inside", "outside", "abs", "expected"),
    [
        (1.0, 0.0, False, 1.0),
        (1.0, 1.0, False, 0.5),
        (1.0, 3.0, False, 0.25),
        (1.0, -3.0, False, 1.0),  # negative relevance is not counted
        (1.0, -3.0, True, 0.25),
    ],
)
def test_hand_values(inside, outside, abs, expected):
    images, labels = _batch()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    score = evaluate(
        "focus", images[:, 0], images=images, labels=labels, model=model,
        explainer=_explain_where(inside, outside), abs=abs,
    )  # fmt: skip
    np.testing.assert_allclose(score.numpy(), expected)


def test_one_class_or_no_positive_relevance_is_nan_with_a_warning():
    images, labels = _batch(n=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.warns(MetricWarning, match="4 of 4 images score NaN because the batch has no"):
        one_class = evaluate(
            "focus", images[:, 0], images=images, labels=torch.zeros(4, dtype=torch.long),
            model=model, explainer=_explain_where(1.0, 0.0),
        )  # fmt: skip
    assert torch.isnan(one_class).all()
    with pytest.warns(MetricWarning, match="no positive relevance"):
        negative = evaluate(
            "focus", images[:, 0], images=images, labels=labels, model=model,
            explainer=_explain_where(-1.0, -1.0),
        )  # fmt: skip
    assert torch.isnan(negative).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_quantus_on_the_same_mosaics(channels):
    model, images, labels, maps, _ = make_batch(n=6, c=channels, size=10)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.Generator().manual_seed(7)
    mosaics, target, _ = build_mosaics(images, labels, generator=g)
    mosaic_maps = input_x_gradient(model, mosaics, labels)
    theirs = quantus.Focus(disable_warnings=True)(
        model=model, x_batch=mosaics.numpy(), y_batch=labels.numpy(),
        a_batch=mosaic_maps.numpy()[:, None], custom_batch=target.int().numpy(), device="cpu",
    )  # fmt: skip
    ours = evaluate(
        "focus", maps, images=images, labels=labels, model=model, explainer=input_x_gradient,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs, dtype=float), atol=1e-6)
    assert not math.isnan(float(ours.sum()))
