"""The explanation engine: :func:`explain` one method, :func:`explain_many` several methods with
shared passes.

Everything is checked at the boundary before any long work: the method name and parameters, the
images, the target, the baseline and the GradCAM layer (:mod:`concilium.explain.prepare`). The
model runs in eval mode (its own mode is restored afterwards), without in-place activations, and
every hook added during the call, Captum's included, is removed even when an error interrupts it.

Stochastic methods are seeded per image (or per fixed group of images) from one draw of the
``generator``. Captum draws from torch's and NumPy's global generators, so each seeded call runs
inside :func:`seeded`, which restores those global states afterwards: an explanation never
changes the caller's random streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from concilium.explain._context import attribution_context
from concilium.explain.baselines import BaselineSpec, as_provider
from concilium.explain.batching import images_per_chunk
from concilium.explain.methods import METHODS, MethodSpec
from concilium.explain.params import MethodParams, validate_params
from concilium.explain.prepare import Prepared, check_inputs
from concilium.explain.shared_pass import SHARED_PASS, shared_pass
from concilium.explain.targets import TargetSpec
from concilium.vocabulary import REDUCTIONS, Reduction

#: Rows per call of grouped stochastic methods (GradientSHAP, SmoothGrad, VarGrad): a constant,
#: so that seeded results are reproducible on any machine; ~64 rows is efficient on CPUs.
STOCHASTIC_GROUP_ROWS = 64


def reduce_channels(attr: Tensor, reduction: Reduction) -> Tensor:
    """Reduce the channel axis of ``(N, C, H, W)`` attributions to ``(N, H, W)``.

    ``sum`` keeps the sign; ``abs_sum`` sums magnitudes; ``l2`` is the Euclidean norm over
    channels; ``max_abs`` the largest magnitude.

    Raises:
        ValueError: on an unknown reduction (listing the valid ones).
    """
    if reduction == "sum":
        return attr.sum(1)
    if reduction == "abs_sum":
        return attr.abs().sum(1)
    if reduction == "l2":
        return attr.pow(2).sum(1).sqrt()
    if reduction == "max_abs":
        return attr.abs().amax(1)
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def draw_seed(generator: torch.Generator | None) -> int:
    """One base seed from ``generator`` (on its own device) or torch's global generator."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def image_seeds(base_seed: int, method: str, n: int) -> list[int]:
    """Per-image seeds of a stochastic method: the base seed mixed with the method name and the
    image's index, so results do not depend on how the batch is split and two methods never
    share noise."""
    out = []
    for i in range(n):
        digest = hashlib.blake2b(f"{base_seed}:{method}:{i}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generators Captum draws from inside the block, and restore them after.

    Captum's stochastic methods take no generator: NoiseTunnel and the random control draw from
    torch's generator of the images' device, GradientShap's path points from ``np.random``. Only
    those generators are seeded (torch's CPU generator, the one accelerator generator of
    ``device``, NumPy's global state), and all of them are restored when the block ends, even
    on an error; no other device's generator is touched (``torch.manual_seed`` would seed every
    device without restoring them).

    Args:
        seed: the seed (``>= 0``).
        device: the device the method computes on.
    """
    module, index = None, 0
    if device.type not in ("cpu", "meta"):
        module = torch.get_device_module(device.type)
        if device.index is not None:
            index = device.index
        elif hasattr(module, "current_device"):
            index = module.current_device()
    np_state = np.random.get_state()
    with torch.random.fork_rng(
        devices=[index] if module is not None else [],
        device_type=device.type if module is not None else None,
    ):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        elif module is not None:
            module.manual_seed(seed)  # single-device accelerators (mps)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _check_reduction(reduction: object) -> None:
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)} or None (keep the "
            "channels)"
        )


def _group_size(spec: MethodSpec, p: MethodParams, prep: Prepared) -> int:
    """Images per call of a stochastic method: 1, or for groupable methods a size fixed by the
    method's parameters and the memory budget only (never by timing), so seeded maps do not
    depend on ``batch_size`` or on the probe."""
    if not spec.groupable or prep.plan is None:
        return 1
    b = prep.baselines
    if b is not None and b.shape[0] > 1 and not bool((b == b[:1]).all()):
        return 1  # per-image baselines: each image needs its own baseline distribution
    rows = min(STOCHASTIC_GROUP_ROWS, prep.plan.max_rows)
    return images_per_chunk(rows, spec.passes(p, tuple(prep.images.shape[-2:])), prep.images.shape[0])


def _run_method(spec: MethodSpec, p: MethodParams, prep: Prepared, base_seed: int) -> Tensor:
    """Signed attributions ``(N, C or 1, H, W)`` of one method, chunked by the plan."""
    images = prep.images
    n, hw = images.shape[0], tuple(images.shape[-2:])
    outputs: list[Tensor] = []
    grad_ctx = torch.enable_grad() if spec.kind == "gradient" else torch.no_grad()
    rows = 1
    if prep.plan is not None:
        rows = prep.plan.rows_grad if spec.kind == "gradient" else prep.plan.rows_fwd
    if spec.stochastic:
        seeds = image_seeds(base_seed, spec.name, n)
        group = _group_size(spec, p, prep)
        for start in range(0, n, group):
            with seeded(seeds[start], images.device), grad_ctx:
                outputs.append(spec.run(prep.chunk(start, min(n, start + group), rows), p).detach())
    else:
        step = images_per_chunk(rows, spec.passes(p, hw), n)
        for start in range(0, n, step):
            with grad_ctx:
                outputs.append(spec.run(prep.chunk(start, min(n, start + step), rows), p).detach())
    return torch.cat(outputs) if outputs else images.new_zeros((0, 1, *hw))


def _finish(attr: Tensor, method: str, *, reduction: Reduction | None, device: torch.device) -> Tensor:
    bad = (~torch.isfinite(attr.flatten(1))).any(1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:20])) + (" ..." if len(bad) > 20 else "")
        raise ValueError(
            f"method {method!r} produced NaN or infinite attributions for sample(s) {shown}; "
            "check the model's outputs on these images (overflow, log of zero) or the baseline"
        )
    out = attr if reduction is None else reduce_channels(attr, reduction)
    return out.to(device=device, dtype=torch.float32)


def explain(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec,
    *,
    method: str,
    reduction: Reduction | None = "sum",
    baseline: BaselineSpec = "zero",
    batch_size: int | None = None,
    memory_budget_mb: float = 1024.0,
    generator: torch.Generator | None = None,
    layer: str | nn.Module | None = None,
    labels: Tensor | None = None,
    attribute_names: Sequence[str] | None = None,
    **method_params: Any,
) -> Tensor:
    """Explain ``model``'s decision on ``images`` with one attribution method.

    Args:
        model: a ``ConciliumNet`` or any module giving ``(N, C)`` logits.
        images: ``(N, C, H, W)`` float images in ``[0, 1]`` (moved to the model's device).
        targets: what to explain (see :mod:`concilium.explain.targets`): a ``(N,)`` tensor of
            classes, an int, ``"label"``, ``"pred"``, ``"attr:<name|index>"`` or
            ``"contrast:<t>"``.
        method: a name from :data:`METHODS`.
        reduction: how channels become one map: ``"sum"`` (default, signed), ``"abs_sum"``,
            ``"l2"`` or ``"max_abs"``; ``None`` keeps them: the channel-signed attributions
            ``(N, C, H, W)`` (``(N, 1, H, W)`` for methods whose attribution is channel-free:
            GradCAM, occlusion, LIME, KernelSHAP, feature ablation, random).
        baseline: ``"zero"`` (default), a spec string such as ``"blur:sigma=4"``, a tensor, or a
            :class:`~concilium.explain.baselines.BaselineProvider`; used by the methods that
            need one. A provider is called with the explained classes, or with the contrast
            classes ``t`` for a ``"contrast:<t>"`` target (a counterfactual of class ``t``).
        batch_size: model-input rows per call; ``None`` (default) chooses automatically from
            ``memory_budget_mb`` (never from timing, see :mod:`concilium.explain.batching`).
        memory_budget_mb: memory the activations of one call may use (default 1024).
        generator: seeds stochastic methods (one draw, then per-image seeds, so results do not
            depend on batching); ``None`` draws that one seed from torch's global generator.
            The global generators are otherwise left as they were.
        layer: GradCAM layer (dotted name or module); default the model's ``gradcam_layer``.
        labels: ``(N,)`` true classes for the ``"label"`` and ``"contrast:<t>"`` targets.
        attribute_names: names for ``"attr:<name>"`` targets.
        **method_params: the method's own parameters (validated; see
            :mod:`concilium.explain.params` for names and defaults).

    Returns:
        ``(N, H, W)`` float32 maps on ``images``' device (or signed attributions, see
        ``reduction``).

    Raises:
        ValueError: unknown method, reduction or parameter; bad image shape; target out of range;
            layer not found; NaN or infinite attributions (naming the samples).
        TypeError: wrong argument types.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        >>> explain(net, torch.rand(2, 3, 4, 4), "pred", method="saliency").shape
        torch.Size([2, 4, 4])
    """
    return explain_many(
        model,
        images,
        targets,
        {method: method_params},
        reduction=reduction,
        baseline=baseline,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        layer=layer,
        labels=labels,
        attribute_names=attribute_names,
    )[method]


def explain_many(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    reduction: Reduction | None = "sum",
    baseline: BaselineSpec = "zero",
    batch_size: int | None = None,
    memory_budget_mb: float = 1024.0,
    generator: torch.Generator | None = None,
    layer: str | nn.Module | None = None,
    labels: Tensor | None = None,
    attribute_names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Explain ``images`` with several methods, sharing the work they have in common.

    The target, baselines, layer and batching plan are resolved once; ``saliency``,
    ``input_x_gradient`` and ``gradcam`` come from one forward+backward pass per chunk (the
    GradCAM layer's activations and gradients are captured during the input-gradient pass).
    Each result equals ``explain(...)`` of that method with the same arguments, including the
    seeded stochastic methods (for a generator in the same state).

    Args:
        model: as in :func:`explain`.
        images: as in :func:`explain`.
        targets: as in :func:`explain`.
        methods: method name -> its parameters (``{}`` for the defaults).
        reduction: as in :func:`explain`, applied to every method.
        baseline: as in :func:`explain`, for every method that needs one.
        batch_size: as in :func:`explain`.
        memory_budget_mb: as in :func:`explain`.
        generator: as in :func:`explain`; one draw seeds every stochastic method.
        layer: as in :func:`explain`.
        labels: as in :func:`explain`.
        attribute_names: as in :func:`explain`.

    Returns:
        method name -> maps, in the order of ``methods``.

    Raises:
        ValueError, TypeError: as :func:`explain`, for any of the methods, before any work.
    """
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty mapping {method name: {param: value}}")
    resolved: dict[str, tuple[MethodSpec, MethodParams]] = {}
    for name, params in methods.items():
        spec = METHODS.get(name)
        resolved[name] = (spec, validate_params(name, spec.params, dict(params or {})))
    _check_reduction(reduction)
    images = check_inputs(model, images, generator)
    specs = [s for s, _ in resolved.values()]
    need_baseline = any(s.needs_baseline for s in specs)
    if need_baseline:
        as_provider(baseline)
    base_seed = draw_seed(generator) if any(s.stochastic for s in specs) else 0
    shared = [m for m in SHARED_PASS if m in resolved] if len(set(SHARED_PASS) & set(resolved)) > 1 else []
    results: dict[str, Tensor] = {}
    # in-place activations would hide their inputs from backward hooks (layer methods hook a
    # copy of the layer's output instead: see concilium.explain.cam)
    inplace_off = any(s.activation_hooks for s in specs)
    with attribution_context(model, inplace_off=inplace_off):
        prep = Prepared(
            model, images, targets, labels=labels, attribute_names=attribute_names,
            baseline=baseline, need_baseline=need_baseline, layer=layer,
            need_layer=any(s.needs_layer for s in specs),
            need_plan=any(s.kind != "control" for s in specs),
            batch_size=batch_size, memory_budget_mb=memory_budget_mb,
        )
        if shared:
            results.update(shared_pass(prep, {m: resolved[m][1] for m in shared}))
        for name, (spec, p) in resolved.items():
            if name in results:
                continue
            results[name] = _run_method(spec, p, prep, base_seed)
    return {
        name: _finish(results[name], name, reduction=reduction, device=images.device)
        for name in resolved
    }
