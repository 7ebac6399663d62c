"""``features=`` of the one-shot perturbation metrics (faithfulness and monotonicity correlation,
sufficiency, ROAD, non-sensitivity): a feature is a set of pixels replaced together, its
relevance the sum of the map over it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import make_batch
from scipy.stats import spearmanr
from torch import nn

from concilium.metrics import METRICS, evaluate, evaluate_curve
from concilium.metrics.features import feature_labels
from concilium.metrics.imputation import noisy_linear_imputation

TAKING = ["faithfulness_correlation", "monotonicity_correlation", "sufficiency", "road",
          "non_sensitivity"]
FAST = {
    "faithfulness_correlation": {"nr_runs": 12, "subset_size": 20},
    "monotonicity_correlation": {"nr_samples": 3, "step": 5},
    "road": {"percentages": (10, 40, 70)},
    "non_sensitivity": {"step": 3},
}


class MeanNet(nn.Module):
    """Logits ``[mean(x), 0.3]``: the score of a copy is the mean of what is left of it."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m, torch.full_like(m, 0.3)], 1)


def blocks(n=3, seed=5):
    """``(N, 3, 24, 24)``: 4 x 4 blocks of random colours, which SLIC finds as superpixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g).repeat_interleave(6, 2).repeat_interleave(6, 3)


@pytest.mark.parametrize("name", TAKING)
def test_the_metric_takes_features_with_pixels_by_default(name):
    assert METRICS.get(name).params["features"] == "pixels"


@pytest.mark.parametrize("name", TAKING)
def test_one_pixel_patches_are_the_pixels(name):
    """``patch:1`` goes through the feature path (sums per feature, seeded ties among
    features, subsets drawn from the features) and gives the pixel path's values exactly."""
    model, images, labels, maps, _ = make_batch(c=3, size=12)
    maps = maps.clone()
    maps[:, 4:8, 4:8] = 0.5  # ties
    kw = dict(images=images, labels=labels, model=model, **FAST.get(name, {}))
    ours = evaluate(name, maps, features="patch:1", **kw)
    pixels = evaluate(name, maps, **kw)
    torch.testing.assert_close(ours, pixels, rtol=0, atol=0, equal_nan=True)


def patch_constant_maps():
    """Maps constant on each 4 x 4 patch of a 16 x 16 image, distinct patch values."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.randperm(16, generator=g).float().view(1, 4, 4) + 1
    maps = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    return maps * torch.arange(1, 5.0)[:, None, None]


@pytest.mark.parametrize(
    ("name", "by_patch", "by_pixel"),
    [
        ("monotonicity_correlation", {"step": 1}, {"step": 16}),
        ("monotonicity_correlation", {"step": 25, "unit": "percent"}, {"step": 64}),
        ("sufficiency", {"keep": 0.25}, {"keep": 0.25}),
        ("road", {"percentages": (25, 50, 75)}, {"percentages": (25, 50, 75)}),
    ],
)
def test_a_patch_is_its_pixels_replaced_at_once(name, by_patch, by_pixel):
    """A map constant on each 4 x 4 patch: a step of one patch is a step of its 16 pixels."""
    model, images, labels, _, _ = make_batch(c=3, size=16)
    maps = patch_constant_maps()
    kw = dict(images=images, labels=labels, model=model)
    if name == "monotonicity_correlation":
        kw["nr_samples"] = 3
    ours = evaluate(name, maps, features="patch:4", **kw, **by_patch)
    pixels = evaluate(name, maps, **kw, **by_pixel)
    torch.testing.assert_close(ours, pixels)


def test_faithfulness_correlation_of_superpixels_is_one_for_the_exact_map():
    """Mean-of-image model, zero baseline: the drop of a subset is the sum of the image over its
    pixels, so the channel sum of the image as map correlates exactly (1, or -1 negated)."""
    images = blocks()
    labels = torch.zeros(3, dtype=torch.long)
    maps = images.sum(1)
    kw = dict(images=images, labels=labels, model=MeanNet(), baseline="zero", nr_runs=20,
              subset_size=4, features="slic:n_segments=16")
    torch.testing.assert_close(evaluate("faithfulness_correlation", maps, **kw),
                               torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(evaluate("faithfulness_correlation", -maps, **kw),
                               -torch.ones(3, dtype=torch.float64))


def test_faithfulness_correlation_subsets_larger_than_an_image_are_refused():
    images = blocks()
    counts = feature_labels("slic:n_segments=16", images)[1]
    with pytest.raises(ValueError, match=f"more than the {int(counts.min())} features.*image"):
        evaluate("faithfulness_correlation", images.sum(1), images=images,
                 labels=torch.zeros(3, dtype=torch.long), model=MeanNet(), subset_size=50,
                 features="slic:n_segments=16")


def by_hand_relevance(maps, seg, i, f):
    return np.array([maps[i][seg[i] == k].sum().item() for k in range(f)])


def test_monotonicity_correlation_of_superpixels_by_hand():
    """Steps of 10 % of each image's superpixels, least relevant first; a zero baseline and a
    mean-of-image model: the squared change of a step is the square of the mean of its pixels."""
    _, _, _, maps, _ = make_batch(n=3, c=3, size=24, seed=5)
    images = blocks()
    labels = torch.zeros(3, dtype=torch.long)
    spec = "slic:n_segments=16"
    scores = evaluate("monotonicity_correlation", maps, images=images, labels=labels,
                      model=MeanNet(), features=spec, step=10, unit="percent", baseline="zero",
                      softmax=False, abs=False)
    seg, counts = feature_labels(spec, images)
    for i in range(3):
        f = int(counts[i])
        rel = by_hand_relevance(maps, seg, i, f)
        ranked = np.argsort(rel, kind="stable")
        ends = [round(f * k / 10) for k in range(1, 11)]
        atts, changes = [], []
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            gone = np.isin(seg[i].numpy(), ranked[start:end])
            atts.append(rel[ranked[start:end]].sum())
            changes.append((np.where(gone[None], images[i].numpy(), 0.0).mean()) ** 2)
        expected = spearmanr(atts, changes).statistic
        assert scores[i].item() == pytest.approx(expected, abs=1e-9)


def test_monotonicity_correlation_of_superpixels_needs_percent():
    images = blocks()
    with pytest.raises(ValueError, match="unit='percent'"):
        evaluate("monotonicity_correlation", images.sum(1), images=images,
                 labels=torch.zeros(3, dtype=torch.long), model=MeanNet(), features="slic")


def test_sufficiency_of_superpixels_by_hand():
    """Keep the round(0.3 F) superpixels of largest sum of |map|: the score is the mean of the
    image minus the mean of what is kept (zero baseline, mean-of-image model)."""
    _, _, _, maps, _ = make_batch(n=3, c=3, size=24, seed=5)
    images = blocks()
    labels = torch.zeros(3, dtype=torch.long)
    spec = "slic:n_segments=16"
    scores = evaluate("sufficiency", maps, images=images, labels=labels, model=MeanNet(),
                      features=spec, keep=0.3, baseline="zero", softmax=False)
    seg, counts = feature_labels(spec, images)
    for i in range(3):
        f = int(counts[i])
        rel = by_hand_relevance(maps.abs(), seg, i, f)
        kept = np.isin(seg[i].numpy(), np.argsort(-rel, kind="stable")[: max(1, round(0.3 * f))])
        x = images[i].numpy()
        expected = x.mean() - np.where(kept[None], x, 0.0).mean()
        assert scores[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


class Recorder(MeanNet):
    """:class:`MeanNet` that keeps every input it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return super().forward(x)


def test_road_of_superpixels_by_hand():
    """The top int(F p / 100) superpixels are imputed (every pixel of them, from the pixels
    around them); noise 0 makes the imputation deterministic. The copies the model sees are
    compared with the copies imputed by hand."""
    _, _, _, maps, _ = make_batch(n=3, c=3, size=24, seed=5)
    images = blocks()
    model = Recorder()
    labels = torch.tensor([0, 1, 0])
    spec = "slic:n_segments=16"
    pct = (20, 50, 80)
    curve = evaluate_curve("road", maps, images=images, labels=labels, model=model,
                           features=spec, percentages=pct, noise=0.0, batch_size=4)
    torch.testing.assert_close(curve, torch.tensor([[1.0] * 3, [0.0] * 3, [1.0] * 3]).double())
    seen = torch.cat(model.seen)
    assert seen.shape == (9, 3, 24, 24)
    seg, counts = feature_labels(spec, images)
    for i in range(3):
        f = int(counts[i])
        ranked = np.argsort(-by_hand_relevance(maps, seg, i, f), kind="stable")
        for j, p in enumerate(pct):
            removed = np.isin(seg[i].numpy(), ranked[: int(f * p / 100)])
            assert removed.sum() > 0
            x = noisy_linear_imputation(images[i].double().numpy(), removed, noise=0.0, rng=None)
            np.testing.assert_allclose(seen[3 * i + j].numpy(), x, rtol=1e-5, atol=1e-6)


def test_non_sensitivity_of_patches_by_hand():
    """A linear model that ignores the left half: each 4 x 4 patch is a violation when its
    summed |map| and the model's indifference to it disagree."""
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    w = torch.zeros(1, 8, 8)
    w[..., 4:] = 1.0

    class Linear(nn.Module):
        def forward(self, x):
            s = (x * w).flatten(1).sum(1)
            return torch.stack([s, torch.zeros_like(s)], 1)

    maps = torch.zeros(2, 8, 8)
    maps[0, :, 4:] = 1.0  # right: exactly the model's features -> 0 violations
    maps[1, :4, :] = 1.0  # top half: top-left patch attributed but ignored, bottom-right missed
    scores = evaluate("non_sensitivity", maps, images=images, labels=torch.zeros(2).long(),
                      model=Linear(), features="patch:4", softmax=False, baseline="zero")
    torch.testing.assert_close(scores, torch.tensor([0.0, 2.0], dtype=torch.float64))
