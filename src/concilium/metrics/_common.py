"""Helpers shared by the metric families: map preparation, NaN warnings, ranks and batched
correlations. Every function works per image (row); nothing reduces over the batch axis."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


class MetricWarning(UserWarning):
    """Raised (as a warning) when a metric returns NaN for some images, saying why."""


def prepare_maps(maps: Tensor, *, abs: bool, normalise: bool) -> Tensor:
    """Optionally take ``|maps|`` and divide each map by its own largest absolute value.

    Quantus normalises by the maximum over the whole batch, so one image's score depends on the
    other images; here each map is divided by its own maximum (an all-zero map stays zero).
    The maps are detached first: a metric never differentiates through them, and maps that
    require grad are accepted everywhere.
    """
    out = maps.detach().float()
    if abs:
        out = out.abs()
    if normalise:
        scale = out.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(out.dtype).tiny)
        out = out / scale.view(-1, 1, 1)
    return out


def warn_nan(metric: str, bad: Tensor, reason: str) -> None:
    """Warn once that ``bad.sum()`` images score NaN in ``metric`` because of ``reason``."""
    count = int(bad.sum())
    if count:
        warnings.warn(
            f"{metric}: {count} of {bad.numel()} images score NaN because {reason}",
            MetricWarning,
            stacklevel=3,
        )


def warn_rows(metric: str, bad: Tensor, what: str) -> None:
    """Warn (``MetricWarning``) that ``bad.sum()`` images ``what`` (a score that is returned but
    should be read with care, e.g. outside its usual range)."""
    count = int(bad.sum())
    if count:
        warnings.warn(f"{metric}: {count} of {bad.numel()} images {what}", MetricWarning, stacklevel=3)


def constant_rows(flat: Tensor) -> Tensor:
    """``(N,)`` bool: rows of ``flat (N, P)`` whose values are all equal."""
    return flat.amax(dim=1) == flat.amin(dim=1)


def nan_where(scores: Tensor, bad: Tensor, metric: str, reason: str) -> Tensor:
    """Set ``scores[bad] = NaN`` (as float64) and warn why."""
    scores = scores.double()
    if bool(bad.any()):
        scores = scores.masked_fill(bad, float("nan"))
        warn_nan(metric, bad, reason)
    return scores


def rankdata(x: Tensor) -> Tensor:
    """Average ranks (1-based, ties share their mean rank) along the last axis, like
    ``scipy.stats.rankdata``; works on ``(..., P)``.

    The tied values of a row are contiguous after any sort, so an unstable sort (NumPy's SIMD
    argsort on CPU, about 2x faster than ``torch.sort``) gives the same ranks: a run of ties from
    sorted position ``start`` to ``end`` shares ``(start + end) / 2 + 1``.
    """
    shape = x.shape
    flat = x.detach().reshape(-1, shape[-1])
    rows, p = flat.shape
    if flat.device.type == "cpu":
        order = torch.from_numpy(np.argsort(flat.numpy(), axis=1))
        values = flat.gather(1, order)
    else:
        values, order = torch.sort(flat, dim=1)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    last = torch.ones_like(new_group)
    last[:, :-1] = new_group[:, 1:]
    position = torch.arange(p, device=x.device).expand(rows, p)
    start = torch.where(new_group, position, 0).cummax(1).values
    end = torch.where(last, position, p - 1).flip(1).cummin(1).values.flip(1)
    mean_rank = (start + end).double() / 2 + 1
    ranks = torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
    return ranks.view(shape)


def sort_values(x: Tensor) -> Tensor:
    """Values sorted ascending along the last axis. On CPU NumPy's SIMD sort is several times
    faster than ``torch.sort``, so CPU tensors are sorted there (one call, no per-row loop)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def kth_largest(a: Tensor, k: Tensor) -> Tensor:
    """``(N,)``: the ``k[i]``-th largest value of row ``i`` of ``a (N, P)`` (``k`` 1-based).

    On CPU a per-row ``np.partition`` (linear-time selection) is far faster than a sort."""
    k = k.clamp(1, a.shape[1])
    if a.device.type == "cpu":
        x = a.detach().numpy()
        p = x.shape[1]
        out = np.array(
            [np.partition(row, p - kk)[p - kk] for row, kk in zip(x, k.tolist(), strict=True)],
            dtype=x.dtype,
        )
        return torch.from_numpy(out)
    values = torch.sort(a, dim=1, descending=True).values
    return values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)


def top_k_inside(a: Tensor, s: Tensor, k: Tensor) -> Tensor:
    """Expected number of the ``k`` highest pixels of each row that lie in ``s``, ties at the
    k-th value split evenly (the mean over all tie orders): exact, deterministic, and equal to
    any sort-based count when the map has no ties there."""
    t = kth_largest(a, k).to(a.device).unsqueeze(1)
    above, tie = a > t, a == t
    n_above = above.sum(1)
    k = k.clamp(1, a.shape[1]).to(a.device)
    return (above & s).sum(1).double() + (k - n_above).double() * (tie & s).sum(
        1
    ).double() / tie.sum(1).clamp_min(1).double()


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last axis (float64 accumulation); NaN for a constant row."""
    a = a.double()
    b = b.double()
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    num = (a * b).sum(dim=-1)
    den = torch.sqrt((a * a).sum(dim=-1) * (b * b).sum(dim=-1))
    out = num / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last axis; NaN for a constant row."""
    return pearson(rankdata(a), rankdata(b))


def ssim2d(
    a: Tensor, b: Tensor, *, win_size: int = 7, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """Structural similarity of two batches of 2-D maps ``(N, H, W)``, one value per pair.

    The same definition as ``skimage.metrics.structural_similarity`` with its defaults (uniform
    ``win_size`` window, sample covariance, mean over the window positions that lie inside the
    image), with ``data_range`` = max - min over both maps of the pair, as Quantus chooses it.
    A pair of equal constant maps has no range and gives NaN.
    """
    if a.shape[-1] < win_size or a.shape[-2] < win_size:
        raise ValueError(
            f"SSIM needs maps of at least {win_size}x{win_size}; got {tuple(a.shape[-2:])} "
            "(pass a smaller win_size, odd and >= 3)"
        )
    a = a.double().unsqueeze(1)
    b = b.double().unsqueeze(1)
    both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
    data_range = both.amax(dim=1) - both.amin(dim=1)
    pool = torch.nn.functional.avg_pool2d
    ux, uy = pool(a, win_size, stride=1), pool(b, win_size, stride=1)
    uxx, uyy, uxy = (
        pool(a * a, win_size, stride=1),
        pool(b * b, win_size, stride=1),
        pool(a * b, win_size, stride=1),
    )
    n = win_size * win_size
    cov_norm = n / (n - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range).view(-1, 1, 1, 1) ** 2
    c2 = (k2 * data_range).view(-1, 1, 1, 1) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(dim=1)
    return torch.where(data_range > 0, out, torch.full_like(out, float("nan")))
