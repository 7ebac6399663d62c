"""Localisation metrics: how well a map points at the ground-truth region ``masks``.

All take ``maps (N, H, W)`` and ``masks (N, H, W)`` bool and return one score per image. An empty
mask, and a constant map (which points everywhere at once), give NaN with a warning.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from concilium.metrics._common import (
    constant_rows,
    kth_largest,
    nan_where,
    pearson,
    prepare_maps,
    rankdata,
    top_k_inside,
)
from concilium.metrics.registry import register_metric


def _flat(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    return maps.flatten(1), masks.flatten(1).to(maps.device)


def _degenerate(metric: str, a: Tensor, s: Tensor, scores: Tensor, *, full: bool = False) -> Tensor:
    scores = nan_where(scores, s.sum(1) == 0, metric, "their mask is empty")
    if full:
        scores = nan_where(scores, s.all(1), metric, "their mask covers the whole image")
    return nan_where(scores, constant_rows(a), metric, "their map is constant")


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def pointing_game(
    maps: Tensor,
    *,
    masks: Tensor,
    abs: bool = False,
    normalise: bool = True,
    weighted: bool = False,
) -> Tensor:
    """Pointing game (Zhang et al. 2018): 1 if a maximum of the map lies inside the mask.

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).
        weighted: multiply a hit by ``1 - mask area / image area`` (Quantus ``weighted``).

    Returns:
        ``(N,)`` float in {0, 1} (or ``[0, 1]`` weighted); NaN for an empty mask or constant map.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    hit = (s & (a == a.amax(1, keepdim=True))).any(1).float()
    if weighted:
        hit = hit * (1 - s.sum(1) / s.shape[1])
    return _degenerate("pointing_game", a, s, hit)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def relevance_mass(
    maps: Tensor, *, masks: Tensor, abs: bool = False, normalise: bool = True
) -> Tensor:
    """Relevance mass accuracy (Arras et al. 2022): ``sum(a * s) / sum(a)``.

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)``; NaN for an empty mask, a constant map or a map summing to 0.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    a64 = a.double()
    total = a64.sum(1)
    score = torch.where(s, a64, 0.0).sum(1) / total
    score = nan_where(score, total == 0, "relevance_mass", "their map sums to 0")
    return _degenerate("relevance_mass", a, s, score)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def relevance_rank(
    maps: Tensor, *, masks: Tensor, abs: bool = False, normalise: bool = True
) -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022): share of the ``|s|`` highest pixels inside s.
    Ties at the ``|s|``-th value are split evenly (the mean over tie orders; Quantus's unstable
    argsort picks an arbitrary order).

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask or a constant map.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    size = s.sum(1)
    score = top_k_inside(a, s, size) / size.clamp_min(1)
    return _degenerate("relevance_rank", a, s, score)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def top_k_intersection(
    maps: Tensor,
    *,
    masks: Tensor,
    k: int = 1000,
    concept_influence: bool = False,
    abs: bool = False,
    normalise: bool = True,
) -> Tensor:
    """Top-k intersection (Theiner et al. 2021): share of the k highest pixels inside the mask,
    ties at the k-th value split evenly.

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        k: number of top pixels (Quantus default 1000); at most ``H * W``.
        concept_influence: multiply by ``H * W / |s|`` (Quantus ``concept_influence``).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)``; NaN for an empty mask or a constant map.

    Raises:
        ValueError: if ``k`` is not in ``[1, H * W]``.
    """
    n_pixels = maps.shape[-1] * maps.shape[-2]
    if not 1 <= k <= n_pixels:
        raise ValueError(
            f"k must be in [1, H*W = {n_pixels}]; got {k} (pass a smaller k, e.g. k={n_pixels // 4})"
        )
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    score = top_k_inside(a, s, torch.full((a.shape[0],), k, device=a.device)) / k
    if concept_influence:
        score = score * n_pixels / s.sum(1).clamp_min(1)
    return _degenerate("top_k_intersection", a, s, score)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def auc(maps: Tensor, *, masks: Tensor, abs: bool = False, normalise: bool = True) -> Tensor:
    """ROC-AUC of the map as a score for the mask pixels (Fawcett 2006), ties counted half, as
    ``sklearn.metrics.roc_auc_score`` does; computed from average ranks (Mann-Whitney U).

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN when the mask is empty or the whole image, or the map constant.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    n_pos = s.sum(1).double()
    n_neg = s.shape[1] - n_pos
    if a.device.type == "cpu":  # NumPy's sort + binary search beat torch.sort on CPU
        u = torch.tensor(
            [
                _mann_whitney_u(row[m], row[~m])
                for row, m in zip(a.detach().numpy(), s.numpy(), strict=True)
            ],
            dtype=torch.float64,
        )
    else:
        u = (rankdata(a) * s).sum(1) - n_pos * (n_pos + 1) / 2
    score = u / (n_pos * n_neg).clamp_min(1)
    return _degenerate("auc", a, s, score, full=True)


def _mann_whitney_u(pos: np.ndarray, neg: np.ndarray) -> float:
    """Number of (positive, negative) pairs with the positive higher, ties counted half."""
    if pos.size == 0 or neg.size == 0:
        return 0.0
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.float64)
    below_or_equal = np.searchsorted(neg, pos, side="right").sum(dtype=np.float64)
    return float((below + below_or_equal) / 2)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def average_precision(
    maps: Tensor, *, masks: Tensor, abs: bool = False, normalise: bool = True
) -> Tensor:
    """Average precision of the map as a score for the mask pixels, exactly as
    ``sklearn.metrics.average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n`` over distinct
    thresholds (tied pixels enter together).

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask or a constant map.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    n, p = a.shape
    values, order = torch.sort(-a, dim=1, stable=True)
    y = torch.gather(s, 1, order).double()
    tp = torch.cumsum(y, 1)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    gid = (torch.cumsum(new_group.long(), 1) - 1) + (torch.arange(n, device=a.device) * p)[:, None]
    gid = gid.flatten()
    tp_end = (
        torch.zeros(n * p, dtype=torch.float64, device=a.device)
        .scatter_reduce(0, gid, tp.flatten(), reduce="amax", include_self=False)[gid]
        .view(n, p)
    )
    seen_end = (
        torch.zeros(n * p, dtype=torch.float64, device=a.device)
        .scatter_reduce(
            0,
            gid,
            torch.arange(1, p + 1, device=a.device, dtype=torch.float64).repeat(n),
            reduce="amax",
            include_self=False,
        )[gid]
        .view(n, p)
    )
    precision_end = tp_end / seen_end
    score = (y * precision_end).sum(1) / y.sum(1).clamp_min(1)
    return _degenerate("average_precision", a, s, score)


def _selected(a: Tensor, *, threshold: str, q: float, tau: float) -> Tensor:
    """``(N, P)`` float64 in [0, 1]: how much of each pixel the thresholded map selects.

    ``"top"`` selects the ``k = round(q P)`` highest pixels; the pixels tied at the k-th value
    share the remaining places evenly (each is selected with weight ``places / tied``, the mean
    over all tie orders), so no tie is broken by raster order. ``"relative"`` selects the pixels
    ``>= tau * max`` (weight 0 or 1).
    """
    if threshold == "top":
        k = max(1, round(q * a.shape[1]))
        t = kth_largest(a, torch.full((a.shape[0],), k)).to(a.device).unsqueeze(1)
        above, tie = a > t, a == t
        share = (k - above.sum(1, keepdim=True)).double() / tie.sum(1, keepdim=True).clamp_min(1)
        return above.double() + tie.double() * share
    return (a >= tau * a.amax(1, keepdim=True)).double()


def _no_positive_peak(metric: str, a: Tensor, scores: Tensor) -> Tensor:
    return nan_where(
        scores,
        a.amax(1) <= 0,
        metric,
        "their map has no positive value, so 'tau * max' selects nothing meaningful (pass abs=True)",
    )


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def iou(
    maps: Tensor,
    *,
    masks: Tensor,
    threshold: Literal["top", "relative"] = "top",
    q: float = 0.2,
    tau: float = 0.5,
    abs: bool = False,
    normalise: bool = True,
) -> Tensor:
    """Intersection over union of the thresholded map with the mask.

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        threshold: ``"top"`` keeps the ``q`` fraction of highest pixels (the pixels tied at
            the cut share the remaining places evenly: a soft IoU ``sum(b s) / sum(max(b, s))``
            with ``b`` in [0, 1] there); ``"relative"`` keeps pixels ``>= tau * max``.
        q: fraction kept by ``"top"`` (default 0.2), in ``(0, 1]``.
        tau: relative threshold of ``"relative"`` (default 0.5).
        abs: take ``|maps|`` first (default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask or a constant map, and with
        ``"relative"`` for a map whose maximum is <= 0.
    """
    if threshold not in ("top", "relative"):
        raise ValueError(f"threshold must be 'top' or 'relative'; got {threshold!r}")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1]; got {q}")
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    b = _selected(a, threshold=threshold, q=q, tau=tau)
    inter = (b * s).sum(1)
    score = inter / (b.sum(1) + s.sum(1) - inter).clamp_min(1)
    if threshold == "relative":
        score = _no_positive_peak("iou", a, score)
    return _degenerate("iou", a, s, score)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def f1_at_quarter_max(
    maps: Tensor, *, masks: Tensor, tau: float = 0.25, abs: bool = False, normalise: bool = True
) -> Tensor:
    """F1 of the pixels ``>= tau * max`` against the mask (Li et al. 2022 consensus code).

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        tau: relative threshold (default 0.25).
        abs: take ``|maps|`` first (default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask, a constant map, or a map whose maximum
        is <= 0 (nothing to threshold relative to; pass ``abs=True`` for signed maps).
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    b = a >= tau * a.amax(1, keepdim=True)
    tp = (b & s).sum(1).double()
    score = 2 * tp / (b.sum(1) + s.sum(1)).clamp_min(1)
    score = _no_positive_peak("f1_at_quarter_max", a, score)
    return _degenerate("f1_at_quarter_max", a, s, score)


@register_metric(category="localisation", higher_is_better=False, needs_mask=True)
def com_distance(
    maps: Tensor, *, masks: Tensor, abs: bool = True, normalise: bool = True
) -> Tensor:
    """Distance between the map's centre of mass ``sum_p a(p) p / sum_p a(p)`` and the mask's,
    as a fraction of the image diagonal (Ahamed et al.); lower is better.

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (default True: a centre of mass needs non-negative weights;
            with False, negative values are clipped to 0).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an empty mask, a constant map or a map without mass.
    """
    h, w = maps.shape[-2:]
    a = prepare_maps(maps, abs=abs, normalise=normalise).clamp_min(0).double()
    s = masks.to(a.device).double()
    ys = torch.arange(h, device=a.device, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, device=a.device, dtype=torch.float64).view(1, 1, w)

    def centre(weights: Tensor) -> tuple[Tensor, Tensor]:
        total = weights.sum((1, 2)).clamp_min(torch.finfo(torch.float64).tiny)
        return (weights * ys).sum((1, 2)) / total, (weights * xs).sum((1, 2)) / total

    ay, ax = centre(a)
    sy, sx = centre(s)
    score = torch.sqrt((ay - sy) ** 2 + (ax - sx) ** 2) / ((h - 1) ** 2 + (w - 1) ** 2) ** 0.5
    score = nan_where(score, a.sum((1, 2)) == 0, "com_distance", "their map has no positive mass")
    return _degenerate("com_distance", a.flatten(1), masks.flatten(1).to(a.device), score)


@register_metric(category="localisation", higher_is_better=True, needs_mask=True)
def mask_correlation(
    maps: Tensor, *, masks: Tensor, abs: bool = False, normalise: bool = True
) -> Tensor:
    """Pearson correlation between the map and the 0/1 mask (Ahamed et al.).

    Args:
        maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` bool.
        abs: take ``|maps|`` first (default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[-1, 1]``; NaN for an empty or full mask or a constant map.
    """
    a, s = _flat(prepare_maps(maps, abs=abs, normalise=normalise), masks)
    score = pearson(a, s.double())
    return _degenerate("mask_correlation", a, s, score, full=True)
