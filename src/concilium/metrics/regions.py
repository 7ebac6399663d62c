"""Faithfulness metrics over regions: the image is cut into features (square patches on a grid),
the features are ranked by the relevance the map gives them, and the
model's score is read while they are replaced by the baseline in that order.

One core, :func:`region_scores`, evaluates the copies: ``cumulative=True`` replaces the first
``v + 1`` features of the order in copy ``v`` (a perturbation sequence: region perturbation,
selectivity, sensitivity-n), ``cumulative=False`` replaces only the ``v``-th group of features
(the faithfulness estimate, :mod:`concilium.metrics.estimates`). Copies are built and evaluated in chunks of ``batch_size`` on the model's
device by :func:`~concilium.metrics.perturb.variant_scores`, the loop every perturbation metric
shares.

=======================  =========================================================  ====
metric                   score (MoRF order, one more patch per step)                 best
=======================  =========================================================  ====
``region_perturbation``  area (dx = 1) of ``f(x) - f(x_k)`` over the first 100 steps  high
``selectivity``          area (dx = 1) of ``f(x_k)`` until every patch is replaced     low
=======================  =========================================================  ====

A patch grid is Quantus's: ``patch_size`` squares, the image padded (half before, half after) to
a multiple of ``patch_size``, patches numbered row by row; a patch's relevance is the sum of the
map over its pixels. ``patch_size=1`` makes every pixel a feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, prepare_maps
from concilium.metrics._streams import image_streams
from concilium.metrics.features import n_patches, patch_grid
from concilium.metrics.perturb import (
    Baseline,
    check_batch_size,
    model_inputs,
    row_baselines,
    target_scores,
    variant_scores,
)
from concilium.metrics.registry import register_metric

Reduce = Literal["sum", "mean"]


def feature_relevance(
    a: Tensor, features: Tensor, n_features: int, *, reduce: Reduce = "sum"
) -> Tensor:
    """``(N, F)`` float64: the sum (or mean) of each map ``a (N, H, W)`` over each feature of
    ``features`` (``(H, W)`` shared or ``(N, H, W)`` per image, values ``0 .. F-1``); a mean over
    an empty feature is 0."""
    n = a.shape[0]
    feats = features.expand(n, *a.shape[-2:]).flatten(1)
    sums = torch.zeros(n, n_features, dtype=torch.float64, device=a.device)
    sums.scatter_add_(1, feats, a.flatten(1).double())
    if reduce == "sum":
        return sums
    ones = torch.ones(feats.shape, dtype=torch.float64, device=a.device)
    counts = torch.zeros_like(sums).scatter_add_(1, feats, ones)
    return sums / counts.clamp_min(1)


def feature_order(relevance: Tensor) -> Tensor:
    """``(N, F)`` long: the rank of each feature, most relevant first (ties by index)."""
    order = torch.sort(-relevance, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def region_scores(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    features: Tensor,
    ranks: Tensor,
    n_variants: int,
    cumulative: bool,
    per_step: int = 1,
    baseline: Baseline,
    softmax: bool,
    batch_size: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``(N, V)``: the model's score of the copies of each image whose features are replaced by
    the baseline in the order ``ranks (N, F)``.

    Copy ``v`` replaces the features of rank ``< (v + 1) * per_step`` (``cumulative``) or of rank
    in ``[v * per_step, (v + 1) * per_step)`` (not cumulative).
    """
    n, _, h, w = images.shape
    pixel_rank = ranks.gather(1, features.expand(n, h, w).flatten(1))  # (N, H*W)
    streams = image_streams(generator, images)  # a draw depends on its image, not its position
    base = row_baselines(images, labels, baseline, [derive_seed(s, "baseline") for s in streams])

    def replace(i: Tensor, v: Tensor) -> Tensor:
        r = pixel_rank[i]
        hi = ((v + 1) * per_step).unsqueeze(1)
        changed = r < hi if cumulative else (r < hi) & (r >= (v * per_step).unsqueeze(1))
        return changed.view(-1, h, w)

    return variant_scores(
        model, images, labels, base, replace, n_variants, softmax=softmax, batch_size=batch_size
    )


def _nan_for_constant(metric: str, maps: Tensor, values: Tensor) -> Tensor:
    constant = constant_rows(maps.flatten(1)).to(values.device)
    return nan_where(values, constant, metric, "their map is constant")


def _region_perturbation_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1 + min(params["regions_evaluation"], n_patches(size, params["patch_size"]))


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    passes=_region_perturbation_passes,
)
def region_perturbation(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    regions_evaluation: int = 100,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Region perturbation (Samek et al. 2017), MoRF order: replace the patches by the
    baseline, most relevant first (a patch's relevance is the sum of the map over it), one more
    patch per step for ``regions_evaluation`` steps, and take the trapezoidal area (``dx = 1``)
    of the drop ``f(x) - f(x_k)``: Quantus's ``get_auc_score`` per image. Higher is better.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline (one draw per image).
        patch_size: side of the square patches (Quantus's grid, :func:`patch_grid`).
        regions_evaluation: the number of patches replaced (at most all of them).
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map (its order is arbitrary).

    Raises:
        ValueError: for a patch size larger than the image or ``regions_evaluation < 1``.
    """
    curve = region_perturbation_drops(
        maps, images=images, labels=labels, model=model, generator=generator,
        patch_size=patch_size, regions_evaluation=regions_evaluation, baseline=baseline,
        softmax=softmax, abs=abs, normalise=normalise, batch_size=batch_size,
    )  # fmt: skip
    return _nan_for_constant("region_perturbation", maps, torch.trapezoid(curve.double(), dim=1))


def region_perturbation_drops(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    regions_evaluation: int = 100,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """The curve behind :func:`region_perturbation`: ``(N, R)``, ``f(x) - f(x_k)`` after each of
    the ``R = min(regions_evaluation, patches)`` steps (Quantus's ``RegionPerturbation`` output).
    The arguments are :func:`region_perturbation`'s."""
    if (
        isinstance(regions_evaluation, bool)
        or not isinstance(regions_evaluation, int)
        or (regions_evaluation < 1)
    ):
        raise ValueError(f"regions_evaluation must be a positive int; got {regions_evaluation!r}")
    maps, images, labels, device = model_inputs("region_perturbation", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    h, w = maps.shape[-2:]
    grid = patch_grid(h, w, patch_size, device)
    f = n_patches((h, w), patch_size)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    ranks = feature_order(feature_relevance(a, grid, f, reduce="sum"))
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = region_scores(
        model, images, labels, features=grid, ranks=ranks, n_variants=min(regions_evaluation, f),
        cumulative=True, baseline=baseline, softmax=softmax, batch_size=batch_size,
        generator=generator,
    )  # fmt: skip
    return y0.unsqueeze(1) - ys


def _selectivity_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return n_patches(size, params["patch_size"])


@register_metric(
    category="faithfulness", higher_is_better=False, needs_model=True, passes=_selectivity_passes
)
def selectivity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Selectivity (Montavon et al. 2018): replace the patches by the baseline, most relevant
    first (a patch's relevance is the sum of the map over it), one more per step until all are
    gone, and take the trapezoidal area (``dx = 1``) of the score ``f(x_k)``: Quantus's
    ``get_auc_score`` per image. Lower is better (the score falls fast).

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline (one draw per image).
        patch_size: side of the square patches (Quantus's grid, :func:`patch_grid`).
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map (its order is arbitrary).

    Raises:
        ValueError: for a patch size larger than the image.
    """
    maps, images, labels, device = model_inputs("selectivity", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    h, w = maps.shape[-2:]
    grid = patch_grid(h, w, patch_size, device)
    f = n_patches((h, w), patch_size)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    ranks = feature_order(feature_relevance(a, grid, f, reduce="sum"))
    ys = region_scores(
        model, images, labels, features=grid, ranks=ranks, n_variants=f, cumulative=True,
        baseline=baseline, softmax=softmax, batch_size=batch_size, generator=generator,
    )  # fmt: skip
    return _nan_for_constant("selectivity", maps, torch.trapezoid(ys.double(), dim=1))
