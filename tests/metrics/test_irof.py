"""IROF (``metrics/iterative_removal.py``): hand values, a slow re-implementation on SLIC
superpixels, and agreement with Quantus 0.6.0's ``IROF`` at both libraries' defaults.

Quantus's ``calculate_auc`` calls ``np.trapz``, gone in NumPy 2.4: the Quantus tests shim it
(``monkeypatch``, those tests only). Quantus's ``IROF`` runs on one-channel images only (its
mask has one channel, ``baseline_replacement_by_mask`` asserts equal shapes), and its ``"mean"``
and ``"black"`` baselines reduce over the whole batch, as it is perturbed: it is compared one
image per call (docs/metrics.md, item 30).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import LinearNet, make_batch
from skimage.segmentation import slic

from concilium.metrics import METRICS, MetricWarning, evaluate, irof
from concilium.metrics.features import feature_labels

# 4x4 weights = map; 2x2 patches TL, TR, BL, BR with mean relevance 4, 1, 3, 2 (f(x) = 40 at 1)
W = torch.tensor([[[4.0, 4, 1, 1], [4, 4, 1, 1], [3, 3, 2, 2], [3, 3, 2, 2]]])
X = torch.ones(1, 1, 4, 4)
Y = torch.zeros(1, dtype=torch.long)
PATCHES = {"features": "patch:2", "softmax": False}


def _linear(maps=W, images=X, weights=W, **params):
    model = LinearNet(weights.unsqueeze(0))
    return evaluate("irof", maps, images=images, labels=Y, model=model, **params).item()


def test_hand_values_on_patches():
    # MoRF order TL, BL, BR, TR: f = 24, 12, 4, 0 of 40 -> 0.6, 0.3, 0.1, 0 -> area 0.7
    assert _linear(baseline="zero", **PATCHES) == pytest.approx(4 - 0.7)
    # patch means 1, 2, 3, 4 (TL, TR, BL, BR): BR, BL, TR, TL: f = 32, 20, 16, 0 -> area 1.3
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert _linear(maps=a[None], baseline="zero", **PATCHES) == pytest.approx(4 - 1.3)



def test_features_are_ranked_by_their_mean_relevance():
    # 3 x 4 in 2 x 2 patches: TL, TR 4 pixels, BL, BR 2; map TL 1 (sum 4), BL 1.5 (sum 3),
    # TR 0.1, BR 0
    a = torch.tensor([[[1.0, 1, 0.1, 0.1], [1, 1, 0.1, 0.1], [1.5, 1.5, 0, 0]]])
    x, w = torch.ones(1, 1, 3, 4), torch.ones(1, 3, 4)
    # by the mean: BL, TL, TR, BR -> f = 10, 6, 2, 0 of 12 -> area 26 / 24 (by the sum: 24 / 24)
    got = _linear(maps=a, images=x, weights=w, baseline="zero", **PATCHES)
    assert got == pytest.approx(4 - 26 / 24)


def test_default_baseline_is_the_original_images_mean():
    # left half 0, right half 1: mean 0.5; w = 1; map TL 1, TR 4, BL 2, BR 3 -> TR, BR, BL, TL
    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:] = 1
    a = torch.tensor([[1.0, 4.0], [2.0, 3.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    ones = torch.ones(1, 4, 4)
    # f = 8 -> 6, 4, 6, 8: curve 0.75, 0.5, 0.75, 1 -> area 2.125
    assert _linear(maps=a[None], images=x, weights=ones, **PATCHES) == pytest.approx(4 - 2.125)
    # the default score is the softmax probability: [s, 0] -> sigmoid(s)
    sig = [1 / (1 + math.exp(-s)) for s in (8, 6, 4, 6, 8)]
    curve = [p / sig[0] for p in sig[1:]]
    area = sum((u + v) / 2 for u, v in zip(curve, curve[1:], strict=False))
    assert _linear(maps=a[None], images=x, weights=ones, features="patch:2") == pytest.approx(
        4 - area
    )


def _slow_irof(model, image, label, a, *, baseline: str, softmax: bool = True) -> float:
    """IROF written out: SLIC on the channels-last image, segments ranked by their mean
    relevance, removed one more per step; ``baseline``: ``"image_mean"`` (the original image's
    mean), ``"current_mean"`` (the mean of the image as perturbed so far: Quantus's ``"mean"``)
    or ``"black"`` (the image's minimum)."""
    segments = slic(np.moveaxis(image.double().numpy(), 0, -1), start_label=0)
    n = int(segments.max()) + 1
    relevance = np.array([a.numpy()[segments == s].mean() for s in range(n)])

    def score(x):
        out = model(x[None])
        return float((out.softmax(1) if softmax else out)[0, label])

    current, preds = image.clone(), []
    f0 = score(current)
    for s in np.argsort(-relevance, kind="stable"):
        value = {
            "image_mean": image.mean(), "current_mean": current.mean(), "black": image.min(),
        }[baseline]  # fmt: skip
        current = torch.where(torch.from_numpy(segments == s), value, current)
        preds.append(score(current) / f0)
    return n - float(np.trapezoid(preds))


@pytest.mark.parametrize(("c", "size"), [(1, 16), (3, 16), (3, 21)])
def test_matches_a_slow_loop_on_superpixels(c, size):
    model, images, labels, maps, _ = make_batch(n=3, c=c, size=size)
    ours = irof(maps, images=images, labels=labels, model=model)
    counts = feature_labels("slic", images)[1]
    assert (counts > 10).all()
    with torch.no_grad():
        slow = [
            _slow_irof(model, images[i], int(labels[i]), maps[i], baseline="image_mean")
            for i in range(3)
        ]
    np.testing.assert_allclose(ours.numpy(), slow, rtol=1e-5)


def test_images_with_different_numbers_of_segments_score_as_alone():
    model, images, labels, maps, _ = make_batch(n=4, c=3, size=16)
    counts = feature_labels("slic", images)[1]
    assert len(set(counts.tolist())) > 1  # the batch is ragged
    together = irof(maps, images=images, labels=labels, model=model, batch_size=7)
    alone = [irof(maps[i : i + 1], images=images[i : i + 1], labels=labels[i : i + 1],
                  model=model).item() for i in range(4)]  # fmt: skip
    np.testing.assert_allclose(together.numpy(), alone, rtol=1e-6)


def test_constant_map_and_a_single_segment_are_nan_with_a_warning():
    model, images, labels, maps, _ = make_batch(n=2, size=12)
    maps[1] = 0.3
    with pytest.warns(MetricWarning, match="irof: 1 of 2 images .*constant"):
        out = irof(maps, images=images, labels=labels, model=model)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    with pytest.warns(MetricWarning, match="single feature"):
        out = irof(maps, images=images, labels=labels, model=model, features="patch:12")
    assert torch.isnan(out).all()


def test_registry_metadata():
    spec = METRICS.get("irof")
    assert (spec.category, spec.higher_is_better, spec.needs_model) == ("faithfulness", True, True)
    assert not spec.model_passes_exact() and spec.model_passes_exact({"features": "patch:4"})
    assert spec.model_passes({"features": "patch:4"}, size=(8, 8)) == 1 + 4
    with pytest.raises(ValueError, match="unknown features"):
        irof(W, images=X, labels=Y, model=LinearNet(W[None]), features="squares")


# ---- Quantus 0.6.0 ----------------------------------------------------------------------------


def _quantus(model, images, labels, maps, **kw):
    metric = quantus.IROF(disable_warnings=True, return_aggregate=False, **kw)
    return np.asarray(
        metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
               a_batch=maps.numpy()[:, None], channel_first=True, device="cpu"),
        dtype=float,
    )  # fmt: skip


def _quantus_each(model, images, labels, maps, **kw):
    """One image per Quantus call: its baselines reduce over the whole batch (item 30)."""
    return np.concatenate([
        _quantus(model, images[i : i + 1], labels[i : i + 1], maps[i : i + 1], **kw)
        for i in range(len(images))
    ])  # fmt: skip


def test_defaults_are_quantus_defaults():
    metric = quantus.IROF(disable_warnings=True)
    params = METRICS.get("irof").params
    assert params["features"] == metric.segmentation_method == "slic"
    assert (params["abs"], params["normalise"]) == (metric.abs, metric.normalise)
    assert metric.perturb_func.keywords["perturb_baseline"] == "mean"
    assert params["baseline"] == "image_mean"  # each image's mean over all values (item 30)
    assert params["softmax"] is True  # Quantus's IROF.__call__ default


@pytest.mark.parametrize("size", [12, 16])
def test_matches_quantus_at_both_defaults(monkeypatch, size):
    """At both libraries' defaults, one grey image per Quantus call: Quantus's ``"mean"`` is the
    mean of the image *as perturbed so far*, ours the original image's (item 30); the slow loop
    reproduces both to 1e-5; the recomputed mean drifts, and the scores differ by up to 0.06
    here (one-pixel superpixels on these 12 x 12 images). With the ``"black"``
    baseline (the image's minimum, which replacing by it never changes) both agree to float32
    rounding (1e-4 relative)."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # NumPy 2.4 shim
    model, images, labels, maps, _ = make_batch(n=4, c=1, size=size)
    theirs = _quantus_each(model, images, labels, maps)
    ours = evaluate("irof", maps, images=images, labels=labels, model=model).numpy()
    with torch.no_grad():
        slow = {
            b: [_slow_irof(model, images[i], int(labels[i]), maps[i], baseline=b) for i in range(4)]
            for b in ("image_mean", "current_mean")
        }
    np.testing.assert_allclose(theirs, slow["current_mean"], rtol=1e-5)
    np.testing.assert_allclose(ours, slow["image_mean"], rtol=1e-5)
    np.testing.assert_allclose(ours, theirs, atol=0.1)
    # Quantus's default return_aggregate=True: the mean over the images
    aggregate = quantus.IROF(disable_warnings=True)(
        model=model, x_batch=images[:1].numpy(), y_batch=labels[:1].numpy(),
        a_batch=maps[:1].numpy()[:, None], channel_first=True, device="cpu",
    )  # fmt: skip
    np.testing.assert_allclose(aggregate, theirs[:1], rtol=1e-12)

    black_theirs = _quantus_each(model, images, labels, maps, perturb_baseline="black")
    black_ours = evaluate("irof", maps, images=images, labels=labels, model=model,
                          baseline="black").numpy()  # fmt: skip
    # float32 model outputs on batches of different composition: 6e-6 relative on an AMD EPYC
    np.testing.assert_allclose(black_ours, black_theirs, rtol=1e-4)


def test_felzenszwalb_segments_match_quantus(monkeypatch):
    """Quantus's other ``segmentation_method``: the same scores with the same segments."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model, images, labels, maps, _ = make_batch(n=4, c=1, size=16)
    assert (feature_labels("felzenszwalb", images)[1] > 1).all()
    theirs = _quantus_each(model, images, labels, maps, segmentation_method="felzenszwalb",
                           perturb_baseline="black")  # fmt: skip
    ours = evaluate("irof", maps, images=images, labels=labels, model=model,
                    features="felzenszwalb", baseline="black").numpy()  # fmt: skip
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_quantus_baselines_reduce_over_the_batch_and_rgb_fails(monkeypatch):
    """Item 30: Quantus passes the whole batch to ``baseline_replacement_by_mask``, whose
    ``"black"`` is the minimum over *all* images, so an image's score depends on the others;
    ours does not. On RGB images Quantus asserts (its mask has one channel)."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model, images, labels, maps, _ = make_batch(n=3, c=1, size=12)
    images[0] = images[0] * 0.5 + 0.5  # image 0's minimum is above the others'
    alone = _quantus(model, images[:1], labels[:1], maps[:1], perturb_baseline="black")
    in_batch = _quantus(model, images, labels, maps, perturb_baseline="black")
    assert abs(alone[0] - in_batch[0]) > 1e-3
    ours = evaluate("irof", maps, images=images, labels=labels, model=model, baseline="black")
    np.testing.assert_allclose(ours[0].item(), alone[0], rtol=1e-6)

    model, images, labels, maps, _ = make_batch(n=2, c=3, size=12)
    with pytest.raises(AssertionError, match="shape of arr must be the same as the mask"):
        _quantus(model, images, labels, maps)
    assert torch.isfinite(evaluate("irof", maps, images=images, labels=labels, model=model)).all()
