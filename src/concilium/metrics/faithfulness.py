"""Faithfulness metrics: does removing what the map calls important change the model's output?

Every function takes ``maps (N, H, W)``, ``images (N, C, H, W)``, ``labels (N,)`` and ``model``
and perturbs whole pixels (all channels of a pixel at once). Perturbed copies are built and
evaluated in chunks of ``batch_size`` on the model's device (:mod:`concilium.metrics.perturb`).
ROAD lives in :mod:`concilium.metrics.road`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from concilium.metrics._common import constant_rows, nan_where, pearson, prepare_maps, spearman
from concilium.metrics.perturb import (
    Baseline,
    Unit,
    check_batch_size,
    is_stochastic_baseline,
    make_baseline,
    model_inputs,
    pixel_ranks,
    step_counts,
    target_scores,
    variant_scores,
)
from concilium.metrics.registry import register_metric

Order = Literal["morf", "lerf"]


def _constant_nan(metric: str, a: Tensor, scores: Tensor) -> Tensor:
    return nan_where(scores, constant_rows(a.flatten(1)), metric, "their map is constant")


def _draw_baseline_fn(
    images: Tensor, labels: Tensor, baseline: Baseline, generator: torch.Generator | None
):
    """Per-copy baselines for a stochastic baseline (a fresh draw for every copy), else None."""
    if not is_stochastic_baseline(baseline):
        return None

    def draw(i: Tensor, v: Tensor) -> Tensor:
        return make_baseline(images[i], baseline, labels=labels[i], generator=generator)

    return draw


@register_metric(
    "faithfulness_correlation",
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    stochastic=True,
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
        generator: random source of the subsets (and of a ``"uniform"`` baseline).
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
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.stack(
        [
            torch.rand(nr_runs, p, generator=generator, device=gen_device)
            .topk(subset_size, 1)
            .indices
            for _ in range(n)
        ]
    ).to(device)  # (N, R, subset)
    h, w = images.shape[-2:]

    def replace(i: Tensor, v: Tensor) -> Tensor:
        m = torch.zeros(i.shape[0], p, dtype=torch.bool, device=device)
        return m.scatter_(1, idx[i, v], True).view(-1, h, w)

    base = make_baseline(images, baseline, labels=labels, generator=generator)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = variant_scores(
        model,
        images,
        labels,
        base,
        replace,
        nr_runs,
        softmax=softmax,
        batch_size=batch_size,
        baseline_fn=_draw_baseline_fn(images, labels, baseline, generator),
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


def perturbation_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    mode: Literal["deletion", "insertion"] = "deletion",
    order: Order = "morf",
    step: float = 5,
    unit: Unit = "percent",
    baseline: Baseline = "black",
    softmax: bool = True,
    include_start: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The deletion or insertion curve of each image.

    Deletion replaces the pixels by the baseline in the given order (``"morf"``: most relevant
    first; ``"lerf"``: least relevant first); insertion starts from the baseline and puts the
    image's pixels back in that order. Ties are broken by pixel index (stable sort).

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
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).
        generator: random source of a ``"uniform"`` baseline (one draw per image).

    Returns:
        ``(fractions (S,), scores (N, S))``: the fraction of pixels changed at each point and the
        model's score for ``labels`` there.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf'; got {order!r}")
    maps, images, labels, device = model_inputs(mode, maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    h, w = a.shape[-2:]
    p = h * w
    counts = step_counts(p, step=step, unit=unit)
    if include_start:
        counts = torch.cat([torch.zeros(1, dtype=counts.dtype), counts])
    counts = counts.to(device)
    ranks = pixel_ranks(a, descending=order == "morf")
    base = make_baseline(images, baseline, labels=labels, generator=generator)

    def replace(i: Tensor, v: Tensor) -> Tensor:
        changed = ranks[i] < counts[v].unsqueeze(1)
        return (changed if mode == "deletion" else ~changed).view(-1, h, w)

    scores = variant_scores(
        model, images, labels, base, replace, counts.numel(), softmax=softmax, batch_size=batch_size
    )
    return counts.double().cpu() / p, scores


def _area(fractions: Tensor, scores: Tensor) -> Tensor:
    return torch.trapezoid(scores.double(), fractions.to(scores.device), dim=1)


def _curve_metric(
    name: str,
    maps: Tensor,
    *,
    mode: Literal["deletion", "insertion"],
    order: Order,
    aggregate: Literal["auc", "aopc"],
    **kwargs,
) -> Tensor:
    fractions, scores = perturbation_curve(maps, mode=mode, order=order, **kwargs)
    if aggregate == "auc":
        out = _area(fractions, scores)
    elif mode == "deletion":
        out = (scores[:, :1] - scores).double().mean(1)
    else:
        out = (scores - scores[:, :1]).double().mean(1)
    return _constant_nan(name, maps, out)


def _register_curve_metric(name: str, *, mode: str, order: str, aggregate: str, hib: bool) -> None:
    baseline_default = "blur" if mode == "insertion" else "black"

    def metric(
        maps: Tensor,
        *,
        images: Tensor,
        labels: Tensor,
        model: nn.Module,
        generator: torch.Generator | None = None,
        step: float = 5,
        unit: Unit = "percent",
        baseline: Baseline = baseline_default,
        softmax: bool = True,
        abs: bool = False,
        normalise: bool = True,
        batch_size: int | None = None,
    ) -> Tensor:
        return _curve_metric(
            name,
            maps,
            images=images,
            labels=labels,
            model=model,
            mode=mode,
            order=order,
            aggregate=aggregate,
            step=step,
            unit=unit,
            baseline=baseline,
            softmax=softmax,
            abs=abs,
            normalise=normalise,
            batch_size=batch_size,
            generator=generator,
            include_start=True,
        )

    what = "area under" if aggregate == "auc" else "AOPC (mean drop from the start over) "
    metric.__name__ = name
    metric.__doc__ = (
        f"{what} the {mode} curve, {order.upper()} order, x axis = fraction of pixels changed "
        f"(0 to 1). {'Higher' if hib else 'Lower'} is better. Curve: "
        "``perturbation_curve(mode=..., order=...)``.\n\n"
        "Args: step/unit (default 5 percent), baseline, softmax (default True), abs, normalise,\n"
        "batch_size, generator (for a ``uniform`` baseline).\n\nReturns: ``(N,)``; NaN for a "
        "constant map."
    )
    register_metric(
        name,
        category="faithfulness",
        higher_is_better=hib,
        needs_model=True,
        curve=perturbation_curve,
    )(metric)
    globals()[name] = metric


for _name, _mode, _order, _agg, _hib in (
    ("deletion", "deletion", "morf", "auc", False),
    ("deletion_lerf", "deletion", "lerf", "auc", True),
    ("insertion", "insertion", "morf", "auc", True),
    ("insertion_lerf", "insertion", "lerf", "auc", False),
    ("aopc", "deletion", "morf", "aopc", True),
    ("aopc_lerf", "deletion", "lerf", "aopc", False),
):
    _register_curve_metric(_name, mode=_mode, order=_order, aggregate=_agg, hib=_hib)


def pixel_flipping_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    step: float = 1,
    unit: Unit = "pixels",
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Quantus's PixelFlipping curve ``(N, S)``: the score after each MoRF deletion step (no
    unperturbed point). ``step=1, unit="pixels"`` flips one pixel per step (Quantus default; a
    Quantus "feature" is one channel value, so Quantus ``features_in_step = C * step``)."""
    return perturbation_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        mode="deletion",
        order="morf",
        step=step,
        unit=unit,
        baseline=baseline,
        softmax=softmax,
        include_start=False,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        generator=generator,
    )[1]


@register_metric(
    "pixel_flipping",
    category="faithfulness",
    higher_is_better=False,
    needs_model=True,
    curve=pixel_flipping_curve,
)
def pixel_flipping(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    step: float = 1,
    unit: Unit = "pixels",
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Pixel flipping (Bach et al. 2015) as Quantus's ``return_auc_per_sample=True``: the
    trapezoidal area (``dx = 1`` per step) of :func:`pixel_flipping_curve`. Lower is better.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline.
        step: pixels (or percent) per step (Quantus default one feature).
        unit: ``"pixels"`` or ``"percent"``.
        baseline: replacement values (Quantus default ``"black"``).
        softmax: score probabilities (Quantus default True).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN for a constant map.
    """
    curve = pixel_flipping_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        step=step,
        unit=unit,
        baseline=baseline,
        softmax=softmax,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        generator=generator,
    )
    return _constant_nan("pixel_flipping", maps, torch.trapezoid(curve.double(), dim=1))


@register_metric("monotonicity", category="faithfulness", higher_is_better=True, needs_model=True)
def monotonicity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    step: float = 1,
    unit: Unit = "pixels",
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Monotonicity (Arya et al. 2019): start from the baseline, put the image's pixels back in
    increasing order of relevance, and score 1 if the output never decreases, else 0.

    Quantus 0.6.0 replaces baseline pixels by the baseline (it never puts the image back), so its
    output is constant and its score is always True; here the image's pixels are inserted.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline.
        step: pixels (or percent) per step (Quantus default one feature).
        unit: ``"pixels"`` or ``"percent"``.
        baseline: the starting image (Quantus default ``"black"``).
        softmax: score probabilities (Quantus default True).
        abs: take ``|maps|`` first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in {0, 1}; NaN for a constant map.
    """
    _, curve = perturbation_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        mode="insertion",
        order="lerf",
        step=step,
        unit=unit,
        baseline=baseline,
        softmax=softmax,
        include_start=False,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        generator=generator,
    )
    score = (torch.diff(curve, dim=1) >= 0).all(1).double()
    return _constant_nan("monotonicity", maps, score)


@register_metric(
    "monotonicity_correlation",
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    stochastic=True,
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
        generator: random source of a ``"uniform"`` baseline.
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
    ranks = pixel_ranks(a, descending=False)
    draws = nr_samples if is_stochastic_baseline(baseline) else 1
    n_steps = counts.numel()

    def replace(i: Tensor, v: Tensor) -> Tensor:
        s = v // draws
        r = ranks[i]
        return ((r >= starts[s, None]) & (r < counts[s, None])).view(-1, h, w)

    base = make_baseline(images, baseline, labels=labels, generator=generator)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = variant_scores(
        model,
        images,
        labels,
        base,
        replace,
        n_steps * draws,
        softmax=softmax,
        batch_size=batch_size,
        baseline_fn=_draw_baseline_fn(images, labels, baseline, generator),
    ).view(-1, n_steps, draws)
    variances = ((ys.double() - y0.double()[:, None, None]) ** 2).mean(2)
    sorted_a = torch.sort(a.flatten(1), dim=1, stable=True).values.double()
    csum = torch.cat([sorted_a.new_zeros(a.shape[0], 1), sorted_a.cumsum(1)], dim=1)
    atts = csum[:, counts] - csum[:, starts]
    score = spearman(atts, variances)
    return _constant_nan("monotonicity_correlation", maps, score)


@register_metric("infidelity", category="faithfulness", higher_is_better=False, needs_model=True)
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
    normalise: bool = True,
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
        generator: random source of a ``"uniform"`` baseline.
        perturb_patch_sizes: patch sides in pixels (Quantus default ``[4]``).
        n_perturb_samples: repetitions (Quantus default 10; only random baselines differ).
        baseline: replacement values (Quantus default ``"black"``).
        softmax: score probabilities (Quantus default False).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (Quantus default True, but per image).
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
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    per_size = []
    for size in perturb_patch_sizes:
        size = int(size)
        if size > min(h, w):
            raise ValueError(f"patch size {size} is larger than the image {h}x{w}")
        rows = (torch.arange(h, device=device) + (-h % size) // 2) // size
        cols = (torch.arange(w, device=device) + (-w % size) // 2) // size
        block = rows[:, None] * int(cols.max() + 1) + cols[None, :]  # raster-order block id
        n_blocks = int(block.max()) + 1
        losses = []
        for _ in range(repeats):
            base = make_baseline(images, baseline, labels=labels, generator=generator)

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


@register_metric("sufficiency", category="faithfulness", higher_is_better=False, needs_model=True)
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
        generator: random source of a ``"uniform"`` baseline.
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
    ranks = pixel_ranks(a, descending=True)

    def replace(i: Tensor, v: Tensor) -> Tensor:
        return (ranks[i] >= k).view(-1, h, w)

    base = make_baseline(images, baseline, labels=labels, generator=generator)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = variant_scores(
        model, images, labels, base, replace, 1, softmax=softmax, batch_size=batch_size
    )
    return _constant_nan("sufficiency", maps, (y0 - ys[:, 0]).double())
