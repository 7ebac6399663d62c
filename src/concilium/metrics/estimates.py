"""Faithfulness estimates: does the output drop track the relevance of what is removed?

Both metrics rank the features (square patches on Quantus's grid, pixels at ``patch_size=1``,
or any spec of :mod:`concilium.metrics.features` given as ``features=``, e.g. superpixels)
by the map, replace them by the baseline and correlate, per image (Pearson), the relevance
removed with the drop ``f(x) - f(x')`` it causes:

=========================  ============================================================  ====
metric                     what is removed at each point                                 best
=========================  ============================================================  ====
``faithfulness_estimate``  one group of ``features_in_step`` features alone (MoRF order)   high
``sensitivity_n``          the ``n`` most relevant groups together, ``n = 1 .. n_max``      high
=========================  ============================================================  ====

The copies are evaluated by :func:`concilium.metrics.regions.region_scores`, the features come
from :func:`concilium.metrics.features.feature_labels`. A Quantus "feature" is one channel value, so
with ``C`` channels Quantus's ``features_in_step = C * features_in_step`` at ``patch_size=1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from concilium.metrics._common import nan_where, pearson, prepare_maps
from concilium.metrics._streams import image_streams
from concilium.metrics.features import Features, feature_labels
from concilium.metrics.perturb import Baseline, check_batch_size, model_inputs, target_scores
from concilium.metrics.regions import (
    by_length,
    features_of,
    fixed_features,
    ranked_features,
    region_features,
    region_scores,
)
from concilium.metrics.registry import register_metric


def _check_step(features_in_step: int, n_features: int) -> int:
    if (
        isinstance(features_in_step, bool)
        or not isinstance(features_in_step, int)
        or not 1 <= features_in_step <= n_features
    ):
        raise ValueError(
            f"features_in_step must be an int in 1..{n_features} (the number of features); "
            f"got {features_in_step!r}"
        )
    return features_in_step


def _grouped_drops(
    metric: str,
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None,
    features: Features,
    features_in_step: int,
    n_steps: Callable[[int], int] | None,
    cumulative: bool,
    baseline: Baseline,
    softmax: bool,
    abs: bool,
    normalise: bool,
    batch_size: int | None,
) -> tuple[Tensor, Tensor]:
    """``(removed (N, V), drops (N, V))``: the relevance removed in each copy and the drop
    ``f(x) - f(x_v)``, for the groups of ``features_in_step`` features in MoRF order; copy ``v``
    removes group ``v`` alone or (``cumulative``) groups ``0 .. v``. Image ``i`` has
    ``n_steps(F_i)`` copies (all its groups when ``None``), ``F_i`` its number of features;
    ``V`` is the largest, and a row is NaN after its image's copies."""
    maps, images, labels, device = model_inputs(metric, maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats, counts = feature_labels(features, images)
    _check_step(features_in_step, int(counts.min()))
    groups = torch.div(counts + features_in_step - 1, features_in_step, rounding_mode="floor")
    if n_steps is not None:
        groups = torch.tensor([n_steps(int(f)) for f in counts.tolist()], device=counts.device)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    streams = image_streams(generator, images)
    relevance, ranks = ranked_features(a, feats, counts, reduce="sum", streams=streams)
    width = max(int(groups.max()), math.ceil(relevance.shape[1] / features_in_step))
    removed = torch.zeros(a.shape[0], width, dtype=torch.float64, device=a.device)
    removed.scatter_add_(1, ranks // features_in_step, relevance)
    if cumulative:
        removed = removed.cumsum(1)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = region_scores(
        model, images, labels, features=feats, ranks=ranks, n_variants=groups,
        cumulative=cumulative, per_step=features_in_step, baseline=baseline, softmax=softmax,
        batch_size=batch_size, generator=generator, streams=streams,
    )  # fmt: skip
    return removed[:, : ys.shape[1]], (y0.unsqueeze(1) - ys).double()


def _pearson_or_nan(metric: str, removed: Tensor, drops: Tensor) -> Tensor:
    values = torch.empty(drops.shape[0], dtype=torch.float64, device=drops.device)
    for length, rows in by_length((~torch.isnan(drops)).sum(1)):
        values[rows] = pearson(removed[rows, :length], drops[rows, :length])
    return nan_where(
        values, torch.isnan(values), metric,
        "the relevance removed or the output drop is constant over the steps",
    )  # fmt: skip


def _faithfulness_estimate_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1 + math.ceil(features_of(params).count_bound(size) / params["features_in_step"])


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    passes=_faithfulness_estimate_passes,
    passes_exact=fixed_features,
)
def faithfulness_estimate(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 1,
    features: str | None = None,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Faithfulness estimate (Alvarez-Melis and Jaakkola 2018): split the features, most
    relevant first, into groups of ``features_in_step``; replace each group alone by the
    baseline, and correlate (Pearson, over the groups) the group's summed relevance with the
    drop ``f(x) - f(x_g)``. Higher is better.

    ``patch_size=1`` (Quantus's default) makes every pixel a feature and costs a model pass per
    pixel: at real image sizes pass a ``patch_size`` of 8 or 16.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline (one draw per image) and of the
            order of tied features (each image's ``"ties"`` stream).
        patch_size: side of the square patches
            (:func:`~concilium.metrics.features.patch_grid`).
        features: a feature spec (:mod:`concilium.metrics.features`: ``"slic"``,
            ``"patch:16"``, ``"pixels"``) replacing the patches of ``patch_size``; ``None``:
            the patches.
        features_in_step: features per group.
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits (Quantus's default: logits).
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (the correlation does not change).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where the summed relevances or the drops are constant over the groups
        (a constant map, say).

    Raises:
        ValueError: for a patch size larger than the image, ``features_in_step`` outside
            ``1 .. features``, a bad feature spec, or both ``features`` and a ``patch_size``.
    """
    removed, drops = _grouped_drops(
        "faithfulness_estimate", maps, images=images, labels=labels, model=model,
        generator=generator, features_in_step=features_in_step,
        features=region_features(features, patch_size, default_patch_size=1),
        n_steps=None, cumulative=False, baseline=baseline, softmax=softmax, abs=abs,
        normalise=normalise, batch_size=batch_size,
    )  # fmt: skip
    return _pearson_or_nan("faithfulness_estimate", removed, drops)


def sensitivity_n_steps(n_features: int, *, features_in_step: int, n_max_percentage: float) -> int:
    """The number of points ``n_max`` of :func:`sensitivity_n` on an image with ``n_features``
    features: ``n_max_percentage`` of them, in steps of ``features_in_step`` (Quantus's
    ``max_features``), at least 2.

    Raises:
        ValueError: for ``n_max_percentage`` outside ``(0, 1]`` or fewer than 2 points.
    """
    if not 0 < n_max_percentage <= 1:
        raise ValueError(f"n_max_percentage must be in (0, 1]; got {n_max_percentage!r}")
    f = n_features
    n_max = min(int(n_max_percentage * f // _check_step(features_in_step, f)),
                math.ceil(f / features_in_step))  # fmt: skip
    if n_max < 2:
        raise ValueError(
            f"sensitivity_n needs at least 2 points; {n_max_percentage} of {f} features in steps "
            f"of {features_in_step} gives {n_max}: pass a smaller patch_size or features_in_step"
        )
    return n_max


def _sensitivity_n_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 1 + sensitivity_n_steps(
        features_of(params).count_bound(size),
        features_in_step=params["features_in_step"],
        n_max_percentage=params["n_max_percentage"],
    )


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    passes=_sensitivity_n_passes,
    passes_exact=fixed_features,
)
def sensitivity_n(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    patch_size: int = 1,
    features: str | None = None,
    features_in_step: int = 1,
    n_max_percentage: float = 0.8,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Sensitivity-n (Ancona et al. 2018) per image: remove the ``n`` most relevant groups of
    ``features_in_step`` features together, ``n = 1 .. n_max`` (``n_max_percentage`` of the
    features), and correlate (Pearson, over ``n``) the relevance removed, ``sum`` of the map
    over them, with the drop ``f(x) - f(x_n)``. Higher is better: the map's sums predict the
    output's change at every removal size.

    Quantus 0.6.0 returns one value per ``n`` (a correlation across the batch's images, not a
    score per image), from the first batch only, and pairs the cumulative drop with the
    relevance of the last group alone; see ``docs/metrics.md``.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline (one draw per image) and of the
            order of tied features (each image's ``"ties"`` stream).
        patch_size: side of the square patches
            (:func:`~concilium.metrics.features.patch_grid`); 1 (Quantus): pixels.
        features: a feature spec (:mod:`concilium.metrics.features`: ``"slic"``,
            ``"patch:16"``, ``"pixels"``) replacing the patches of ``patch_size``; ``None``:
            the patches.
        features_in_step: features per group.
        n_max_percentage: the fraction of the features removed at the last point.
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (the correlation does not change).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where the relevance removed or the drop is constant over ``n``.

    Raises:
        ValueError: for a patch size larger than the image, a bad ``features_in_step`` or
            ``n_max_percentage``, fewer than 2 points, a bad feature spec, or both ``features``
            and a ``patch_size``.
    """
    spec = region_features(features, patch_size, default_patch_size=1)
    if spec.fixed:  # fail before any model pass
        sensitivity_n_steps(
            spec.count_bound(tuple(maps.shape[-2:])), features_in_step=features_in_step,
            n_max_percentage=n_max_percentage,
        )  # fmt: skip
    removed, drops = _grouped_drops(
        "sensitivity_n", maps, images=images, labels=labels, model=model, generator=generator,
        features=spec, features_in_step=features_in_step,
        n_steps=partial(
            sensitivity_n_steps, features_in_step=features_in_step,
            n_max_percentage=n_max_percentage,
        ),  # fmt: skip
        cumulative=True, baseline=baseline, softmax=softmax, abs=abs, normalise=normalise,
        batch_size=batch_size,
    )  # fmt: skip
    return _pearson_or_nan("sensitivity_n", removed, drops)
