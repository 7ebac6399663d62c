"""The explanation engine: :func:`explain` one method, :func:`explain_many` several methods with
shared passes.

Everything is checked at the boundary before any long work: the method name and parameters, the
images, the target, the baseline and the GradCAM layer. The model runs in eval mode (its own
mode is restored afterwards), without in-place activations, and every hook added during the call,
Captum's included, is removed even when an error interrupts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from concilium._checks import check_images
from concilium.explain._context import attribution_context
from concilium.explain.baselines import BaselineSpec, as_provider, resolve_baselines
from concilium.explain.batching import Plan, images_per_chunk, probe
from concilium.explain.methods import METHODS, Chunk, MethodSpec
from concilium.explain.params import MethodParams, validate_params
from concilium.explain.shared import SHARED_PASS, shared_pass
from concilium.explain.targets import ContrastModel, Target, TargetSpec, resolve_target
from concilium.models.base import AttributeView
from concilium.vocabulary import REDUCTIONS, Reduction

#: Rows per call of grouped stochastic methods (GradientSHAP, SmoothGrad, VarGrad): a constant,
#: so that seeded results are reproducible on any machine; ~64 rows is efficient on CPUs.
STOCHASTIC_GROUP_ROWS = 64


def method_params(method: str, **params: Any) -> dict[str, Any]:
    """The fully resolved parameters (defaults included) of ``method``: what the store hashes.

    Raises:
        ValueError: on an unknown method (listing the valid ones) or an unknown parameter
            (listing the valid ones) or an invalid value.

    Example:
        >>> method_params("integrated_gradients", n_steps=64)
        {'n_steps': 64, 'integration': 'gausslegendre'}
    """
    spec = METHODS.get(method)
    return validate_params(method, spec.params, params).model_dump()


def reduce_channels(attr: Tensor, reduction: Reduction) -> Tensor:
    """Reduce the channel axis of ``(N, C, H, W)`` attributions to ``(N, H, W)``.

    ``sum`` keeps the sign; ``abs_sum`` sums magnitudes; ``l2`` is the Euclidean norm over
    channels; ``max_abs`` the largest magnitude.
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


def _model_device_dtype(model: nn.Module, images: Tensor) -> tuple[torch.device, torch.dtype]:
    for t in model.parameters():
        return t.device, t.dtype
    for t in model.buffers():
        return t.device, (t.dtype if t.is_floating_point() else images.dtype)
    return images.device, images.dtype


def _base_model(module: nn.Module) -> nn.Module:
    return module.model if isinstance(module, ContrastModel | AttributeView) else module


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the convolutional layers of ``model`` (GradCAM candidates)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [n for n, m in model.named_modules() if isinstance(m, convs)]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The GradCAM layer: ``layer`` (a dotted name or a module of ``model``) or the model's
    documented ``gradcam_layer``.

    Raises:
        ValueError: if no layer is given and the model documents none, or the name matches no
            module (the message lists the convolutional layers).
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer= is a module that is not part of the model; pass one of its modules")
        return layer
    name = layer if layer is not None else getattr(model, "gradcam_layer", None)
    modules = dict(model.named_modules())
    if name is None:
        raise ValueError(
            "this model documents no gradcam_layer; pass layer=<name>, e.g. one of the "
            f"convolutional layers: {', '.join(conv_layers(model)) or '(none found)'}"
        )
    if not isinstance(name, str) or name not in modules or name == "":
        raise ValueError(
            f"layer {name!r} matches no module of the model; convolutional layers: "
            f"{', '.join(conv_layers(model)) or '(none found)'}"
        )
    return modules[name]


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
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and NumPy's global generators inside the block (Captum draws from both:
    GradientShap's path points come from ``np.random``) and restore them afterwards."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class _Prepared:
    """Everything resolved for one call: images on the device, target, baselines, layer, plan."""

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        targets: TargetSpec,
        *,
        labels: Tensor | None,
        attribute_names: Sequence[str] | None,
        baseline: BaselineSpec,
        need_baseline: bool,
        layer: str | nn.Module | None,
        need_layer: bool,
        need_plan: bool,
        batch_size: int | None,
        memory_budget_mb: float,
    ) -> None:
        device, dtype = _model_device_dtype(model, images)
        self.images = images.detach().to(device=device, dtype=dtype)
        base = _base_model(model)
        self.layer = resolve_layer(base, layer) if need_layer else None
        self.target: Target = resolve_target(
            model, self.images, targets, labels=labels, attribute_names=attribute_names
        )
        self.baselines = (
            resolve_baselines(baseline, self.images, self.target.baseline_classes)
            if need_baseline
            else None
        )
        self.plan: Plan | None = (
            probe(base, self.images, memory_budget_mb=memory_budget_mb, batch_size=batch_size)
            if need_plan
            else None
        )

    def chunk(self, start: int, stop: int, rows: int) -> Chunk:
        classes, args = self.target.chunk(start, stop)
        return Chunk(
            module=self.target.module,
            images=self.images[start:stop],
            classes=classes,
            forward_args=args,
            baselines=None if self.baselines is None else self.baselines[start:stop],
            layer=self.layer,
            rows=rows,
            max_rows=self.plan.max_rows if self.plan is not None else rows,
        )


def _check_common(
    images: object, reduction: str, generator: torch.Generator | None
) -> Tensor:
    images = check_images(images)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    return images


def _group_size(spec: MethodSpec, p: MethodParams, prep: _Prepared) -> int:
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


def _run_method(spec: MethodSpec, p: MethodParams, prep: _Prepared, base_seed: int) -> Tensor:
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
            with _seeded(seeds[start], images.device), grad_ctx:
                outputs.append(spec.run(prep.chunk(start, min(n, start + group), rows), p).detach())
    else:
        step = images_per_chunk(rows, spec.passes(p, hw), n)
        for start in range(0, n, step):
            with grad_ctx:
                outputs.append(spec.run(prep.chunk(start, min(n, start + step), rows), p).detach())
    return torch.cat(outputs) if outputs else images.new_zeros((0, 1, *hw))


def _finish(
    attr: Tensor, method: str, *, reduction: str, signed: bool, device: torch.device
) -> Tensor:
    bad = (~torch.isfinite(attr.flatten(1))).any(1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:20])) + (" ..." if len(bad) > 20 else "")
        raise ValueError(
            f"method {method!r} produced NaN or infinite attributions for sample(s) {shown}; "
            "check the model's outputs on these images (overflow, log of zero) or the baseline"
        )
    out = attr if signed else reduce_channels(attr, reduction)  # type: ignore[arg-type]
    return out.to(device=device, dtype=torch.float32)


def explain(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec,
    *,
    method: str,
    reduction: Reduction = "sum",
    signed: bool = False,
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
            ``"l2"`` or ``"max_abs"``.
        signed: return the channel-signed attributions ``(N, C, H, W)`` instead of a reduced map
            (``(N, 1, H, W)`` for methods whose attribution is channel-free: GradCAM, occlusion,
            LIME, KernelSHAP, feature ablation, random); ``reduction`` is then ignored.
        baseline: ``"zero"`` (default), a spec string such as ``"blur:sigma=4"``, a tensor, or a
            :class:`~concilium.explain.baselines.BaselineProvider`; used by the methods that
            need one. A provider is called with the explained classes, or with the contrast
            classes ``t`` for a ``"contrast:<t>"`` target (a counterfactual of class ``t``).
        batch_size: model-input rows per call; ``None`` (default) chooses automatically from
            ``memory_budget_mb`` and a cached timing probe.
        memory_budget_mb: memory the activations of one call may use (default 1024).
        generator: seeds stochastic methods (one draw, then per-image seeds, so results do not
            depend on batching); ``None`` uses torch's global generator.
        layer: GradCAM layer (dotted name or module); default the model's ``gradcam_layer``.
        labels: ``(N,)`` true classes for the ``"label"`` and ``"contrast:<t>"`` targets.
        attribute_names: names for ``"attr:<name>"`` targets.
        **method_params: the method's own parameters (validated; see
            :mod:`concilium.explain.params` for names and defaults).

    Returns:
        ``(N, H, W)`` float32 maps on ``images``' device (or signed attributions, see ``signed``).

    Raises:
        ValueError: unknown method, reduction or parameter; bad image shape; target out of range;
            layer not found; NaN or infinite attributions (naming the samples).
        TypeError: wrong argument types.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        >>> explain(net, torch.rand(2, 3, 4, 4), "pred", method="saliency").shape
        torch.Size([2, 4, 4])
    """
    spec = METHODS.get(method)
    p = validate_params(method, spec.params, method_params)
    images = _check_common(images, reduction, generator)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if spec.needs_baseline:
        as_provider(baseline)  # type check before any work
    with attribution_context(model):
        prep = _Prepared(
            model, images, targets, labels=labels, attribute_names=attribute_names,
            baseline=baseline, need_baseline=spec.needs_baseline, layer=layer,
            need_layer=spec.needs_layer, need_plan=spec.kind != "control",
            batch_size=batch_size, memory_budget_mb=memory_budget_mb,
        )
        attr = _run_method(spec, p, prep, draw_seed(generator) if spec.stochastic else 0)
    return _finish(attr, method, reduction=reduction, signed=signed, device=images.device)


def explain_many(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    reduction: Reduction = "sum",
    signed: bool = False,
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
        model, images, targets: as in :func:`explain`.
        methods: method name -> its parameters (``{}`` for the defaults).
        reduction, signed, baseline, batch_size, memory_budget_mb, generator, layer, labels,
        attribute_names: as in :func:`explain`, applied to every method.

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
    images = _check_common(images, reduction, generator)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    specs = [s for s, _ in resolved.values()]
    need_baseline = any(s.needs_baseline for s in specs)
    if need_baseline:
        as_provider(baseline)
    base_seed = draw_seed(generator) if any(s.stochastic for s in specs) else 0
    shared = [m for m in SHARED_PASS if m in resolved] if len(set(SHARED_PASS) & set(resolved)) > 1 else []
    results: dict[str, Tensor] = {}
    with attribution_context(model):
        prep = _Prepared(
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
        name: _finish(results[name], name, reduction=reduction, signed=signed, device=images.device)
        for name in resolved
    }
