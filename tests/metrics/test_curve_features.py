"""``features=`` of the curve metrics: patches and superpixels as the unit of one step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import make_batch
from torch import nn

from concilium.metrics import METRICS, evaluate, evaluate_curve
from concilium.metrics.features import feature_labels

CURVES = [n for n, s in METRICS.items() if s.curve is not None and "features" in s.params
          and n in ("deletion", "deletion_lerf", "insertion", "insertion_lerf", "aopc",
                    "aopc_lerf", "pixel_flipping", "monotonicity")]


class MeanNet(nn.Module):
    """Logits ``[mean(x), 0]``: the score of a copy is the mean of what is left of the image."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m, torch.zeros_like(m)], 1)


def test_every_curve_metric_takes_features():
    assert len(CURVES) == 8


@pytest.mark.parametrize("name", CURVES)
def test_one_pixel_patches_are_the_pixels(name):
    """``patch:1`` goes through the feature path (sum per feature, seeded ties among features)
    and must give the pixel path's values exactly, ties included."""
    model, images, labels, maps, _ = make_batch(c=3, size=12)
    maps = maps.clone()
    maps[:, 4:8, 4:8] = 0.5  # ties
    step = {"pixel_flipping": 5, "monotonicity": 5}.get(name, 10)
    kw = dict(images=images, labels=labels, model=model, step=step)
    ours = evaluate(name, maps, features="patch:1", **kw)
    pixels = evaluate(name, maps, **kw)
    torch.testing.assert_close(ours, pixels, rtol=0, atol=0, equal_nan=True)


def test_a_patch_step_is_its_pixels_removed_at_once():
    """A map constant on each 4x4 patch (distinct values): removing one patch per step is
    removing its 16 pixels per step."""
    model, images, labels, _, _ = make_batch(c=3, size=16)
    g = torch.Generator().manual_seed(3)
    coarse = torch.randperm(16, generator=g).float().view(1, 4, 4).expand(4, 4, 4)
    maps = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2) * torch.arange(1, 5.0)[:, None, None]
    kw = dict(images=images, labels=labels, model=model, unit="pixels")
    _, by_patch = evaluate_curve("deletion", maps, features="patch:4", step=1, **kw)
    _, by_pixel = evaluate_curve("deletion", maps, step=16, **kw)
    torch.testing.assert_close(by_patch, by_pixel)


@pytest.mark.parametrize("order", ["deletion", "deletion_lerf"])
def test_superpixel_curve_by_hand(order):
    """Deletion on SLIC superpixels with a mean-of-image model and a zero baseline: the score
    at fraction f is the mean of the image without its round(F f) most (least) relevant
    superpixels, relevance = sum of the map over the superpixel."""
    _, _, _, maps, _ = make_batch(n=3, c=3, size=24, seed=5)
    g = torch.Generator().manual_seed(5)  # 4 x 4 blocks of random colours: SLIC finds them
    images = torch.rand(3, 3, 4, 4, generator=g).repeat_interleave(6, 2).repeat_interleave(6, 3)
    labels = torch.zeros(3, dtype=torch.long)
    spec = "slic:n_segments=16"
    fr, scores = evaluate_curve(order, maps, images=images, labels=labels, model=MeanNet(),
                                features=spec, step=25, unit="percent", baseline="zero",
                                softmax=False)
    np.testing.assert_allclose(fr.numpy(), [0, 0.25, 0.5, 0.75, 1.0])
    seg, counts = feature_labels(spec, images)
    for i in range(3):
        f = int(counts[i])
        assert f > 3
        rel = np.array([maps[i][seg[i] == k].sum().item() for k in range(f)])
        ranked = np.argsort(-rel if order == "deletion" else rel, kind="stable")
        for v, frac in enumerate(fr.tolist()):
            gone = np.isin(seg[i].numpy(), ranked[: int(round(f * frac))])
            expected = np.where(gone[None], 0.0, images[i].numpy()).mean()
            assert scores[i, v].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_superpixels_need_percent_steps():
    model, images, labels, maps, _ = make_batch(c=3, size=16)
    with pytest.raises(ValueError, match="unit='percent'"):
        evaluate("pixel_flipping", maps, images=images, labels=labels, model=model,
                 features="slic")


def test_a_bad_feature_spec_is_named():
    model, images, labels, maps, _ = make_batch(c=3, size=16)
    with pytest.raises(ValueError, match="unknown features"):
        evaluate("deletion", maps, images=images, labels=labels, model=model, features="hexagons")
