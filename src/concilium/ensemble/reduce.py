"""Reducers over a stacked axis, and ``aggregate`` (normalise, then reduce).

A reducer is a plain function of a stacked tensor ``(K, N, H, W) -> (N, H, W)``: ``K`` members of
a committee, or ``K`` methods of one model. :func:`aggregate` is EnsembleXAI's ``normEnsembleXAI``
("normalise every map, then reduce over the methods") with every normalisation and reducer of
concilium available.

Example:
    >>> import torch
    >>> stack = torch.tensor([1.0, 5.0, 2.0]).reshape(3, 1, 1, 1)
    >>> reduce(stack, "median").item()
    2.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from concilium._registry import Registry
from concilium.ensemble.normalise import NormalisationName, normalise, rank

Reducer = Callable[..., Tensor]
ReducerName = Literal["mean", "median", "min", "max", "max_abs", "trimmed_mean", "rank_mean"]

REDUCERS: Registry[Reducer] = Registry("reducer")


@REDUCERS.register("mean")
def mean(stack: Tensor) -> Tensor:
    """Mean over the stacked axis."""
    return stack.mean(0)


@REDUCERS.register("median")
def median(stack: Tensor) -> Tensor:
    """Median over the stacked axis; for even ``K`` the mean of the two middle values."""
    ordered = stack.sort(0).values
    k = stack.shape[0]
    return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2


@REDUCERS.register("min")
def minimum(stack: Tensor) -> Tensor:
    """Element-wise minimum over the stacked axis."""
    return stack.amin(0)


@REDUCERS.register("max")
def maximum(stack: Tensor) -> Tensor:
    """Element-wise maximum over the stacked axis."""
    return stack.amax(0)


@REDUCERS.register("max_abs")
def max_abs(stack: Tensor) -> Tensor:
    """The value of largest magnitude, sign kept (EnsembleXAI's ``max_abs``); ties take the first."""
    idx = stack.abs().argmax(0, keepdim=True)
    return stack.gather(0, idx).squeeze(0)


@REDUCERS.register("trimmed_mean")
def trimmed_mean(stack: Tensor, *, trim: float = 0.2) -> Tensor:
    """Mean after dropping ``floor(trim * K)`` values from each end (``scipy.stats.trim_mean``).

    Args:
        stack: ``(K, N, H, W)``.
        trim: fraction cut from each end, in ``[0, 0.5)``.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5); got {trim}")
    k = stack.shape[0]
    cut = int(trim * k)
    return stack.sort(0).values[cut : k - cut].mean(0)


@REDUCERS.register("rank_mean")
def rank_mean(stack: Tensor) -> Tensor:
    """Rank voting: each map becomes its per-image pixel quantiles (``rank`` normalisation), then
    the quantiles are averaged. Insensitive to each voter's scale."""
    return rank(stack).mean(0)


def _check_stack(stack: object) -> Tensor:
    if not isinstance(stack, Tensor) or not stack.is_floating_point():
        raise TypeError(
            "stack must be a floating-point torch.Tensor (K, N, H, W); got "
            f"{stack.dtype if isinstance(stack, Tensor) else type(stack).__name__}"
        )
    if stack.ndim != 4:
        raise ValueError(
            f"stack must be (K, N, H, W); got shape {tuple(stack.shape)}"
            + (" (stack a list of (N, H, W) maps with torch.stack(maps))" if stack.ndim == 3 else "")
        )
    if stack.shape[0] == 0:
        raise ValueError("stack is empty (K = 0); give at least one map per image")
    if not torch.isfinite(stack).all():
        raise ValueError("stack contains NaN or infinite values; check the explanation method")
    return stack


def reduce(stack: Tensor, reducer: ReducerName | str = "mean", *, trim: float = 0.2) -> Tensor:
    """Reduce ``(K, N, H, W)`` to ``(N, H, W)`` with a reducer from :data:`REDUCERS`.

    Args:
        stack: stacked maps ``(K, N, H, W)``.
        reducer: reducer name (default ``"mean"``).
        trim: fraction cut from each end by ``"trimmed_mean"`` (ignored by the others).

    Raises:
        ValueError: unknown reducer, wrong shape, ``K = 0`` or non-finite values.
        TypeError: ``stack`` is not a floating-point tensor.
    """
    fn = REDUCERS.get(reducer)
    stack = _check_stack(stack)
    if reducer == "trimmed_mean":
        return fn(stack, trim=trim)
    return fn(stack)


def stack_maps(maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor]) -> Tensor:
    """Stack ``K`` maps ``(N, H, W)`` (a sequence or a name -> maps mapping, in its order) into
    ``(K, N, H, W)``; a tensor that is already ``(K, N, H, W)`` is returned as is.

    Raises:
        ValueError: if the maps do not all have the same shape (e.g. different image sets).
    """
    if isinstance(maps, Tensor):
        return _check_stack(maps)
    items = list(maps.items()) if isinstance(maps, Mapping) else list(enumerate(maps))
    if not items:
        raise ValueError("no maps given; give at least one (N, H, W) map tensor")
    shape = tuple(items[0][1].shape)
    for name, m in items:
        if not isinstance(m, Tensor):
            raise TypeError(f"maps[{name!r}] must be a torch.Tensor (N, H, W); got {type(m).__name__}")
        if tuple(m.shape) != shape or m.ndim != 3:
            raise ValueError(
                f"all maps must be (N, H, W) with the same N, H, W; maps[{items[0][0]!r}] is {shape} "
                f"but maps[{name!r}] is {tuple(m.shape)} (were they computed on different images?)"
            )
    return _check_stack(torch.stack([m.float() for _, m in items]))


def aggregate(
    maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    *,
    normalisation: NormalisationName | str = "max_abs",
    reducer: ReducerName | str = "mean",
    absolute: bool = False,
    trim: float = 0.2,
) -> Tensor:
    """Normalise every map per image, then reduce over the stacked axis (``normEnsembleXAI``).

    Args:
        maps: ``K`` maps of the same images: ``(K, N, H, W)``, a sequence or a mapping of
            ``(N, H, W)`` tensors.
        normalisation: a name from :data:`~concilium.ensemble.normalise.NORMALISATIONS`
            (default ``"max_abs"``).
        reducer: a name from :data:`REDUCERS` (default ``"mean"``).
        absolute: take ``|map|`` before normalising (default ``False``: signs kept).
        trim: fraction cut from each end by ``"trimmed_mean"``.

    Returns:
        The aggregated maps ``(N, H, W)``.
    """
    stack = stack_maps(maps)
    if absolute:
        stack = stack.abs()
    return reduce(normalise(stack, normalisation), reducer, trim=trim)
