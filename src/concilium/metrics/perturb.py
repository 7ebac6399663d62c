"""Batched perturbation machinery shared by the model-bound metrics.

Every perturbed copy is built on the model's device, inside the chunk that is evaluated, from the
original images, a baseline and a boolean "replace" mask; chunks hold ``batch_size`` copies, so
memory is bounded by ``batch_size`` images whatever the number of steps, and there is no numpy
round trip per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from concilium._checks import check_images, check_labels, check_maps
from concilium.explain.baselines import BASELINES, is_stochastic, parse_baseline, resolve_baselines
from concilium.metrics._streams import draw_rows, seeded, tie_break_keys
from concilium.metrics.shared import ReplaceFn, active

BaselineName = Literal["zero", "black", "blur", "uniform", "image_mean"]
Baseline = BaselineName | str | float | Tensor | Callable[[Tensor, Tensor], Tensor]
#: The baselines usable by name alone (the spec strings of :data:`BASELINES` that need no tensor).
BASELINE_NAMES: tuple[str, ...] = tuple(n for n in BASELINES.names() if n not in ("mean", "tensor"))

Unit = Literal["pixels", "percent"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (``default`` for a
    model without one): the dtype images are cast to before they reach it."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return default


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random draws from ``generator`` are made on (CPU without a generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def make_baseline(
    images: Tensor,
    baseline: Baseline,
    *,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The replacement values ``(N, C, H, W)`` for ``images``.

    String baselines are those of :data:`concilium.explain.baselines.BASELINES`, one vocabulary
    for both layers: ``"zero"`` (0), ``"black"`` (each image's minimum, as Quantus's
    ``black``), ``"image_mean"`` (each image's mean over all values, Quantus's ``"mean"``),
    ``"uniform"`` (U(0, 1) noise per value, a fresh draw from ``generator`` at each call),
    ``"blur"``, and their spec strings ``"name:key=value"`` (e.g. ``"blur:sigma=2"``).

    Args:
        images: ``(N, C, H, W)``.
        baseline: a spec string (above), a
            :class:`~concilium.explain.baselines.BaselineProvider` (``provider(images,
            labels)``, e.g. a GANMEX generator), a number (constant), or a tensor
            ``(C, H, W)``/``(N, C, H, W)``.
        labels: ``(N,)`` targets, passed to providers.
        generator: random source of a stochastic baseline (``"uniform"``).

    Raises:
        ValueError: for an unknown name, a tensor of the wrong shape, or a stochastic baseline
            without ``generator`` (the global RNG is never used).
        TypeError: for another type.
    """
    n = images.shape[0]
    if isinstance(baseline, Tensor):
        b = baseline.to(device=images.device, dtype=images.dtype)
        if b.shape == images.shape[1:]:
            return b.unsqueeze(0).expand_as(images)
        if b.shape == images.shape:
            return b
        raise ValueError(
            f"a tensor baseline must be (C, H, W) = {tuple(images.shape[1:])} or (N, C, H, W) = "
            f"{tuple(images.shape)}; got {tuple(b.shape)}"
        )
    if isinstance(baseline, bool) or not (
        isinstance(baseline, (str, int, float)) or callable(baseline)
    ):
        raise TypeError(
            f"baseline must be one of {BASELINE_NAMES}, a spec string, a provider, a number or a "
            f"tensor; got {type(baseline).__name__}"
        )
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if is_stochastic_baseline(baseline) and generator is None:
        raise ValueError(
            f"baseline {baseline!r} is random: pass generator=torch.Generator().manual_seed(0) "
            "(evaluate() passes a seeded one by default)"
        )
    if isinstance(baseline, str):
        name = baseline.strip().partition(":")[0]
        if name not in BASELINES:
            raise ValueError(
                f"unknown baseline {baseline!r}; valid: {', '.join(BASELINE_NAMES)}, their spec "
                "strings ('blur:sigma=2'), a provider, a number or a tensor"
            )
        baseline = parse_baseline(baseline, generator=generator)
    if labels is None:
        labels = torch.zeros(n, dtype=torch.long, device=images.device)
    return resolve_baselines(baseline, images, labels)


def is_stochastic_baseline(baseline: Baseline) -> bool:
    """Whether ``baseline`` is the spec string of a random baseline (``"uniform"``), which the
    metrics draw from each image's stream (:func:`row_baselines`; per copy or per image, as
    each metric documents). A provider object is called once."""
    return isinstance(baseline, str) and is_stochastic(baseline)


def check_batch_size(batch_size: int | None, device: torch.device | None = None) -> int:
    """Validate ``batch_size`` (copies per forward pass); ``None`` picks 64 on CPU (larger
    batches leave the caches and are slower per image there) and 512 on a GPU."""
    if batch_size is None:
        return 512 if device is not None and device.type != "cpu" else 64
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    return batch_size


def target_scores(
    model: nn.Module, images: Tensor, labels: Tensor, *, softmax: bool, batch_size: int
) -> Tensor:
    """The model's output for ``labels`` (softmax probability or logit), ``(M,)``, in chunks
    (through the open :func:`~concilium.metrics.shared.shared_passes` store, if any)."""
    store = active()
    if store is not None:
        logits = store.outputs(model, images, batch_size=batch_size)
        if softmax:
            logits = logits.softmax(dim=1)
        return logits.gather(1, labels[:, None]).squeeze(1).to(images.device)
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = model(images[start : start + batch_size])
            if softmax:
                logits = logits.softmax(dim=1)
            out.append(logits.gather(1, labels[start : start + batch_size, None]).squeeze(1))
    return torch.cat(out) if out else images.new_zeros(0)


def predicted_classes(model: nn.Module, images: Tensor, *, batch_size: int) -> Tensor:
    """``argmax`` of the model's logits, ``(M,)``, in chunks (through the open
    :func:`~concilium.metrics.shared.shared_passes` store, if any)."""
    store = active()
    if store is not None:
        return store.outputs(model, images, batch_size=batch_size).argmax(dim=1).to(images.device)
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(model(images[start : start + batch_size]).argmax(dim=1))
    return torch.cat(out)


def variant_scores(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    baselines: Tensor,
    replace: ReplaceFn,
    n_variants: int,
    *,
    softmax: bool,
    batch_size: int,
    baseline_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Target scores ``(N, V)`` of the copies ``x_iv = where(replace(i, v), b_i, x_i)``.

    The ``N * V`` copies are built chunk by chunk on the images' device, ``batch_size`` at a
    time, so that every forward pass is full whatever ``V``.

    Args:
        model: the classifier.
        images: ``(N, C, H, W)`` on the model's device.
        labels: ``(N,)`` target classes.
        baselines: ``(N, C, H, W)`` replacement values.
        replace: which pixels each copy replaces.
        n_variants: ``V``.
        softmax: score the softmax probability instead of the logit.
        batch_size: copies per forward pass.
        baseline_fn: optional ``(image_idx, variant_idx) -> (B, C, H, W)`` baselines drawn per
            copy (stochastic baselines); overrides ``baselines``.

    Inside a :func:`~concilium.metrics.shared.shared_passes` scope (and without
    ``baseline_fn``), each distinct copy is forwarded once for all the metrics of the scope.
    """
    store = active()
    if store is not None and baseline_fn is None:
        return store.variant_scores(
            model, images, labels, baselines, replace, n_variants,
            softmax=softmax, batch_size=batch_size,
        )
    n = images.shape[0]
    total = n * n_variants
    out = torch.empty(total, device=images.device, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total), device=images.device)
            i, v = flat // n_variants, flat % n_variants
            mask = replace(i, v).unsqueeze(1)
            base = baseline_fn(i, v) if baseline_fn is not None else baselines[i]
            x = torch.where(mask, base, images[i])
            logits = model(x)
            if softmax:
                logits = logits.softmax(dim=1)
            out[flat] = logits.gather(1, labels[i, None]).squeeze(1).float()
    return out.view(n, n_variants)


def pixel_order(maps: Tensor, *, descending: bool, streams: list[int]) -> Tensor:
    """The perturbation order of the pixels, ``(N, H*W)`` long (pixel indices, first perturbed
    first). Tied pixels come in a random order drawn from each image's ``"ties"`` stream
    (:func:`~concilium.metrics._streams.tie_break_keys`), never in raster order, so a tie does
    not favour the top of the image; without ties the order is the plain sort. The ascending
    order is the descending one reversed (ties included), so a LeRF sequence is exactly a MoRF
    sequence read backwards and the two share their perturbed copies
    (:mod:`concilium.metrics.shared`)."""
    flat = maps.flatten(1)
    perm = tie_break_keys(streams, flat.shape[1], flat.device)
    order = perm.gather(1, torch.sort(-flat.gather(1, perm), dim=1, stable=True).indices)
    return order if descending else order.flip(1)


def pixel_ranks(maps: Tensor, *, descending: bool, streams: list[int]) -> Tensor:
    """Position of every pixel in the perturbation order (:func:`pixel_order`), ``(N, H*W)``."""
    order = pixel_order(maps, descending=descending, streams=streams)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def row_baselines(
    images: Tensor, labels: Tensor, baseline: Baseline, seeds: list[int] | None
) -> Tensor:
    """Baselines ``(B, C, H, W)`` for the rows of ``images``; a stochastic baseline draws row
    ``r`` from a generator seeded with ``seeds[r]`` (its image's stream, keyed by the draw), so
    a draw never depends on the other rows. ``seeds`` may be ``None`` for a fixed baseline."""
    if not is_stochastic_baseline(baseline):
        return make_baseline(images, baseline, labels=labels)
    if seeds is None or len(seeds) != images.shape[0]:
        raise ValueError("a random baseline needs one seed per row")
    gen_device = images.device if images.device.type == "cuda" else torch.device("cpu")
    provider = parse_baseline(baseline, generator=seeded(0, gen_device))
    low, high = getattr(provider, "low", None), getattr(provider, "high", None)
    if low is not None and high is not None:  # uniform: one draw per row, no per-row checks
        noise = draw_rows(
            seeds, lambda g: torch.rand(images.shape[1:], generator=g, device=g.device),
            images.device,
        )
        return (low + (high - low) * noise).to(images.dtype)
    return torch.cat(
        [
            make_baseline(
                images[r : r + 1], baseline, labels=labels[r : r + 1],
                generator=seeded(seed, gen_device),
            )
            for r, seed in enumerate(seeds)
        ]
    )


def step_counts(n_pixels: int, *, step: float, unit: Unit) -> Tensor:
    """Cumulative number of perturbed pixels after each step, ``(S,)``, the last one ``H*W``.

    ``unit="pixels"``: ``step`` pixels per step (an int); ``unit="percent"``: ``step`` percent of
    the pixels per step (``round``-ed, at least one pixel).
    """
    if unit not in ("pixels", "percent"):
        raise ValueError(f"unit must be 'pixels' or 'percent'; got {unit!r}")
    if unit == "pixels":
        if int(step) != step or step < 1:
            raise ValueError(f"step in pixels must be a positive integer; got {step}")
        per = int(step)
    else:
        if not 0 < step <= 100:
            raise ValueError(f"step in percent must be in (0, 100]; got {step}")
        per = max(1, round(n_pixels * step / 100))
    if per > n_pixels:
        raise ValueError(f"step ({per} pixels) is larger than the image ({n_pixels} pixels)")
    n_steps = math.ceil(n_pixels / per)
    return torch.clamp(torch.arange(1, n_steps + 1) * per, max=n_pixels)


def check_model_inputs(
    metric: str, maps: Tensor, images: Tensor | None, labels: Tensor | None, model: nn.Module | None
) -> Tensor:
    """Check the inputs of a model-bound metric: present, well-shaped, and the images matching
    the maps in N, H and W. Returns the labels as ``long``.

    Args:
        metric: how the messages name the metric (``"deletion"``, ``"metric 'deletion'"``).
        maps, images, labels, model: the inputs.

    Raises:
        ValueError: when an input is missing or its shape does not match the maps.
        TypeError: when ``model`` is not an ``nn.Module``.
    """
    for name, value in (("images", images), ("labels", labels), ("model", model)):
        if value is None:
            raise ValueError(f"{metric} needs {name}; pass {name}=... to evaluate()")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    check_maps(maps)
    check_images(images)
    if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} must match maps {tuple(maps.shape)} in N, H and W "
            "(explain the same images you evaluate)"
        )
    return check_labels(labels, images.shape[0])


def model_inputs(
    metric: str, maps: Tensor, images: Tensor | None, labels: Tensor | None, model: nn.Module | None
) -> tuple[Tensor, Tensor, Tensor, torch.device]:
    """Check the inputs of a model-bound metric (:func:`check_model_inputs`) and move maps,
    images and labels to the model's device, the images in the model's dtype (float64 images
    reach a float32 model as float32). Returns ``(maps, images, labels, device)``."""
    labels = check_model_inputs(metric, maps, images, labels, model)
    device = model_device(model)
    images = images.to(device=device, dtype=model_dtype(model, images.dtype))
    return maps.to(device), images, labels.to(device), device
