"""The complexity family: how concentrated a map is (sparseness, entropy, effective
complexity). They need only the maps.

The module is not called ``complexity`` because the metric :func:`complexity` (the entropy) is
exported from :mod:`concilium.metrics` under its registered name and would shadow it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from concilium.metrics._common import nan_where, prepare_maps, sort_values, warn_rows
from concilium.metrics.registry import register_metric


def _zero_rows(a: Tensor, *, non_negative: bool) -> Tensor:
    """``(N,)`` bool: the all-zero rows of ``a (N, P)``; a ``non_negative`` one (``|maps|``) is
    all zero where its maximum is 0 (a NaN maximum is not 0, as a NaN is not 0)."""
    if non_negative:
        return a.amax(1) == 0
    return (a != 0).sum(1) == 0


@register_metric(category="complexity", higher_is_better=True)
def sparseness(maps: Tensor, *, abs: bool = True, normalise: bool = True) -> Tensor:
    """Gini index of the map (Chalasani et al. 2020), with Quantus's ``+1e-7`` offset:
    ``sum_i (2i - P - 1) a_(i) / (P sum_i a_(i))`` over the sorted values ``a_(i)``.

    Args:
        maps: ``(N, H, W)``.
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (Quantus default True, but per image).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for an all-zero map. With ``abs=False`` a map with negative
        values gets Quantus's value, which can leave ``[0, 1]``, and a ``MetricWarning``.
    """
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1)
    zero = _zero_rows(a, non_negative=abs)
    if not abs:
        warn_rows(
            "sparseness",
            (a < 0).any(1),
            "have negative values (abs=False): their Gini index, computed as Quantus does, is "
            "not confined to [0, 1]; pass abs=True",
        )
    p = a.shape[1]
    a = sort_values(a).double() + 1e-7  # adding a constant keeps the order
    i = torch.arange(1, p + 1, device=a.device, dtype=torch.float64)
    score = ((2 * i - p - 1) * a).sum(1) / (p * a.sum(1))
    return nan_where(score, zero, "sparseness", "their map is all zeros")


@register_metric(category="complexity", higher_is_better=False)
def complexity(maps: Tensor, *, abs: bool = True, normalise: bool = True) -> Tensor:
    """Entropy of the map's share ``|a| / sum |a|`` (Bhatt et al. 2020), in nats, with Quantus's
    ``1e-12`` inside the log.

    Args:
        maps: ``(N, H, W)``.
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (no effect on the score).

    Returns:
        ``(N,)`` in ``[0, log(H W)]``; NaN for an all-zero map, and (as in Quantus, where the
        log of a negative share is NaN) for a map with negative values at ``abs=False``.
    """
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1).double()
    zero = _zero_rows(a, non_negative=abs)
    total = (a if abs else a.abs()).sum(1, keepdim=True)  # |a| is a when abs
    share = a / total.clamp_min(torch.finfo(torch.float64).tiny)
    score = -(share * torch.log(share + 1e-12)).sum(1)
    if not abs:
        score = nan_where(
            score,
            (a < 0).any(1),
            "complexity",
            "their map has negative values (abs=False): the entropy of signed shares is "
            "undefined; pass abs=True",
        )
    return nan_where(score, zero, "complexity", "their map is all zeros")


@register_metric(category="complexity", higher_is_better=False)
def effective_complexity(
    maps: Tensor, *, eps: float = 1e-5, abs: bool = True, normalise: bool = True
) -> Tensor:
    """Number of pixels whose (normalised) value exceeds ``eps`` (Nguyen and Martinez 2020).

    With ``normalise=True`` each map is divided by its own max ``|.|``, so ``eps`` is relative to
    the map's peak; Quantus divides by the batch's max, so there the count depends on the batch.

    Args:
        maps: ``(N, H, W)``.
        eps: threshold (Quantus default 1e-5).
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` first.

    Returns:
        ``(N,)`` counts as float (an all-zero map has count 0: it is well defined).
    """
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1)
    return (a > eps).sum(1).double()
