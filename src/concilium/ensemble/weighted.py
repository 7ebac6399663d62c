"""Metric-weighted ensembles of methods (EnsembleXAI's ``autoweighted``).

Each method ``k`` gets a score per metric ``q`` (e.g. its mean relevance mass and its mean
deletion AUC). Every metric is z-scored across the methods, so metrics on different scales count
alike, with the sign flipped for lower-is-better metrics; a metric on which all methods tie (zero
variance) carries no information and contributes 0 instead of NaN. A method's combined score is the
weighted sum of its z-scores over metrics; the ensemble is the weighted sum of the normalised maps.

With ``clip_negative=True`` (default) below-average methods get weight 0 and the weights are
renormalised to sum to 1, so no map enters with an inverted sign; when every method ties the
weights are uniform (the plain mean). ``clip_negative=False`` uses the raw combined z-scores, as
EnsembleXAI does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from concilium.ensemble.normalise import NormalisationName, normalise
from concilium.ensemble.reduce import stack_maps


def metric_weights(
    scores: Mapping[str, Mapping[str, float]],
    *,
    methods: Sequence[str],
    higher_is_better: Mapping[str, bool],
    metric_weights: Mapping[str, float] | None = None,
    clip_negative: bool = True,
) -> Tensor:
    """Weights ``(K,)`` for ``methods`` from their metric scores.

    Args:
        scores: ``scores[metric][method]`` = the method's mean score on that metric.
        methods: the method order of the returned weights.
        higher_is_better: per metric in ``scores``.
        metric_weights: importance of each metric (default: 1 each); every metric of
            ``scores`` must have one.
        clip_negative: zero negative weights and renormalise to sum 1 (see module docstring).

    Raises:
        ValueError: no metrics, a method missing from a metric's scores, a metric with no
            direction in ``higher_is_better``, or one with no weight in ``metric_weights``.
    """
    if not scores:
        raise ValueError("give the scores of at least one metric")
    methods = list(methods)
    if metric_weights is not None:
        missing = [m for m in scores if m not in metric_weights]
        if missing:
            raise ValueError(f"metric_weights has no weight for metrics {missing}; give every "
                             "metric a weight (0 to leave one out) or drop it from the scores")
    combined = torch.zeros(len(methods), dtype=torch.float64)
    for metric, per_method in scores.items():
        missing = [m for m in methods if m not in per_method]
        if missing:
            raise ValueError(f"metric {metric!r} has no score for methods {missing}; evaluate them first")
        if metric not in higher_is_better:
            raise ValueError(f"higher_is_better has no entry for metric {metric!r}")
        x = torch.tensor([float(per_method[m]) for m in methods], dtype=torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError(f"metric {metric!r} has non-finite scores {x.tolist()}")
        if not higher_is_better[metric]:
            x = -x
        std = x.std(correction=0)
        z = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
        alpha = 1.0 if metric_weights is None else float(metric_weights[metric])
        combined += alpha * z
    if not clip_negative:
        return combined.float()
    w = combined.clamp(min=0)
    if w.sum() <= 0:
        return torch.full((len(methods),), 1.0 / len(methods))
    return (w / w.sum()).float()


def weighted_ensemble(
    maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    weights: Tensor | Sequence[float],
    *,
    normalisation: NormalisationName | str = "max_abs",
    absolute: bool = False,
) -> Tensor:
    """``sum_k w_k * normalise(map_k)``: ``(N, H, W)``.

    Args:
        maps: ``K`` maps of the same images.
        weights: ``K`` weights (e.g. from :func:`metric_weights`).
        normalisation: per-image normalisation of every map first.
        absolute: take ``|map|`` first.

    Raises:
        ValueError: if the number of weights is not ``K``.
    """
    stack = stack_maps(maps)
    w = torch.as_tensor(weights, dtype=stack.dtype, device=stack.device)
    if w.shape != (stack.shape[0],):
        raise ValueError(f"need one weight per map: {stack.shape[0]} maps but weights of shape "
                         f"{tuple(w.shape)}")
    if absolute:
        stack = stack.abs()
    return torch.einsum("k,knhw->nhw", w, normalise(stack, normalisation))
