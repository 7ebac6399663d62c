"""One-shot faithfulness metrics: does removing what the map calls important change the model's
output? Each perturbs the image in its own way (random subsets, groups, patches, a kept top
fraction) rather than along a curve.

Every function takes ``maps (N, H, W)``, ``images (N, C, H, W)``, ``labels (N,)`` and ``model``
and perturbs whole pixels (all channels of a pixel at once). Perturbed copies are built and
evaluated in chunks of ``batch_size`` on the model's device (:mod:`concilium.metrics.perturb`).
The curve metrics (deletion, insertion, AOPC, pixel flipping, monotonicity) live in
:mod:`concilium.metrics.curves`, ROAD in :mod:`concilium.metrics.imputation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, pearson, prepare_maps, spearman
from concilium.metrics._streams import draw_rows, image_streams
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
from concilium.metrics.registry import register_metric


def _constant_nan(metric: str, a: Tensor, scores: Tensor) -> Tensor:
    constant = constant_rows(a.flatten(1)).to(scores.device)
    return nan_where(scores, constant, metric, "their map is constant")


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
    batch_size: int | None = None,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020): Pearson correlation, over ``nr_runs`` random
    subsets of ``subset_size`` pixels, between the map's sum over the subset and the output drop
    when the subset is set to the baseline.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: its subsets and a ``"uniform"`` baseline (a
            fresh draw per subset).
        nr_runs: number of random subsets (Quantus default 100).
        subset_size: pixels per subset (Quantus default 224; Quantus counts channel values).
        baseline: replacement values (Quantus default ``"black"``, the image's minimum).
        softmax: score probabilities instead of logits (Quantus default False).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the score).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in ``[-1, 1]``; NaN for a constant map or when no run changes the output.
    """
    maps, images, labels, device = model_inputs(
        "faithfulness_correlation", maps, images, labels, model
    )
    batch_size = check_batch_size(batch_size, device)
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1)
    n, p = a.shape
    if not 1 <= subset_size <= p:
        raise ValueError(f"subset_size must be in [1, H*W = {p}]; got {subset_size}")
    if nr_runs < 2:
        raise ValueError(f"nr_runs must be >= 2 for a correlation; got {nr_runs}")
    streams = image_streams(generator, images)
    idx = draw_rows(
        [derive_seed(s, "subsets") for s in streams],
        lambda g: torch.rand(nr_runs, p, generator=g, device=g.device).topk(subset_size, 1).indices,
        device,
    )  # (N, R, subset)
    h, w = images.shape[-2:]

    def replace(i: Tensor, v: Tensor) -> Tensor:
        m = torch.zeros(i.shape[0], p, dtype=torch.bool, device=device)
        return m.scatter_(1, idx[i, v], True).view(-1, h, w)

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
    att = torch.gather(a.unsqueeze(1).expand(n, nr_runs, p), 2, idx).double().sum(-1)
    score = pearson(att, y0.unsqueeze(1) - ys)
    score = nan_where(
        score,
        torch.isnan(score) & ~constant_rows(a),
        "faithfulness_correlation",
        "the output or the subset sums did not vary over the runs",
    )
    return _constant_nan("faithfulness_correlation", a, score)


def _monotonicity_correlation_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    steps = step_counts(size[0] * size[1], step=params["step"], unit=params["unit"]).numel()
    draws = int(params["nr_samples"]) if is_stochastic_baseline(params["baseline"]) else 1
    return 1 + steps * draws


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
    batch_size: int | None = None,
) -> Tensor:
    """Monotonicity correlation (Nguyen and Martinez 2020): Spearman correlation, over the steps
    of pixels taken in increasing relevance, between the group's relevance and the mean squared
    change of the output when only that group is replaced by the baseline (``nr_samples`` draws).

    Quantus also multiplies the variances by ``1 / f(x)^2``, a per-image constant that does not
    change a rank correlation, so it is omitted. With a deterministic baseline the draws are all
    equal and only one is evaluated.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (a fresh draw per step and sample).
        nr_samples: draws per step (Quantus default 100).
        step: pixels (or percent) per step (Quantus default one feature).
        unit: ``"pixels"`` or ``"percent"``.
        baseline: replacement values (Quantus default ``"uniform"``; here a fresh U(0, 1) value
            per channel value and draw, Quantus draws one value per image and draw).
        softmax: score probabilities (Quantus default True).
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (no effect on the score).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in ``[-1, 1]``; NaN for a constant map.
    """
    maps, images, labels, device = model_inputs(
        "monotonicity_correlation", maps, images, labels, model
    )
    batch_size = check_batch_size(batch_size, device)
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1; got {nr_samples}")
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    p = h * w
    counts = step_counts(p, step=step, unit=unit).to(device)
    starts = torch.cat([counts.new_zeros(1), counts[:-1]])
    streams = image_streams(generator, images)
    ranks = pixel_ranks(a, descending=False, streams=streams)
    draws = nr_samples if is_stochastic_baseline(baseline) else 1
    n_steps = counts.numel()

    def replace(i: Tensor, v: Tensor) -> Tensor:
        s = v // draws
        r = ranks[i]
        return ((r >= starts[s, None]) & (r < counts[s, None])).view(-1, h, w)

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
    sorted_a = torch.sort(a.flatten(1), dim=1, stable=True).values.double()
    csum = torch.cat([sorted_a.new_zeros(a.shape[0], 1), sorted_a.cumsum(1)], dim=1)
    atts = csum[:, counts] - csum[:, starts]
    score = spearman(atts, variances)
    return _constant_nan("monotonicity_correlation", a, score)


def _patch_blocks(h: int, w: int, size: int, device: torch.device | None = None) -> Tensor:
    """``(H, W)``: the raster-order id of the ``size`` x ``size`` patch of each pixel, the grid
    centred like Quantus's padding (border patches clipped)."""
    rows = (torch.arange(h, device=device) + (-h % size) // 2) // size
    cols = (torch.arange(w, device=device) + (-w % size) // 2) // size
    return rows[:, None] * int(cols.max() + 1) + cols[None, :]


def _infidelity_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    repeats = int(params["n_perturb_samples"]) if is_stochastic_baseline(params["baseline"]) else 1
    blocks = sum(int(_patch_blocks(*size, int(s)).max()) + 1 for s in params["perturb_patch_sizes"])
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
    padding and the border patches are clipped (Quantus fails there).

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
        block = _patch_blocks(h, w, size, device)  # raster-order block id
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
    batch_size: int | None = None,
) -> Tensor:
    """Sufficiency (DeYoung et al. 2020, ERASER), per image: ``f(x) - f(x_keep)`` where
    ``x_keep`` keeps only the ``keep`` fraction of most relevant pixels and sets the rest to the
    baseline. Lower is better (the kept pixels suffice).

    Quantus's ``Sufficiency`` (Dasgupta et al. 2022) instead scores an image against the other
    images of its batch, so one image's score depends on the batch; that is not reproduced.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and a ``"uniform"``
            baseline (one draw per image).
        keep: fraction of pixels kept, in ``(0, 1)`` (default 0.2).
        baseline: replacement values (default ``"black"``).
        softmax: score probabilities (default True).
        abs: rank by ``|maps|`` (default True).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map.
    """
    if not 0 < keep < 1:
        raise ValueError(f"keep must be in (0, 1); got {keep}")
    maps, images, labels, device = model_inputs("sufficiency", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    k = max(1, round(keep * h * w))
    streams = image_streams(generator, images)
    ranks = pixel_ranks(a, descending=True, streams=streams)

    def replace(i: Tensor, v: Tensor) -> Tensor:
        return (ranks[i] >= k).view(-1, h, w)

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
