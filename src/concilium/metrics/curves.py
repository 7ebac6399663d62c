"""Perturbation curves and the faithfulness metrics read off them.

One core, :func:`perturbation_curve`, removes (deletion) or restores (insertion) pixels in the
order of the map and records the model's score after each step. Every curve metric is one row of
a table: the curve's mode, order and defaults, and how the curve becomes one score per image.
:func:`curve_metric` turns a row into two explicit functions, the metric and its curve, and
registers the metric under its name; each is a module-level name (and exported by
:mod:`concilium.metrics`):

========================  =========  =====  ========================================  ====
metric                    mode       order  score                                     best
========================  =========  =====  ========================================  ====
``deletion``              deletion   MoRF   area over the fraction removed (0..1)      low
``deletion_lerf``         deletion   LeRF   area                                       high
``insertion``             insertion  MoRF   area (from a blurred image)                high
``insertion_lerf``        insertion  LeRF   area                                       low
``aopc``                  deletion   MoRF   mean drop from the start                   high
``aopc_lerf``             deletion   LeRF   mean drop from the start                   low
``pixel_flipping``        deletion   MoRF   area with dx = 1 per step, no start point  low
``monotonicity``          insertion  LeRF   1 if the score never decreases             high
========================  =========  =====  ========================================  ====

Every function takes ``maps (N, H, W)``, ``images (N, C, H, W)``, ``labels (N,)`` and ``model``
and perturbs whole pixels (all channels of a pixel at once). Perturbed copies are built and
evaluated in chunks of ``batch_size`` on the model's device (:mod:`concilium.metrics.perturb`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, prepare_maps
from concilium.metrics._streams import image_streams
from concilium.metrics.features import Features, feature_labels, parse_features
from concilium.metrics.perturb import (
    Baseline,
    Unit,
    check_batch_size,
    model_inputs,
    pixel_ranks,
    row_baselines,
    step_counts,
    variant_scores,
)
from concilium.metrics.regions import ranked_features
from concilium.metrics.registry import register_metric

Mode = Literal["deletion", "insertion"]
Order = Literal["morf", "lerf"]
Score = Callable[[Tensor, Tensor], Tensor]
"""``score(fractions (S,), scores (N, S)) -> (N,)``: how a curve becomes one value per image."""


def perturbation_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    mode: Mode = "deletion",
    order: Order = "morf",
    step: float = 5,
    unit: Unit = "percent",
    baseline: Baseline = "black",
    softmax: bool = True,
    include_start: bool = True,
    abs: bool = False,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The deletion or insertion curve of each image.

    Deletion replaces the pixels by the baseline in the given order (``"morf"``: most relevant
    first; ``"lerf"``: least relevant first); insertion starts from the baseline and puts the
    image's pixels back in that order. Tied pixels are taken in a random order drawn from each
    image's own stream (seeded by ``generator``), never in raster order.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        mode: ``"deletion"`` or ``"insertion"``.
        order: ``"morf"`` or ``"lerf"``.
        step: pixels per step (``unit="pixels"``) or percent of the pixels per step.
        unit: ``"pixels"`` or ``"percent"``.
        baseline: replacement values (see :func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        include_start: prepend the unperturbed point (0 pixels changed).
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        features: what one step removes (:mod:`concilium.metrics.features`): ``"pixels"``,
            ``"patch:8"`` (squares), ``"slic"`` (superpixels)...; a feature is ranked by the sum
            of the map over it, and ``step`` counts features (``unit="pixels"``: features per
            step). Superpixels, whose number depends on the image, need ``unit="percent"``: the
            curve is then read at the same fractions of each image's features.
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (one draw per image, kept for the whole curve).

    Returns:
        ``(fractions (S,), scores (N, S))``: the fraction of pixels changed at each point and the
        model's score for ``labels`` there.

    Raises:
        ValueError: for an unknown mode, order or unit, or a step that does not fit the image.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf'; got {order!r}")
    maps, images, labels, device = model_inputs(mode, maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats = parse_features(features)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    streams = image_streams(generator, images)
    if feats.kind == "pixels":
        ranks = pixel_ranks(a, descending=order == "morf", streams=streams)
        n_features = torch.full((a.shape[0],), h * w, dtype=torch.long, device=device)
    else:
        ranks, n_features = feature_ranks(a, images, feats, order=order, streams=streams)
    fractions, counts = feature_step_counts(n_features, step=step, unit=unit, fixed=feats.fixed)
    if include_start:
        fractions = torch.cat([torch.zeros(1, dtype=fractions.dtype), fractions])
        counts = torch.cat([torch.zeros_like(counts[:, :1]), counts], dim=1)
    base = row_baselines(images, labels, baseline, [derive_seed(s, "baseline") for s in streams])

    def replace(i: Tensor, v: Tensor) -> Tensor:
        changed = ranks[i] < counts[i, v].unsqueeze(1)
        return (changed if mode == "deletion" else ~changed).view(-1, h, w)

    scores = variant_scores(
        model, images, labels, base, replace, counts.shape[1], softmax=softmax,
        batch_size=batch_size,
    )
    return fractions, scores


def feature_ranks(
    a: Tensor, images: Tensor, feats: Features, *, order: Order, streams: list[int]
) -> tuple[Tensor, Tensor]:
    """``(ranks (N, H*W), F (N,))``: the position of every pixel's feature in the perturbation
    order (LeRF = MoRF reversed, ties included) and each image's number of features."""
    labels, n_features = feature_labels(feats, images)
    _, franks = ranked_features(a, labels, n_features, reduce="sum", streams=streams)
    if order == "lerf":
        franks = n_features.unsqueeze(1) - 1 - franks  # absent features are never gathered
    return franks.gather(1, labels.flatten(1)), n_features


def feature_step_counts(
    n_features: Tensor, *, step: float, unit: Unit, fixed: bool
) -> tuple[Tensor, Tensor]:
    """``(fractions (S,) float64 on the CPU, counts (N, S) long)``: after each step, the
    fraction of the features changed and how many features of each image that is.

    With the same number of features in every image (pixels, patches) the steps are
    :func:`~concilium.metrics.perturb.step_counts`'s; superpixels (a number per image) need
    ``unit="percent"`` and take ``round(F_i * min(1, s * step / 100))`` features at step ``s``.
    """
    if fixed:
        total = int(n_features[0])
        per_step = step_counts(total, step=step, unit=unit).to(n_features.device)
        return per_step.double().cpu() / total, per_step.expand(n_features.shape[0], -1)
    if unit != "percent":
        raise ValueError(
            "superpixels differ in number from image to image: pass unit='percent' (the curve "
            f"is then read at the same fractions of every image's features); got unit={unit!r}"
        )
    if not 0 < step <= 100:
        raise ValueError(f"step in percent must be in (0, 100]; got {step}")
    steps = math.ceil(100 / step)
    fractions = torch.clamp(torch.arange(1, steps + 1, dtype=torch.float64) * step / 100, max=1.0)
    counts = torch.round(n_features.double().unsqueeze(1).cpu() * fractions).long()
    return fractions, counts.to(n_features.device)


def area(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoidal area under each curve over the fraction of pixels changed."""
    return torch.trapezoid(scores.double(), fractions.to(scores.device), dim=1)


def area_per_step(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoidal area with ``dx = 1`` per step (Quantus's ``calculate_auc``)."""
    return torch.trapezoid(scores.double(), dim=1)


def mean_drop(fractions: Tensor, scores: Tensor) -> Tensor:
    """AOPC: the mean over the points of ``score(start) - score``."""
    return (scores[:, :1] - scores).double().mean(1)


def never_decreases(fractions: Tensor, scores: Tensor) -> Tensor:
    """1 where the curve never decreases from one point to the next, else 0."""
    return (torch.diff(scores, dim=1) >= 0).all(1).double()


_ORDER_NAMES = {"morf": "MoRF", "lerf": "LeRF"}
_ARGS = """

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (one draw per image, kept for the whole curve).
        step: pixels (``unit="pixels"``) or percent of the pixels (``"percent"``) per step.
        unit: ``"pixels"`` or ``"percent"``.
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        features: what one step removes: ``"pixels"``, ``"patch:8"``, ``"slic"``...
            (:mod:`concilium.metrics.features`; superpixels need ``unit="percent"``).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).
"""


def curve_metric(
    name: str,
    *,
    mode: Mode,
    order: Order,
    score: Score,
    higher_is_better: bool,
    summary: str,
    include_start: bool = True,
    step: float = 5,
    unit: Unit = "percent",
    baseline: str = "black",
    abs: bool = False,
) -> tuple[Callable[..., Tensor], Callable[..., tuple[Tensor, Tensor]]]:
    """One row of the table: build the metric ``name`` and its curve ``<name>_curve``, and
    register the metric (category faithfulness).

    Args:
        name: the metric's name (and ``__name__``).
        mode, order, include_start: the curve (:func:`perturbation_curve`).
        score: how the curve becomes one value per image.
        higher_is_better: score direction.
        summary: the first paragraph of the metric's docstring.
        step, unit, baseline, abs: the defaults of the metric's parameters.

    Returns:
        ``(metric, curve)``: ``metric(maps, ...) -> (N,)`` (NaN for a constant map) and
        ``curve(maps, ...) -> (fractions (S,), scores (N, S))`` with the same parameters.
    """
    step_default, unit_default, baseline_default, abs_default = step, unit, baseline, abs

    def curve(
        maps: Tensor,
        *,
        images: Tensor,
        labels: Tensor,
        model: nn.Module,
        generator: torch.Generator | None = None,
        step: float = step_default,
        unit: Unit = unit_default,
        baseline: Baseline = baseline_default,
        softmax: bool = True,
        abs: bool = abs_default,
        normalise: bool = True,
        features: str = "pixels",
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        return perturbation_curve(
            maps,
            images=images,
            labels=labels,
            model=model,
            mode=mode,
            order=order,
            step=step,
            unit=unit,
            baseline=baseline,
            softmax=softmax,
            include_start=include_start,
            abs=abs,
            normalise=normalise,
            features=features,
            batch_size=batch_size,
            generator=generator,
        )

    def metric(
        maps: Tensor,
        *,
        images: Tensor,
        labels: Tensor,
        model: nn.Module,
        generator: torch.Generator | None = None,
        step: float = step_default,
        unit: Unit = unit_default,
        baseline: Baseline = baseline_default,
        softmax: bool = True,
        abs: bool = abs_default,
        normalise: bool = True,
        features: str = "pixels",
        batch_size: int | None = None,
    ) -> Tensor:
        fractions, scores = curve(
            maps,
            images=images,
            labels=labels,
            model=model,
            generator=generator,
            step=step,
            unit=unit,
            baseline=baseline,
            softmax=softmax,
            abs=abs,
            normalise=normalise,
            features=features,
            batch_size=batch_size,
        )
        values = score(fractions, scores)
        ordered_by = prepare_maps(maps, abs=abs, normalise=False).flatten(1)
        constant = constant_rows(ordered_by).to(values.device)
        return nan_where(values, constant, name, "their map is constant")

    def passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
        feats = parse_features(params["features"])
        if feats.fixed:
            total = feats.count_bound(size)
            steps = step_counts(total, step=params["step"], unit=params["unit"]).numel()
        else:
            steps = math.ceil(100 / params["step"])
        return steps + int(include_start)

    metric.__name__ = metric.__qualname__ = name
    curve.__name__ = curve.__qualname__ = f"{name}_curve"
    metric.__doc__ = (
        summary
        + _ARGS
        + "\n    Returns:\n        ``(N,)``; NaN for a constant map. "
        + f"The curve: :func:`{name}_curve`.\n"
    )
    curve.__doc__ = (
        f"The {mode} curve behind :func:`{name}` ({_ORDER_NAMES[order]} order"
        f"{', with' if include_start else ', without'} the unperturbed start point)."
        + _ARGS
        + "\n    Returns:\n        ``(fractions (S,), scores (N, S))``: the fraction of pixels "
        "changed at each point and the model's score for ``labels`` there.\n"
    )
    register_metric(
        category="faithfulness",
        higher_is_better=higher_is_better,
        needs_model=True,
        passes=passes,
        curve=curve,
    )(metric)
    return metric, curve


deletion, deletion_curve = curve_metric(
    "deletion",
    mode="deletion",
    order="morf",
    score=area,
    higher_is_better=False,
    summary="""Area under the deletion curve, MoRF order: remove the most relevant pixels first
    (replaced by the baseline); x axis = fraction of pixels removed (0 to 1). Lower is better.""",
)
deletion_lerf, deletion_lerf_curve = curve_metric(
    "deletion_lerf",
    mode="deletion",
    order="lerf",
    score=area,
    higher_is_better=True,
    summary="""Area under the deletion curve, LeRF order: remove the least relevant pixels first;
    x axis = fraction of pixels removed (0 to 1). Higher is better.""",
)
insertion, insertion_curve = curve_metric(
    "insertion",
    mode="insertion",
    order="morf",
    score=area,
    higher_is_better=True,
    baseline="blur",
    summary="""Area under the insertion curve, MoRF order: start from the baseline (a blurred
    image) and put the most relevant pixels back first; x axis = fraction of pixels restored
    (0 to 1). Higher is better.""",
)
insertion_lerf, insertion_lerf_curve = curve_metric(
    "insertion_lerf",
    mode="insertion",
    order="lerf",
    score=area,
    higher_is_better=False,
    baseline="blur",
    summary="""Area under the insertion curve, LeRF order: start from the baseline (a blurred
    image) and put the least relevant pixels back first. Lower is better.""",
)
aopc, aopc_curve = curve_metric(
    "aopc",
    mode="deletion",
    order="morf",
    score=mean_drop,
    higher_is_better=True,
    summary="""AOPC (Samek et al. 2017), MoRF order: the mean over the points of the deletion curve
    of ``f(x) - f(x_k)``. Higher is better.""",
)
aopc_lerf, aopc_lerf_curve = curve_metric(
    "aopc_lerf",
    mode="deletion",
    order="lerf",
    score=mean_drop,
    higher_is_better=False,
    summary="""AOPC, LeRF order: the mean over the points of the LeRF deletion curve of
    ``f(x) - f(x_k)``. Lower is better.""",
)
pixel_flipping, pixel_flipping_curve = curve_metric(
    "pixel_flipping",
    mode="deletion",
    order="morf",
    score=area_per_step,
    higher_is_better=False,
    include_start=False,
    step=1,
    unit="pixels",
    summary="""Pixel flipping (Bach et al. 2015) as Quantus's ``return_auc_per_sample=True``: the
    trapezoidal area (``dx = 1`` per step) of the MoRF deletion curve without its unperturbed
    point. Lower is better. ``step=1, unit="pixels"`` flips one pixel per step (Quantus default;
    a Quantus "feature" is one channel value, so Quantus ``features_in_step = C * step``).
    Defaults as Quantus: ``baseline="black"``, ``softmax=True``, ``abs=False``.""",
)
monotonicity, monotonicity_curve = curve_metric(
    "monotonicity",
    mode="insertion",
    order="lerf",
    score=never_decreases,
    higher_is_better=True,
    include_start=False,
    step=1,
    unit="pixels",
    abs=True,
    summary="""Monotonicity (Arya et al. 2019): start from the baseline, put the image's pixels
    back in increasing order of relevance, and score 1 if the output never decreases, else 0.

    Quantus 0.6.0 replaces baseline pixels by the baseline (it never puts the image back), so its
    output is constant and its score is always True; here the image's pixels are inserted.
    Defaults as Quantus: one pixel per step, ``baseline="black"``, ``softmax=True``,
    ``abs=True``.""",
)
