"""Layers (a) and (b) for the patch-feature metrics (``metrics/regions.py``,
``metrics/estimates.py``): Quantus's patch grid, hand values on a linear model, and properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import LinearNet, make_batch

from concilium.metrics import MetricWarning, evaluate
from concilium.metrics._streams import image_streams
from concilium.metrics.features import feature_labels, n_patches, patch_grid
from concilium.metrics.regions import (
    feature_order,
    feature_relevance,
    ranked_features,
    region_perturbation_drops,
)

# 4x4 weights = map; 2x2 patches TL, TR, BL, BR sum to 16, 4, 12, 8 (f(x) = 40 at x = 1)
W = torch.tensor(
    [[[4.0, 4, 1, 1], [4, 4, 1, 1], [3, 3, 2, 2], [3, 3, 2, 2]]],
)
X = torch.ones(1, 1, 4, 4)
Y = torch.zeros(1, dtype=torch.long)
# a map whose patches sum to 1, 2, 3, 4 (TL, TR, BL, BR): the reverse of the model's order
A = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.75] * 2 + [1.0] * 2,
                   [0.75] * 2 + [1.0] * 2]])  # fmt: skip
COMMON = {"patch_size": 2, "baseline": "zero", "softmax": False}


def _linear(name, maps=W, **params):
    return evaluate(name, maps, images=X, labels=Y, model=LinearNet(W.unsqueeze(0)), **params).item()


def test_patch_grid_is_quantus_grid_padded_half_before_half_after():
    assert patch_grid(4, 4, 2).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # 6 pixels in patches of 4: pad 1 before, 1 after -> 3 + 3 pixels
    assert patch_grid(6, 6, 4)[0].tolist() == [0, 0, 0, 1, 1, 1]
    # 5 pixels in patches of 2: pad 0 before, 1 after
    assert patch_grid(5, 5, 2)[0].tolist() == [0, 0, 1, 1, 2]
    assert n_patches((6, 5), 4) == 4 and n_patches((224, 224), 8) == 28 * 28
    with pytest.raises(ValueError, match="patch_size"):
        patch_grid(4, 4, 5)


def test_feature_relevance_sums_and_means():
    grid = patch_grid(4, 4, 2)
    assert feature_relevance(W, grid, 4).tolist() == [[16.0, 4.0, 12.0, 8.0]]
    assert feature_relevance(W, grid, 4, reduce="mean").tolist() == [[4.0, 1.0, 3.0, 2.0]]


def test_region_perturbation_hand_values():
    # MoRF: TL, BL, BR, TR -> drops 16, 28, 36, 40; trapezoid dx = 1
    assert _linear("region_perturbation", **COMMON) == pytest.approx(22 + 32 + 38)
    assert _linear("region_perturbation", regions_evaluation=2, **COMMON) == pytest.approx(22)
    # the reverse order: BR, BL, TR, TL -> drops 8, 20, 24, 40
    assert _linear("region_perturbation", maps=A, **COMMON) == pytest.approx(14 + 22 + 32)


def test_selectivity_hand_value():
    # scores 24, 12, 4, 0 after each patch
    assert _linear("selectivity", **COMMON) == pytest.approx(18 + 8 + 2)
    # the reverse order: 32, 20, 16, 0 -- a worse (higher) score
    assert _linear("selectivity", maps=A, **COMMON) == pytest.approx(26 + 18 + 8)


def test_faithfulness_estimate_hand_values():
    assert _linear("faithfulness_estimate", **COMMON) == pytest.approx(1.0)
    # groups BR, BL, TR, TL: relevance 4, 3, 2, 1 against drops 8, 12, 4, 16
    assert _linear("faithfulness_estimate", maps=A, **COMMON) == pytest.approx(-0.4)
    # two patches per group: (TL, BL) 28 vs 28, (BR, TR) 12 vs 12 -> two points, r = 1
    assert _linear("faithfulness_estimate", features_in_step=2, **COMMON) == pytest.approx(1.0)


def test_sensitivity_n_hand_values():
    # n_max = int(0.8 * 4) = 3 points: removed 16, 28, 36 against drops 16, 28, 36
    assert _linear("sensitivity_n", **COMMON) == pytest.approx(1.0)
    # the reverse order: removed 4, 7, 9 against drops 8, 20, 24
    expected = np.corrcoef([4, 7, 9], [8, 20, 24])[0, 1]
    assert _linear("sensitivity_n", maps=A, **COMMON) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2 points"):
        _linear("sensitivity_n", n_max_percentage=0.4, **COMMON)


@pytest.mark.parametrize("name", ["region_perturbation", "selectivity"])
def test_order_metrics_ignore_the_maps_scale(name):
    model, images, labels, maps, _ = make_batch(n=3, size=8)
    one = evaluate(name, maps, images=images, labels=labels, model=model, patch_size=4)
    scaled = evaluate(name, 7 * maps, images=images, labels=labels, model=model, patch_size=4)
    torch.testing.assert_close(one, scaled)


@pytest.mark.parametrize("name", ["faithfulness_estimate", "sensitivity_n"])
def test_correlations_are_invariant_to_the_maps_scale(name):
    model, images, labels, maps, _ = make_batch(n=3, size=8)
    kw = {"images": images, "labels": labels, "model": model, "normalise": False}
    torch.testing.assert_close(evaluate(name, maps, **kw), evaluate(name, 3 * maps, **kw))


def test_patch_metrics_run_at_real_sizes_with_patches():
    model, images, labels, maps, _ = make_batch(n=2, size=64)
    for name, params in (
        ("region_perturbation", {}),
        ("selectivity", {}),
        ("faithfulness_estimate", {"patch_size": 8}),
        ("sensitivity_n", {"patch_size": 8}),
    ):
        out = evaluate(name, maps, images=images, labels=labels, model=model, **params)
        assert out.shape == (2,) and torch.isfinite(out).all(), name


def test_a_constant_map_is_nan_with_a_warning():
    with pytest.warns(MetricWarning, match="region_perturbation: 1 of 1"):
        assert np.isnan(_linear("region_perturbation", maps=torch.ones(1, 4, 4), **COMMON))


# ---- features= (metrics/features.py) -----------------------------------------------------------

_REGION_METRICS = ["region_perturbation", "selectivity", "faithfulness_estimate", "sensitivity_n"]


@pytest.mark.parametrize("name", _REGION_METRICS)
def test_features_spec_of_the_patches_gives_the_patch_size_values(name):
    model, images, labels, maps, _ = make_batch(n=3, size=8)
    kw = {"images": images, "labels": labels, "model": model}
    by_size = evaluate(name, maps, patch_size=2, **kw)
    default = evaluate(name, maps, **kw)
    size = 8 if name in ("region_perturbation", "selectivity") else 1
    assert torch.equal(evaluate(name, maps, features=f"patch:{size}", **kw), default)
    if size == 1:
        assert torch.equal(evaluate(name, maps, features="pixels", **kw), default)
    assert torch.equal(evaluate(name, maps, features="patch:2", **kw), by_size)
    with pytest.raises(ValueError, match="either patch_size or features"):
        evaluate(name, maps, features="slic", patch_size=2, **kw)
    with pytest.raises(ValueError, match="unknown features"):
        evaluate(name, maps, features="squares", **kw)


@pytest.mark.parametrize("name", _REGION_METRICS)
def test_superpixel_features_score_each_image_as_alone(name):
    """SLIC gives the images of a batch different numbers of features: each image is scored on
    its own features, the same alone as in the batch."""
    model, images, labels, maps, _ = make_batch(n=4, c=3, size=16)
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # smooth: real superpixels
    features = "slic:n_segments=30"
    counts = feature_labels(features, images)[1]
    assert len(set(counts.tolist())) > 1 and int(counts.min()) > 5
    together = evaluate(name, maps, images=images, labels=labels, model=model, features=features,
                        batch_size=5)  # fmt: skip
    alone = torch.cat([
        evaluate(name, maps[i : i + 1], images=images[i : i + 1], labels=labels[i : i + 1],
                 model=model, features=features)
        for i in range(4)
    ])  # fmt: skip
    # float32: a batched convolution rounds differently from a single-image one (a few 1e-6
    # relative with torch 2.14); a feature mix-up between images moves scores by far more
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(together).all()


def test_superpixel_curve_is_nan_after_each_images_last_step():
    model, images, labels, maps, _ = make_batch(n=3, c=3, size=16)
    counts = feature_labels("slic:n_segments=20", images)[1]
    curve = region_perturbation_drops(
        maps, images=images, labels=labels, model=model, features="slic:n_segments=20"
    )
    assert curve.shape == (3, int(counts.max()))
    assert ((~torch.isnan(curve)).sum(1) == counts).all()
    # selectivity's hand value: the last step replaces every feature, f(baseline image)
    black = images.amin((1, 2, 3), keepdim=True).expand_as(images)
    f_black = model(black).softmax(1).gather(1, labels[:, None]).squeeze(1)
    y0 = model(images).softmax(1).gather(1, labels[:, None]).squeeze(1)
    last = curve[torch.arange(3), counts - 1]
    torch.testing.assert_close(last, y0 - f_black, rtol=1e-5, atol=1e-6)


def test_tied_features_come_in_a_seeded_random_order_not_by_index():
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels, counts = feature_labels("patch:2", images)
    streams = image_streams(torch.Generator().manual_seed(0), images)
    maps = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))
    relevance, ranks = ranked_features(maps, labels, counts, reduce="sum", streams=streams)
    assert torch.equal(ranks, feature_order(relevance))  # no ties: the plain order
    tied = torch.zeros(2, 8, 8)
    tied[:, 0, 0] = 1.0  # patch 0 first, the other 15 tied
    _, ranks = ranked_features(tied, labels, counts, reduce="sum", streams=streams)
    assert (ranks[:, 0] == 0).all() and (ranks.sort(1).values == torch.arange(16)).all()
    assert not torch.equal(ranks[0], torch.arange(16))  # not index (raster) order
    assert not torch.equal(ranks[0], ranks[1])  # each image its own stream
    again = ranked_features(tied, labels, counts, reduce="sum", streams=streams)[1]
    assert torch.equal(ranks, again)
