"""One-shot faithfulness metrics: does removing what the map calls important change the model's
output? Each perturbs the image in its own way (random subsets, groups, patches, a kept top
fraction) rather than along a curve.

Every function takes ``maps (N, H, W)``, ``images (N, C, H, W)``, ``labels (N,)`` and ``model``
and perturbs whole pixels (all channels of a pixel at once), or with ``features=`` whole
patches or superpixels (:mod:`concilium.metrics.features`; ``infidelity`` has its patch sizes
instead). Perturbed copies are built and evaluated in chunks of ``batch_size`` on the model's
device (:mod:`concilium.metrics.perturb`).
The curve metrics (deletion, insertion, AOPC, pixel flipping, monotonicity) live in
:mod:`concilium.metrics.curves`, ROAD in :mod:`concilium.metrics.imputation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, pearson, prepare_maps, spearman
from concilium.metrics._streams import draw_rows, image_streams
from concilium.metrics.curves import feature_ranks, feature_step_counts
from concilium.metrics.features import (
    Features,
    feature_labels,
    n_patches,
    parse_features,
    patch_grid,
)
from concilium.metrics.perturb import (
    Baseline,
    ReplaceFn,
    Unit,
    check_batch_size,
    is_stochastic_baseline,
    model_inputs,
    pixel_ranks,
    row_baselines,
    step_counts,
    target_scores,
    variant_scores,
)
from concilium.metrics.regions import feature_relevance
from concilium.metrics.registry import register_metric


def _constant_nan(metric: str, a: Tensor, scores: Tensor) -> Tensor:
    constant = constant_rows(a.flatten(1)).to(scores.device)
    return nan_where(scores, constant, metric, "their map is constant")


def _ranks(
    a: Tensor, images: Tensor, feats: Features, *, descending: bool, streams: list[int]
) -> tuple[Tensor, Tensor]:
    """``(ranks (N, H*W), F (N,))``: the position of every pixel's feature in the order of
    relevance (most relevant first when ``descending``; ties in each image's seeded order) and
    each image's number of features. ``"pixels"`` takes the pixel path itself, so its values
    and random draws are those of the metrics before they took ``features``."""
    if feats.kind == "pixels":
        n, h, w = a.shape
        n_features = torch.full((n,), h * w, dtype=torch.long, device=a.device)
        return pixel_ranks(a, descending=descending, streams=streams), n_features
    order = "morf" if descending else "lerf"
    return feature_ranks(a, images, feats, order=order, streams=streams)


def _scores_and_copies(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    replace: ReplaceFn,
    n_variants: int,
    *,
    baseline: Baseline,
    streams: list[int],
    softmax: bool,
    batch_size: int,
    draw_per_copy: bool,
) -> tuple[Tensor, Tensor]:
    """``(y0 (N,), ys (N, V))``: the model's score of each image and of its ``V`` copies with
    the ``replace`` pixels set to the baseline.

    A stochastic baseline is drawn from the image's stream: anew for every copy (key
    ``("baseline", v)``) with ``draw_per_copy``, else once per image (key ``"baseline"``).
    """
    per_copy = draw_per_copy and is_stochastic_baseline(baseline)
    base = (
        images
        if per_copy
        else row_baselines(images, labels, baseline, [derive_seed(s, "baseline") for s in streams])
    )
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    draw = None
    if per_copy:

        def draw(i: Tensor, v: Tensor) -> Tensor:
            seeds = [
                derive_seed(streams[ii], "baseline", vv)
                for ii, vv in zip(i.tolist(), v.tolist(), strict=True)
            ]
            return row_baselines(images[i], labels[i], baseline, seeds)

    ys = variant_scores(
        model,
        images,
        labels,
        base,
        replace,
        n_variants,
        softmax=softmax,
        batch_size=batch_size,
        baseline_fn=draw,
    )
    return y0, ys


def _faithfulness_correlation_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1 + int(params["nr_runs"])  # the image, then one copy per random subset


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    stochastic=True,
    passes=_faithfulness_correlation_passes,
)
def faithfulness_correlation(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    nr_runs: int = 100,
    subset_size: int = 224,
    baseline: Baseline = "black",
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020): Pearson correlation, over ``nr_runs`` random
    subsets of ``subset_size`` features (pixels by default), between the map's sum over the
    subset's pixels and the output drop when the subset is set to the baseline.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: its subsets and a ``"uniform"`` baseline (a
            fresh draw per subset).
        nr_runs: number of random subsets (Quantus default 100).
        subset_size: features per subset (Quantus default 224; Quantus counts channel values).
        baseline: replacement values (Quantus default ``"black"``, the image's minimum).
        softmax: score probabilities instead of logits (Quantus default False).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).
        features: what a subset is drawn from (:mod:`concilium.metrics.features`):
            ``"pixels"``, ``"patch:8"``, ``"slic"``...; each image's subsets are drawn from its
            own features, so ``subset_size`` must not exceed any image's number of superpixels.
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in ``[-1, 1]``; NaN for a constant map or when no run changes the output.

    Raises:
        ValueError: for ``nr_runs < 2``, or a ``subset_size`` outside ``[1, F]`` for an image
            with ``F`` features.
    """
    maps, images, labels, device = model_inputs(
        "faithfulness_correlation", maps, images, labels, model
    )
    batch_size = check_batch_size(batch_size, device)
    feats = parse_features(features)
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1)
    n = a.shape[0]
    h, w = images.shape[-2:]
    seg, n_features = feature_labels(feats, images)
    seg = seg.flatten(1)
    _check_subset_size(subset_size, n_features, feats)
    if nr_runs < 2:
        raise ValueError(f"nr_runs must be >= 2 for a correlation; got {nr_runs}")
    streams = image_streams(generator, images)

    def subsets(stream: int, f: int) -> Tensor:  # (R, subset) of the image's own F features
        def draw(g: torch.Generator) -> Tensor:
            return torch.rand(nr_runs, f, generator=g, device=g.device).topk(subset_size, 1).indices

        return draw_rows([derive_seed(stream, "subsets")], draw, device)[0]

    idx = torch.stack([subsets(s, f) for s, f in zip(streams, n_features.tolist(), strict=True)])
    f_max = int(n_features.max())

    def replace(i: Tensor, v: Tensor) -> Tensor:
        m = torch.zeros(i.shape[0], f_max, dtype=torch.bool, device=device)
        return m.scatter_(1, idx[i, v], True).gather(1, seg[i]).view(-1, h, w)

    y0, ys = _scores_and_copies(
        model,
        images,
        labels,
        replace,
        nr_runs,
        baseline=baseline,
        streams=streams,
        softmax=softmax,
        batch_size=batch_size,
        draw_per_copy=True,
    )
    relevance = feature_relevance(a.view(n, h, w), seg.view(n, h, w), f_max)  # (N, F) float64
    att = torch.gather(relevance.unsqueeze(1).expand(n, nr_runs, f_max), 2, idx).sum(-1)
    score = pearson(att, y0.unsqueeze(1) - ys)
    score = nan_where(
        score,
        torch.isnan(score) & ~constant_rows(a),
        "faithfulness_correlation",
        "the output or the subset sums did not vary over the runs",
    )
    return _constant_nan("faithfulness_correlation", a, score)


def _check_subset_size(subset_size: int, n_features: Tensor, feats: Features) -> None:
    """Raise unless ``1 <= subset_size <= F_i`` for every image's number of features ``F_i``."""
    fewest = int(n_features.min())
    if 1 <= subset_size <= fewest:
        return
    if feats.kind == "pixels":
        raise ValueError(f"subset_size must be in [1, H*W = {fewest}]; got {subset_size}")
    if feats.fixed or subset_size < 1:
        raise ValueError(
            f"subset_size must be in [1, {fewest}] (the fewest {feats.spec} features of an "
            f"image); "
            f"got {subset_size}"
        )
    image = int(torch.argmin(n_features))
    raise ValueError(
        f"subset_size {subset_size} is more than the {fewest} features ({feats.spec}) of image "
        f"{image}: a subset is drawn from each image's own superpixels; pass subset_size <= "
        f"{fewest} or ask for more segments"
    )


def _monotonicity_correlation_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    draws = int(params["nr_samples"]) if is_stochastic_baseline(params["baseline"]) else 1
    return 1 + _feature_steps(params, size) * draws


def _feature_steps(params: Mapping[str, Any], size: tuple[int, int]) -> int:
    """The number of steps over the features of an image of ``size`` (``step``, ``unit`` and
    ``features`` of ``params``): every image takes as many, superpixels included (their steps
    are fractions of each image's features)."""
    feats = parse_features(params["features"])
    if feats.fixed:
        total = feats.count_bound(size)
        return step_counts(total, step=params["step"], unit=params["unit"]).numel()
    return math.ceil(100 / params["step"])


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    stochastic=True,
    passes=_monotonicity_correlation_passes,
)
def monotonicity_correlation(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    nr_samples: int = 100,
    step: float = 1,
    unit: Unit = "pixels",
    baseline: Baseline = "uniform",
    softmax: bool = True,
    abs: bool = True,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """Monotonicity correlation (Nguyen and Martinez 2020): Spearman correlation, over the steps
    of features (pixels by default) taken in increasing relevance, between the group's relevance
    and the mean squared change of the output when only that group is replaced by the baseline
    (``nr_samples`` draws).

    Quantus also multiplies the variances by ``1 / f(x)^2``, a per-image constant that does not
    change a rank correlation, so it is omitted. With a deterministic baseline the draws are all
    equal and only one is evaluated.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (a fresh draw per step and sample).
        nr_samples: draws per step (Quantus default 100).
        step: features (or percent of them) per step (Quantus default one feature).
        unit: ``"pixels"`` (counts of features) or ``"percent"``.
        baseline: replacement values (Quantus default ``"uniform"``; here a fresh U(0, 1) value
            per channel value and draw, Quantus draws one value per image and draw).
        softmax: score probabilities (Quantus default True).
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (no effect on the score).
        features: what a step replaces (:mod:`concilium.metrics.features`): ``"pixels"``,
            ``"patch:8"``, ``"slic"``...; a feature's relevance is the sum of the map over it.
            Superpixels need ``unit="percent"`` (each image's steps are the same fractions of
            its own features).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in ``[-1, 1]``; NaN for a constant map, or when the output change
        or the step relevance is the same at every step.
    """
    maps, images, labels, device = model_inputs(
        "monotonicity_correlation", maps, images, labels, model
    )
    batch_size = check_batch_size(batch_size, device)
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1; got {nr_samples}")
    feats = parse_features(features)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    streams = image_streams(generator, images)
    ranks, n_features = _ranks(a, images, feats, descending=False, streams=streams)
    _, counts = feature_step_counts(n_features, step=step, unit=unit, fixed=feats.fixed)  # (N, S)
    starts = torch.cat([counts.new_zeros(counts.shape[0], 1), counts[:, :-1]], dim=1)
    draws = nr_samples if is_stochastic_baseline(baseline) else 1
    n_steps = counts.shape[1]

    def replace(i: Tensor, v: Tensor) -> Tensor:
        s = v // draws
        r = ranks[i]
        return ((r >= starts[i, s, None]) & (r < counts[i, s, None])).view(-1, h, w)

    y0, ys = _scores_and_copies(
        model,
        images,
        labels,
        replace,
        n_steps * draws,
        baseline=baseline,
        streams=streams,
        softmax=softmax,
        batch_size=batch_size,
        draw_per_copy=True,
    )
    ys = ys.view(-1, n_steps, draws)
    variances = ((ys.double() - y0.double()[:, None, None]) ** 2).mean(2)
    # the relevance of the features in their order (a pixel's rank is its feature's)
    by_rank = torch.zeros(a.shape[0], int(n_features.max()), dtype=torch.float64, device=device)
    by_rank.scatter_add_(1, ranks, a.flatten(1).double())
    csum = torch.cat([by_rank.new_zeros(a.shape[0], 1), by_rank.cumsum(1)], dim=1)
    atts = csum.gather(1, counts) - csum.gather(1, starts)
    score = spearman(atts, variances)
    score = nan_where(
        score,
        torch.isnan(score) & ~constant_rows(a.flatten(1)).to(score.device),
        "monotonicity_correlation",
        "the output change or the step relevance did not vary over the steps",
    )
    return _constant_nan("monotonicity_correlation", a, score)


def _infidelity_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    repeats = int(params["n_perturb_samples"]) if is_stochastic_baseline(params["baseline"]) else 1
    blocks = sum(n_patches(size, int(s)) for s in params["perturb_patch_sizes"])
    return 1 + repeats * blocks  # the image, then one copy per patch (and draw)


@register_metric(
    category="faithfulness",
    higher_is_better=False,
    needs_model=True,
    passes=_infidelity_passes,
)
def infidelity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    perturb_patch_sizes: tuple[int, ...] = (4,),
    n_perturb_samples: int = 10,
    baseline: Baseline = "black",
    softmax: bool = False,
    abs: bool = False,
    normalise: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Infidelity (Yeh et al. 2019) as Quantus 0.6.0 computes it: square patches are replaced by
    the baseline one after another (cumulatively, in raster order); after each, compare the
    output drop ``f(x) - f(x')`` with the map's prediction of it, ``sum(a * (x - x'))`` (summed
    over channels); score = mean squared difference, averaged over patch sizes (and over
    ``n_perturb_samples`` draws when the baseline is random).

    When ``H`` is not a multiple of the patch size, the patch grid is centred like Quantus's
    padding and the border patches are clipped (Quantus fails there). The patches are the
    features ``"patch:<size>"`` of the other perturbation metrics (the same grid); there is no
    ``features`` parameter, since the order is raster order, not relevance (docs/metrics.md).

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream, from which a ``"uniform"`` baseline is drawn
            once per patch size and repetition.
        perturb_patch_sizes: patch sides in pixels (Quantus default ``[4]``).
        n_perturb_samples: repetitions (Quantus default 10; only random baselines differ).
        baseline: replacement values (Quantus default ``"black"``).
        softmax: score probabilities (Quantus default False).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its own max ``|.|`` first (Quantus default False; the
            score is not scale-invariant, so this changes it).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better.
    """
    maps, images, labels, device = model_inputs("infidelity", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    if not perturb_patch_sizes or any(int(s) < 1 for s in perturb_patch_sizes):
        raise ValueError(f"perturb_patch_sizes must be positive ints; got {perturb_patch_sizes}")
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    n, c, h, w = images.shape
    repeats = n_perturb_samples if is_stochastic_baseline(baseline) else 1
    streams = image_streams(generator, images)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    per_size = []
    for size in perturb_patch_sizes:
        size = int(size)
        if size > min(h, w):
            raise ValueError(f"patch size {size} is larger than the image {h}x{w}")
        block = patch_grid(h, w, size, device)  # raster-order block id (Quantus's grid)
        n_blocks = int(block.max()) + 1
        losses = []
        for r in range(repeats):
            seeds = [derive_seed(st, "baseline", size, r) for st in streams]
            base = row_baselines(images, labels, baseline, seeds)

            def replace(i: Tensor, v: Tensor, block: Tensor = block) -> Tensor:
                return block.unsqueeze(0) <= v.view(-1, 1, 1)

            ys = variant_scores(
                model,
                images,
                labels,
                base,
                replace,
                n_blocks,
                softmax=softmax,
                batch_size=batch_size,
            )
            # sum(a * (x - x')) after v blocks = cumulative sum over blocks of sum(a * (x - b))
            contrib = (a.unsqueeze(1) * (images - base)).sum(1).double()  # (N, H, W)
            per_block = torch.zeros(n, n_blocks, dtype=torch.float64, device=device)
            per_block.index_add_(1, block.flatten(), contrib.flatten(1))
            a_sums = per_block.cumsum(1)
            deltas = y0.double()[:, None] - ys.double()
            losses.append(((deltas - a_sums) ** 2).mean(1))
        per_size.append(torch.stack(losses).mean(0))
    return torch.stack(per_size).mean(0)


def _sufficiency_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 2  # the image and the copy keeping its top pixels


@register_metric(
    category="faithfulness",
    higher_is_better=False,
    needs_model=True,
    passes=_sufficiency_passes,
)
def sufficiency(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    keep: float = 0.2,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = True,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """Sufficiency (DeYoung et al. 2020, ERASER), per image: ``f(x) - f(x_keep)`` where
    ``x_keep`` keeps only the ``keep`` fraction of most relevant features (pixels by default)
    and sets the rest to the baseline. Lower is better (the kept features suffice).

    Quantus's ``Sufficiency`` (Dasgupta et al. 2022) instead scores an image against the other
    images of its batch, so one image's score depends on the batch; that is not reproduced.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (one draw per image).
        keep: fraction of the features kept, in ``(0, 1)`` (default 0.2): the
            ``max(1, round(keep * F))`` most relevant of an image's ``F`` features.
        baseline: replacement values (default ``"black"``).
        softmax: score probabilities (default True).
        abs: rank by ``|maps|`` (default True).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        features: what is kept or replaced (:mod:`concilium.metrics.features`): ``"pixels"``,
            ``"patch:8"``, ``"slic"``...; a feature's relevance is the sum of the map over it.
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map.
    """
    if not 0 < keep < 1:
        raise ValueError(f"keep must be in (0, 1); got {keep}")
    maps, images, labels, device = model_inputs("sufficiency", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats = parse_features(features)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    streams = image_streams(generator, images)
    ranks, n_features = _ranks(a, images, feats, descending=True, streams=streams)
    k = torch.tensor([max(1, round(keep * f)) for f in n_features.tolist()], device=device)

    def replace(i: Tensor, v: Tensor) -> Tensor:
        return (ranks[i] >= k[i, None]).view(-1, h, w)

    y0, ys = _scores_and_copies(
        model,
        images,
        labels,
        replace,
        1,
        baseline=baseline,
        streams=streams,
        softmax=softmax,
        batch_size=batch_size,
        draw_per_copy=False,
    )
    return _constant_nan("sufficiency", a, (y0 - ys[:, 0]).double())
