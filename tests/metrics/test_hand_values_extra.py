"""Hand values and properties added because a deliberately wrong metric (an entry of
``experiments/metric_mutations.py``) passed the rest of the suite. Each test names the defect it
catches; the correct code satisfies it and the defect does not."""

from __future__ import annotations

import math

import pytest
import torch
from metric_helpers import LinearNet, make_batch

from concilium.metrics import evaluate, evaluate_curve
from concilium.metrics.translation import translation_shifts

# the linear model f(x) = sum(w x) on a 2x2 all-ones image; the map equals w (as in
# test_hand_values.py): pixel contributions 4, 3, 2, 1
W = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
X = torch.ones(1, 1, 2, 2)
Y = torch.zeros(1, dtype=torch.long)


def _linear(name, maps=W, weights=W, **params):
    model = LinearNet(weights.unsqueeze(0))
    return evaluate(name, maps, images=X, labels=Y, model=model, **params).item()


def test_mask_correlation_hand_value_is_signed():
    """Catches a sign flip (correlating with the background): the value is not 0 here."""
    mask = torch.tensor([[[True, False], [False, False]]])
    # Pearson of [4, 3, 2, 1] with [1, 0, 0, 0]: 1.5 / sqrt(5 * 0.75) = sqrt(3 / 5)
    assert evaluate("mask_correlation", W, masks=mask).item() == pytest.approx(math.sqrt(0.6))
    assert evaluate("mask_correlation", W, masks=~mask).item() == pytest.approx(-math.sqrt(0.6))


def test_insertion_lerf_hand_value():
    """Catches MoRF and LeRF swapped: LeRF insertion puts back 1, 2, 3, 4 (curve 0, 1, 3, 6,
    10), MoRF 4, 3, 2, 1 (curve 0, 4, 7, 9, 10)."""
    common = {"step": 1, "unit": "pixels", "baseline": "zero", "softmax": False}
    assert _linear("insertion_lerf", **common) == pytest.approx(0.25 * (0.5 + 2 + 4.5 + 8))
    assert _linear("insertion", **common) == pytest.approx(0.25 * (2 + 5.5 + 8 + 9.5))


@pytest.mark.parametrize("name", ["insertion", "insertion_lerf"])
def test_insertion_default_baseline_is_the_blurred_image(name):
    """Catches a wrong default baseline: the insertion curves start from the blurred image."""
    model, images, labels, maps, _ = make_batch()
    kw = dict(images=images, labels=labels, model=model, step=25)
    default = evaluate_curve(name, maps, **kw)[1]
    torch.testing.assert_close(default, evaluate_curve(name, maps, baseline="blur", **kw)[1])
    assert not torch.allclose(default, evaluate_curve(name, maps, baseline="black", **kw)[1])


def test_continuity_step_counts_the_image_itself_among_the_positions():
    """Catches ``dx = 2W // nr_steps`` (Quantus: ``(2W + 1) // nr_steps``), invisible at the
    default 28 steps (2W + 1 is odd): W = 10, 7 steps, dx = 21 // 7 = 3. (Quantus itself
    fails here: its last shift, W + 1, indexes outside the image.)"""
    assert translation_shifts(10, 7).tolist() == [-7, -4, -1, 2, 5, 8, 11]


def test_monotonicity_correlation_hand_value_with_signed_relevance():
    """Catches the cumulative relevance in place of each step's own (the same ranks as long as
    the relevances are >= 0). Map = weights = [[-3, -1], [2, 4]], ``abs=False``: the steps in
    increasing relevance -3, -1, 2, 4 change the output by their weight, variances 9, 1, 4, 16:
    Spearman of ranks (1, 2, 3, 4) and (3, 1, 2, 4) = 1 - 6 * 6 / 60 = 0.4 (cumulative
    relevance -3, -4, -2, 2 would give 0.8)."""
    w = torch.tensor([[[-3.0, -1.0], [2.0, 4.0]]])
    score = _linear(
        "monotonicity_correlation", maps=w, weights=w, baseline="zero", softmax=False, abs=False
    )
    assert score == pytest.approx(0.4)


def test_monotonicity_correlation_steps_in_increasing_relevance():
    """Catches the steps taken most relevant first: with a step that does not divide the pixels,
    the groups differ. Map = weights = [-5, -2, 1, 2, 4] on a 1x5 all-ones image, ``abs=False``,
    2 pixels a step: in increasing relevance the groups sum to -7, 3, 4 (variances 49, 9, 16),
    Spearman of ranks (1, 2, 3) and (3, 1, 2) = 1 - 6 * 6 / 24 = -0.5; most relevant first they
    would be 6, -1, -5 (variances 36, 1, 25), Spearman 0.5."""
    w = torch.tensor([[[-5.0, -2.0, 1.0, 2.0, 4.0]]])
    model = LinearNet(w.unsqueeze(0))
    score = evaluate(
        "monotonicity_correlation", w, images=torch.ones(1, 1, 1, 5), labels=Y, model=model,
        step=2, baseline="zero", softmax=False, abs=False, nr_samples=1,
    )  # fmt: skip
    assert score.item() == pytest.approx(-0.5)
