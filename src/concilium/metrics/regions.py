"""Faithfulness metrics over regions: the image is cut into features (square patches on a grid,
superpixels or pixels: :mod:`concilium.metrics.features`), the features are ranked by the
relevance the map gives them, and the model's score is read while they are replaced by the
baseline in that order.

One core, :func:`region_scores`, evaluates the copies: ``cumulative=True`` replaces the first
``v + 1`` features of the order in copy ``v`` (a perturbation sequence: region perturbation,
selectivity, IROF, sensitivity-n), ``cumulative=False`` replaces only the ``v``-th group of
features (the faithfulness estimate, :mod:`concilium.metrics.estimates`). Copies are built and
evaluated in chunks of ``batch_size`` on the model's device by
:func:`~concilium.metrics.perturb.variant_scores`, the loop every perturbation metric shares.

=======================  =========================================================  ====
metric                   score (MoRF order, one more feature per step)               best
=======================  =========================================================  ====
``region_perturbation``  area (dx = 1) of ``f(x) - f(x_k)`` over the first 100 steps  high
``selectivity``          area (dx = 1) of ``f(x_k)`` until every feature is replaced   low
=======================  =========================================================  ====

By default the features are Quantus's patch grid: ``patch_size`` squares, the image padded (half
before, half after) to a multiple of ``patch_size``, patches numbered row by row; a patch's
relevance is the sum of the map over its pixels. ``patch_size=1`` makes every pixel a feature;
``features="slic"`` (any spec of :mod:`concilium.metrics.features`) replaces the patches.
Superpixels differ in number between images, so the curves of one batch differ in length:
a curve is padded with NaN after its image's last step, and each score is computed on its own
image's steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, prepare_maps
from concilium.metrics._streams import image_streams, tie_break_keys
from concilium.metrics.features import (
    Features,
    check_patch_size,
    feature_labels,
    parse_features,
)
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


def region_features(features: str | None, patch_size: int, *, default_patch_size: int) -> Features:
    """The features of a region metric: ``features`` when given, else Quantus's patches of
    ``patch_size``.

    Raises:
        ValueError: for a bad spec or patch size, or both ``features`` and a ``patch_size``
            other than its default (the patch size would be ignored).
    """
    if features is None:
        check_patch_size(patch_size)
        return parse_features(f"patch:{patch_size}")
    if patch_size != default_patch_size:
        raise ValueError(
            f"pass either patch_size or features, not both: features={features!r} sets the "
            f"features and patch_size={patch_size} would be ignored (use features='patch:"
            f"{patch_size}')"
        )
    return parse_features(features)


def features_of(params: Mapping[str, Any]) -> Features:
    """The features a region metric uses with its resolved ``params`` (``features`` and
    ``patch_size``), for its pass count."""
    if params.get("features") is None:
        return parse_features(f"patch:{params['patch_size']}")
    return parse_features(params["features"])


def fixed_features(params: Mapping[str, Any]) -> bool:
    """Whether a region metric's pass count is exact with ``params``: its features are the same
    in number for every image (patches, pixels), not superpixels."""
    return features_of(params).fixed


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


def ranked_features(
    a: Tensor, labels: Tensor, counts: Tensor, *, reduce: Reduce, streams: list[int]
) -> tuple[Tensor, Tensor]:
    """``(relevance (N, F), ranks (N, F))`` of the features ``labels (N, H, W)`` of each map,
    most relevant first, ``F`` the largest of ``counts (N,)``; an image's missing features
    (``>= counts[i]``) have relevance 0 and come last (ranks ``>= counts[i]``).

    Tied features come in a random order drawn from each image's ``"ties"`` stream
    (``streams``, :func:`~concilium.metrics._streams.image_streams`), never by index, which is
    raster order for patches and pixels; without ties the order is the plain sort."""
    f = int(counts.max())
    relevance = feature_relevance(a, labels, f, reduce=reduce)
    absent = torch.arange(f, device=a.device) >= counts.to(a.device).unsqueeze(1)
    key = relevance.masked_fill(absent, float("-inf"))
    perm = tie_break_keys(streams, f, a.device)
    order = perm.gather(1, torch.sort(-key.gather(1, perm), dim=1, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(f, device=order.device).expand_as(order))
    return relevance, ranks


def by_length(lengths: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(length, rows)`` for each distinct value of ``lengths (N,)``: the rows whose curves
    have that many points."""
    for value in torch.unique(lengths).tolist():
        yield int(value), torch.nonzero(lengths == value).squeeze(1)


def row_trapezoid(curve: Tensor, lengths: Tensor) -> Tensor:
    """``(N,)`` float64: the trapezoidal area (``dx = 1``) of each row of ``curve (N, V)`` over
    its first ``lengths[i]`` points (the rest is padding)."""
    out = torch.empty(curve.shape[0], dtype=torch.float64, device=curve.device)
    for length, rows in by_length(lengths.to(curve.device)):
        out[rows] = torch.trapezoid(curve[rows, :length].double(), dim=1)
    return out


def region_scores(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    features: Tensor,
    ranks: Tensor,
    n_variants: int | Tensor,
    cumulative: bool,
    per_step: int = 1,
    baseline: Baseline,
    softmax: bool,
    batch_size: int,
    generator: torch.Generator | None,
    streams: list[int] | None = None,
) -> Tensor:
    """``(N, V)``: the model's score of the copies of each image whose features are replaced by
    the baseline in the order ``ranks (N, F)``; a random baseline is drawn from each image's
    stream: ``streams`` when the caller has them (:func:`ranked_features` used them), else
    ``image_streams(generator, images)``.

    Copy ``v`` replaces the features of rank ``< (v + 1) * per_step`` (``cumulative``) or of rank
    in ``[v * per_step, (v + 1) * per_step)`` (not cumulative). ``n_variants`` is one ``V`` for
    all images, or ``(N,)`` per image: then ``V`` is the largest, image ``i`` has only its
    ``n_variants[i]`` copies (no pass is spent on the others) and its row is NaN after them.
    """
    n, _, h, w = images.shape
    pixel_rank = ranks.gather(1, features.expand(n, h, w).flatten(1))  # (N, H*W)
    if streams is None:  # a draw depends on its image, not its position
        streams = image_streams(generator, images)
    base = row_baselines(images, labels, baseline, [derive_seed(s, "baseline") for s in streams])

    def replace_in(rows: Tensor):
        def replace(i: Tensor, v: Tensor) -> Tensor:
            r = pixel_rank[rows[i]]
            hi = ((v + 1) * per_step).unsqueeze(1)
            changed = r < hi if cumulative else (r < hi) & (r >= (v * per_step).unsqueeze(1))
            return changed.view(-1, h, w)

        return replace

    if isinstance(n_variants, int):
        every = torch.arange(n, device=images.device)
        return variant_scores(
            model, images, labels, base, replace_in(every), n_variants, softmax=softmax,
            batch_size=batch_size,
        )  # fmt: skip
    lengths = n_variants.to(images.device)
    out = torch.full((n, int(lengths.max())), float("nan"), device=images.device)
    for length, rows in by_length(lengths):
        out[rows, :length] = variant_scores(
            model, images[rows], labels[rows], base[rows], replace_in(rows), length,
            softmax=softmax, batch_size=batch_size,
        )  # fmt: skip
    return out


def _nan_for_constant(metric: str, maps: Tensor, values: Tensor, *, abs: bool) -> Tensor:
    """NaN where the map *as ordered* (``|maps|`` when ``abs``) is constant: no order."""
    ordered = prepare_maps(maps, abs=abs, normalise=False)
    constant = constant_rows(ordered.flatten(1)).to(values.device)
    return nan_where(values, constant, metric, "their map is constant")


def _region_perturbation_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1 + min(params["regions_evaluation"], features_of(params).count_bound(size))


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    passes=_region_perturbation_passes,
    passes_exact=fixed_features,
)
def region_perturbation(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    features: str | None = None,
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
        generator: random source of a ``"uniform"`` baseline (one draw per image) and of the
            order of tied features (each image's ``"ties"`` stream).
        patch_size: side of the square patches
            (Quantus's grid, :func:`~concilium.metrics.features.patch_grid`).
        features: a feature spec (:mod:`concilium.metrics.features`: ``"slic"``,
            ``"patch:16"``, ``"pixels"``) replacing the patches of ``patch_size``; ``None``:
            the patches.
        regions_evaluation: the number of features replaced (at most all of them).
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map (its order is arbitrary).

    Raises:
        ValueError: for a patch size larger than the image, ``regions_evaluation < 1``, a bad
            feature spec, or both ``features`` and a ``patch_size``.
    """
    curve = region_perturbation_drops(
        maps, images=images, labels=labels, model=model, generator=generator,
        patch_size=patch_size, features=features, regions_evaluation=regions_evaluation,
        baseline=baseline, softmax=softmax, abs=abs, normalise=normalise, batch_size=batch_size,
    )  # fmt: skip
    area = row_trapezoid(curve, (~torch.isnan(curve)).sum(1))
    return _nan_for_constant("region_perturbation", maps, area, abs=abs)


def region_perturbation_drops(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    features: str | None = None,
    regions_evaluation: int = 100,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """The curve behind :func:`region_perturbation`: ``(N, R)``, ``f(x) - f(x_k)`` after each of
    the ``R_i = min(regions_evaluation, features of image i)`` steps (Quantus's
    ``RegionPerturbation`` output), ``R`` the largest, a row NaN after its ``R_i`` points.
    The arguments are :func:`region_perturbation`'s."""
    if (
        isinstance(regions_evaluation, bool)
        or not isinstance(regions_evaluation, int)
        or (regions_evaluation < 1)
    ):
        raise ValueError(f"regions_evaluation must be a positive int; got {regions_evaluation!r}")
    spec = region_features(features, patch_size, default_patch_size=8)
    maps, images, labels, device = model_inputs("region_perturbation", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats, counts = feature_labels(spec, images)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    streams = image_streams(generator, images)
    _, ranks = ranked_features(a, feats, counts, reduce="sum", streams=streams)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = region_scores(
        model, images, labels, features=feats, ranks=ranks,
        n_variants=counts.clamp(max=regions_evaluation), cumulative=True, baseline=baseline,
        softmax=softmax, batch_size=batch_size, generator=generator, streams=streams,
    )  # fmt: skip
    return y0.unsqueeze(1) - ys


def _selectivity_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return features_of(params).count_bound(size)


@register_metric(
    category="faithfulness",
    higher_is_better=False,
    needs_model=True,
    passes=_selectivity_passes,
    passes_exact=fixed_features,
)
def selectivity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 8,
    features: str | None = None,
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
        generator: random source of a ``"uniform"`` baseline (one draw per image) and of the
            order of tied features (each image's ``"ties"`` stream).
        patch_size: side of the square patches
            (Quantus's grid, :func:`~concilium.metrics.features.patch_grid`).
        features: a feature spec (:mod:`concilium.metrics.features`: ``"slic"``,
            ``"patch:16"``, ``"pixels"``) replacing the patches of ``patch_size``; ``None``:
            the patches.
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map (its order is arbitrary).

    Raises:
        ValueError: for a patch size larger than the image, a bad feature spec, or both
            ``features`` and a ``patch_size``.
    """
    spec = region_features(features, patch_size, default_patch_size=8)
    maps, images, labels, device = model_inputs("selectivity", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats, counts = feature_labels(spec, images)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    streams = image_streams(generator, images)
    _, ranks = ranked_features(a, feats, counts, reduce="sum", streams=streams)
    ys = region_scores(
        model, images, labels, features=feats, ranks=ranks, n_variants=counts, cumulative=True,
        baseline=baseline, softmax=softmax, batch_size=batch_size, generator=generator,
        streams=streams,
    )  # fmt: skip
    return _nan_for_constant("selectivity", maps, row_trapezoid(ys, counts), abs=abs)
