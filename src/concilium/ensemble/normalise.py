"""Per-image normalisations of explanation maps (registry :data:`NORMALISATIONS`).

Every normalisation works on tensors of shape ``(..., H, W)`` and computes its statistics over
each map's own ``H x W`` pixels, never across the batch, so one image's normalised map does not
depend on the other images (EnsembleXAI's median/IQR normalisation reduces over the wrong axes;
Quantus' max-normalisation reduces over the batch).

Constant maps carry no ranking information. They are mapped without NaN or infinity:

* ``max_abs``, ``l1``, ``l2``, ``second_moment`` divide by a scale that is zero only for the all-zero
  map, which stays all zero;
* ``min_max``, ``z_score``, ``median_iqr`` of a constant map give all zeros;
* ``rank`` of a constant map gives 0.5 everywhere (all pixels tie, ties share their mean rank).

Example:
    >>> import torch
    >>> normalise(torch.tensor([[[1.0, -2.0], [0.5, 0.0]]]), "max_abs")
    tensor([[[ 0.5000, -1.0000],
             [ 0.2500,  0.0000]]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from concilium._registry import Registry

Normalisation = Callable[[Tensor], Tensor]
NormalisationName = Literal[
    "none", "max_abs", "min_max", "l1", "l2", "z_score", "rank", "second_moment", "median_iqr"
]

NORMALISATIONS: Registry[Normalisation] = Registry("normalisation")


def _flat(maps: Tensor) -> Tensor:
    return maps.reshape(*maps.shape[:-2], -1)


def _safe_divide(x: Tensor, scale: Tensor) -> Tensor:
    """``x / scale`` per map, where a zero scale gives zeros (not NaN)."""
    zero = scale == 0
    return torch.where(zero, torch.zeros_like(x), x / torch.where(zero, torch.ones_like(scale), scale))


def _per_map(stat: Tensor) -> Tensor:
    """A per-map statistic ``(...,)`` broadcast against ``(..., H, W)``."""
    return stat[..., None, None]


@NORMALISATIONS.register("none")
def identity(maps: Tensor) -> Tensor:
    """The maps unchanged (a copy)."""
    return maps.clone()


@NORMALISATIONS.register("max_abs")
def max_abs(maps: Tensor) -> Tensor:
    """Divide by the largest absolute value of the map: values in ``[-1, 1]``, signs kept."""
    return _safe_divide(maps, _per_map(_flat(maps).abs().amax(-1)))


@NORMALISATIONS.register("min_max")
def min_max(maps: Tensor) -> Tensor:
    """Shift and scale to ``[0, 1]``: ``(x - min) / (max - min)``; a constant map gives zeros."""
    flat = _flat(maps)
    lo, hi = _per_map(flat.amin(-1)), _per_map(flat.amax(-1))
    return _safe_divide(maps - lo, hi - lo)


@NORMALISATIONS.register("l1")
def l1(maps: Tensor) -> Tensor:
    """Divide by the sum of absolute values, so ``sum |x| = 1``."""
    return _safe_divide(maps, _per_map(_flat(maps).abs().sum(-1)))


@NORMALISATIONS.register("l2")
def l2(maps: Tensor) -> Tensor:
    """Divide by the Euclidean norm, so ``sum x**2 = 1``."""
    return _safe_divide(maps, _per_map(_flat(maps).norm(dim=-1)))


@NORMALISATIONS.register("z_score")
def z_score(maps: Tensor) -> Tensor:
    """``(x - mean) / std`` over the map's pixels (population std); a constant map gives zeros.

    The statistics are taken in float64, where the mean of a constant float32 map is exactly its
    value (in float32 it is not, and the rounding error divided by a tiny std gave -1)."""
    wide = maps.double()
    flat = _flat(wide)
    mean = _per_map(flat.mean(-1))
    std = _per_map(flat.std(-1, correction=0))
    return _safe_divide(wide - mean, std).to(maps.dtype)


@NORMALISATIONS.register("second_moment")
def second_moment(maps: Tensor) -> Tensor:
    """Divide by the root of the second moment ``sqrt(mean(x**2))`` (EnsembleXAI's default)."""
    return _safe_divide(maps, _per_map(_flat(maps).square().mean(-1).sqrt()))


def _quantile(flat: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile over the last axis (``numpy.quantile``'s default), without
    ``torch.quantile``'s size limit."""
    ordered = flat.sort(-1).values
    pos = q * (flat.shape[-1] - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.shape[-1] - 1)
    frac = pos - lo
    return ordered[..., lo] * (1 - frac) + ordered[..., hi] * frac


@NORMALISATIONS.register("median_iqr")
def median_iqr(maps: Tensor) -> Tensor:
    """Robust scaling ``(x - median) / IQR`` over the map's own pixels.

    Saliency maps are often mostly zero, so the interquartile range can be zero while the map is
    not constant; the scale then falls back to ``max |x - median|``. A constant map gives zeros.
    """
    flat = _flat(maps).double()
    q1, median, q3 = (_quantile(flat, q) for q in (0.25, 0.5, 0.75))
    centred = flat - median[..., None]
    iqr = q3 - q1
    fallback = centred.abs().amax(-1)
    scale = torch.where(iqr > 0, iqr, fallback)
    out = _safe_divide(centred, scale[..., None])
    return out.reshape(maps.shape).to(maps.dtype)


@NORMALISATIONS.register("rank")
def rank(maps: Tensor) -> Tensor:
    """Quantile of each pixel within its map: ``(rank - 1) / (P - 1)`` in ``[0, 1]``.

    Ties share their mean rank (like ``scipy.stats.rankdata(method="average")``), so the result
    does not depend on the order of tied pixels; a constant map gives 0.5 everywhere.
    """
    flat = _flat(maps).contiguous()
    p = flat.shape[-1]
    if p == 1:
        return torch.full_like(maps, 0.5)
    ordered = flat.sort(-1).values
    lo = torch.searchsorted(ordered, flat, right=False)
    hi = torch.searchsorted(ordered, flat, right=True)
    mean_rank0 = (lo + hi - 1).to(maps.dtype) / 2
    return (mean_rank0 / (p - 1)).reshape(maps.shape)


def normalise(maps: Tensor, method: NormalisationName | str = "max_abs") -> Tensor:
    """Normalise each ``H x W`` map on its own.

    Args:
        maps: explanation maps ``(..., H, W)``, e.g. ``(N, H, W)`` or stacked ``(K, N, H, W)``.
        method: a name from :data:`NORMALISATIONS` (default ``"max_abs"``).

    Returns:
        A tensor of the same shape and dtype.

    Raises:
        TypeError: if ``maps`` is not a floating-point tensor.
        ValueError: if ``maps`` has fewer than 2 dimensions, holds NaN/inf, or ``method`` is unknown.
    """
    fn = NORMALISATIONS.get(method)
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        raise TypeError(
            f"maps must be a floating-point torch.Tensor (..., H, W); got "
            f"{maps.dtype if isinstance(maps, Tensor) else type(maps).__name__}"
        )
    if maps.ndim < 2:
        raise ValueError(f"maps must be (..., H, W); got shape {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values; check the explanation method")
    return fn(maps)
