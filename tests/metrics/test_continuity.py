"""Continuity: the shifts, hand values (layer a), properties (b) and agreement with Quantus
0.6.0 at both libraries' defaults (d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import LinearNet, input_x_gradient, make_batch

from concilium.metrics import MetricWarning, evaluate
from concilium.metrics.translation import translate, translation_shifts


def squares(model, images, targets):
    return images[:, 0] ** 2


def test_shifts_walk_quantus_steps_without_the_image_itself():
    # W = 224: dx = 449 // 28 = 16, shifts -208, -192, ..., 224 less 0
    shifts = translation_shifts(224, 28)
    assert shifts.tolist() == [-224 + 16 * k for k in range(1, 29) if k != 14]
    # a narrow image (dx = 0; Quantus repeats -W 28 times): each shift once
    assert translation_shifts(3, 28).tolist() == [-2, -1, 1, 2, 3]
    with pytest.raises(ValueError, match="nr_steps"):
        translation_shifts(8, 0)


def test_translate_fills_with_the_image_minimum():
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]]).repeat(2, 1, 1, 1)
    out = translate(x, torch.tensor([1, -2]))
    assert out[0, 0, 0].tolist() == [1.0, 1.0, 2.0]
    assert out[1, 0, 0].tolist() == [3.0, 1.0, 1.0]


@pytest.mark.parametrize("nr_steps", [3, 28])
def test_hand_value(nr_steps):
    # x = [1, 2], a = x^2 / 4 = [0.25, 1]; shift -1: x' = [2, 1], a' = [1, 0.25]:
    # L1 1.5 over L2 sqrt(2); shifts 1 and 2: x' = [1, 1], a' = [1, 1]: 0.75 over 1
    x = torch.tensor([[[[1.0, 2.0]]]])
    score = evaluate(
        "continuity", squares(None, x, None), images=x, labels=torch.tensor([0]),
        model=LinearNet(torch.ones(1, 1, 2)), explainer=squares, nr_steps=nr_steps,
    )  # fmt: skip
    assert score.item() == pytest.approx(1.5 / math.sqrt(2), rel=1e-6)


def test_nan_when_a_translated_copy_is_not_predicted_as_its_label():
    # logits [sum(x), 0]: [3, -1] is class 0, its shift -1 [-1, -1] class 1; every copy of
    # [1, 2] ([2, 1], [1, 1], [1, 1]) stays class 0
    x = torch.tensor([[[[3.0, -1.0]]], [[[1.0, 2.0]]]])
    model = LinearNet(torch.ones(1, 1, 2))
    with pytest.warns(MetricWarning, match="1 of 2 images score NaN"):
        score = evaluate(
            "continuity", squares(None, x, None), images=x, labels=torch.tensor([0, 0]),
            model=model, explainer=squares, return_nan_when_prediction_changes=True,
        )  # fmt: skip
    assert math.isnan(score[0].item()) and math.isfinite(score[1].item())


def test_a_translation_invariant_explanation_scores_zero():
    model, images, labels, maps, _ = make_batch(n=2, size=8)
    fixed = lambda m, x, t: maps[:1].expand(x.shape[0], -1, -1)  # noqa: E731
    score = evaluate(
        "continuity", maps[:1], images=images[:1], labels=labels[:1], model=model, explainer=fixed
    )
    assert score.item() == 0.0


def _q_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return input_x_gradient(model, x, torch.as_tensor(targets).long()).numpy()[:, None]


@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 16), (1, 40)])
def test_matches_quantus_at_the_defaults(channels, size):
    """One image per Quantus call (Quantus normalises by the batch's max, we per map)."""
    model, images, labels, _, _ = make_batch(n=3, c=channels, size=size)
    maps = input_x_gradient(model, images, labels)
    theirs = [
        quantus.Continuity(disable_warnings=True)(
            model=model, x_batch=images[i : i + 1].numpy(), y_batch=labels[i : i + 1].numpy(),
            a_batch=maps[i : i + 1].numpy()[:, None], explain_func=_q_explain, device="cpu",
        )[0]
        for i in range(3)
    ]  # fmt: skip
    ours = evaluate(
        "continuity", maps, images=images, labels=labels, model=model, explainer=input_x_gradient
    ).numpy()
    np.testing.assert_allclose(ours, np.asarray(theirs, dtype=float), rtol=1e-6)


def test_quantus_repeats_the_all_fill_shift_on_narrow_images():
    """2W + 1 < nr_steps: Quantus's step is 0, so all 28 of its copies are the shift -W (every
    column filled); ours walks every shift, whose maximum includes that one (shift W)."""
    model, images, labels, _, _ = make_batch(n=1, size=8, seed=2)
    maps = input_x_gradient(model, images, labels)
    theirs = quantus.Continuity(disable_warnings=True)(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
        a_batch=maps.numpy()[:, None], explain_func=_q_explain, device="cpu",
    )[0]  # fmt: skip
    filled = translate(images, torch.tensor([-8]))
    assert torch.equal(filled, torch.full_like(images, float(images.min())))
    a = maps / maps.abs().amax()
    a_filled = input_x_gradient(model, filled, labels)
    a_filled = a_filled.abs() / a_filled.abs().amax()
    by_hand = (a.abs() - a_filled).abs().sum() / (images - filled).norm()
    assert theirs == pytest.approx(by_hand.item(), rel=1e-5)
    ours = evaluate(
        "continuity", maps, images=images, labels=labels, model=model, explainer=input_x_gradient
    )
    assert ours.item() > theirs * (1 + 1e-3)
