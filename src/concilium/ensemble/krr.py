"""Supervised ensembling by kernel ridge regression (EnsembleXAI's ``supervisedXAI``).

Each pixel is a sample whose features are the ``K`` methods' normalised values there (optionally
plus its position); the target is the ground-truth mask. The regression is fitted on a seeded
subsample of pixels and predicts every pixel. Predictions are **out of fold**: the images are
split into ``folds`` groups and each group is predicted by a model fitted on the other groups, so
no image's prediction has seen its own mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.kernel_ridge import KernelRidge
from torch import Tensor

from concilium._checks import check_masks
from concilium.ensemble.normalise import NormalisationName, normalise
from concilium.ensemble.reduce import stack_maps


def pixel_features(stack: Tensor, *, positional: bool = False) -> Tensor:
    """Per-pixel features ``(N, H * W, K [+ 2])`` from stacked maps ``(K, N, H, W)``; the
    optional position is ``(row, column)`` scaled to ``[0, 1]``."""
    k, n, h, w = stack.shape
    feats = stack.permute(1, 2, 3, 0).reshape(n, h * w, k)
    if positional:
        rows = torch.linspace(0, 1, h).repeat_interleave(w)
        cols = torch.linspace(0, 1, w).repeat(h)
        pos = torch.stack([rows, cols], -1).to(feats)
        feats = torch.cat([feats, pos.expand(n, -1, -1)], -1)
    return feats


def _sample_pixels(
    feats: Tensor, targets: Tensor, *, per_image: int, balanced: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for f, t in zip(feats, targets, strict=True):
        if balanced and 0 < int(t.sum()) < t.numel():
            half = per_image // 2
            pos = torch.nonzero(t).squeeze(1)
            neg = torch.nonzero(~t).squeeze(1)
            idx = torch.cat([
                pos[torch.randint(len(pos), (half,), generator=generator)],
                neg[torch.randint(len(neg), (per_image - half,), generator=generator)],
            ])
        else:
            idx = torch.randperm(t.numel(), generator=generator)[:per_image]
        xs.append(f[idx])
        ys.append(t[idx])
    return torch.cat(xs), torch.cat(ys)


def krr_ensemble(
    maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    masks: Tensor,
    *,
    normalisation: NormalisationName | str = "max_abs",
    absolute: bool = False,
    folds: int = 5,
    alpha: float = 1.0,
    kernel: Literal["rbf", "linear", "laplacian", "polynomial"] = "rbf",
    gamma: float | None = None,
    pixels_per_image: int = 32,
    max_train_pixels: int = 4000,
    balanced: bool = True,
    positional: bool = False,
    seed: int = 0,
) -> Tensor:
    """Out-of-fold kernel-ridge predictions of the masks from the maps: ``(N, H, W)``.

    Args:
        maps: ``K`` maps of the same ``N`` images.
        masks: ``(N, H, W)`` bool ground truth.
        normalisation: per-image normalisation of every map before it becomes a feature.
        absolute: take ``|map|`` first.
        folds: number of image folds, ``2 <= folds <= N``.
        alpha: ridge regularisation.
        kernel: ``sklearn.kernel_ridge.KernelRidge`` kernel.
        gamma: kernel coefficient (``None``: scikit-learn's default, ``1 / n_features``).
        pixels_per_image: pixels sampled per training image.
        max_train_pixels: cap on fitted pixels per fold (kernel ridge is cubic in this number).
        balanced: sample half the pixels inside the mask and half outside when both exist.
        positional: add each pixel's (row, column) to its features.
        seed: seeds the fold split and the pixel sampling.

    Raises:
        ValueError: masks missing or of the wrong shape, or ``folds`` out of range.
    """
    stack = stack_maps(maps)
    if masks is None:
        raise ValueError("krr needs ground-truth masks (N, H, W); this dataset has none")
    masks = check_masks(masks, like=stack[0])
    n = stack.shape[1]
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in [2, N={n}]; got {folds}")
    if absolute:
        stack = stack.abs()
    feats = pixel_features(normalise(stack, normalisation).double(), positional=positional)
    targets = masks.reshape(n, -1)
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.randperm(n, generator=gen) % folds
    out = torch.zeros(n, feats.shape[1], dtype=torch.float64)
    for f in range(folds):
        train = (fold_of != f).nonzero().squeeze(1)
        test = (fold_of == f).nonzero().squeeze(1)
        per_image = max(1, min(pixels_per_image, max_train_pixels // len(train)))
        x, y = _sample_pixels(feats[train], targets[train], per_image=per_image,
                              balanced=balanced, generator=gen)
        model = KernelRidge(alpha=alpha, kernel=kernel, gamma=gamma)
        model.fit(x.numpy(), y.double().numpy())
        for i in test.tolist():
            out[i] = torch.from_numpy(np.asarray(model.predict(feats[i].numpy()), dtype=np.float64))
    return out.reshape(masks.shape).float()
