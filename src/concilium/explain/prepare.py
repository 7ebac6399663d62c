"""Input preparation: everything an explanation call resolves once, before any long work.

:class:`Prepared` holds the images on the model's device and dtype, the resolved
:class:`~concilium.explain.targets.Target`, the baselines, the GradCAM layer and the batching
:class:`~concilium.explain.batching.Plan`; :meth:`Prepared.chunk` cuts it into the
:class:`~concilium.explain.methods.Chunk` a method attributes. The checks here raise before the
engine (:mod:`concilium.explain.engine`) starts.

Example:
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    >>> prep = Prepared(net, torch.rand(2, 3, 4, 4), "pred", labels=None, attribute_names=None,
    ...                 baseline="zero", need_baseline=True, layer=None, need_layer=False,
    ...                 need_plan=False, batch_size=None, memory_budget_mb=1024.0)
    >>> prep.chunk(0, 1, rows=1).images.shape
    torch.Size([1, 3, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from concilium._checks import check_images
from concilium.explain.baselines import BaselineSpec, resolve_baselines
from concilium.explain.batching import Plan, probe
from concilium.explain.layers import LayerReader, resolve_layer
from concilium.explain.methods import Chunk
from concilium.explain.targets import ContrastModel, Target, TargetSpec, resolve_target
from concilium.models.base import AttributeView


def check_inputs(model: object, images: object, generator: object) -> Tensor:
    """Check the arguments every explanation call shares; return the images as a tensor.

    Raises:
        TypeError: ``model`` is not a module, or ``generator`` not a ``torch.Generator``.
        ValueError: the images are not ``(N, C, H, W)`` floats (see
            :func:`concilium._checks.check_images`).
    """
    checked = check_images(images)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    return checked


def model_device_dtype(model: nn.Module, images: Tensor) -> tuple[torch.device, torch.dtype]:
    """Where and in which float type ``model`` computes: its first parameter's (else its first
    buffer's device, else the images')."""
    for t in model.parameters():
        return t.device, t.dtype
    for t in model.buffers():
        return t.device, (t.dtype if t.is_floating_point() else images.dtype)
    return images.device, images.dtype


def base_model(module: nn.Module) -> nn.Module:
    """The classifier under a target wrapper (:class:`ContrastModel`, :class:`AttributeView`):
    the module whose layers are named by ``layer=`` and probed for batching."""
    return module.model if isinstance(module, ContrastModel | AttributeView) else module


class Prepared:
    """Everything resolved for one call: images on the device, target, baselines, layer, plan.

    Args:
        model: the model (or a target wrapper of it).
        images: checked ``(N, C, H, W)`` images; moved to the model's device and dtype.
        targets: the target spec (see :mod:`concilium.explain.targets`).
        labels: ``(N,)`` true classes for ``"label"`` and ``"contrast:<t>"`` targets.
        attribute_names: names for ``"attr:<name>"`` targets.
        baseline: the baseline spec, resolved only when ``need_baseline``.
        need_baseline: some method needs a baseline.
        layer: the GradCAM layer spec, resolved only when ``need_layer``.
        need_layer: some method attributes through a layer.
        need_plan: some method runs the model (probe the batching plan).
        batch_size: fixed model-input rows per call, or ``None`` for the probe's choice.
        memory_budget_mb: memory the activations of one call may use.

    Attributes:
        images: the images on the model's device and dtype.
        target: the resolved :class:`Target`.
        baselines: ``(N, C, H, W)`` baselines, or ``None``.
        layer: the GradCAM layer module, or ``None``.
        layout: reads that layer's output as ``(N, C, h, w)``, or ``None``.
        plan: the batching :class:`Plan`, or ``None``.
    """

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
        device, dtype = model_device_dtype(model, images)
        self.images = images.detach().to(device=device, dtype=dtype)
        base = base_model(model)
        self.layer = resolve_layer(base, layer, self.images) if need_layer else None
        self.layout: LayerReader | None = (
            LayerReader(base, self.layer, (self.images.shape[-2], self.images.shape[-1]))
            if self.layer is not None
            else None
        )
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
        """Images ``start:stop`` with their classes, forward arguments and baselines.

        Args:
            start: first image.
            stop: one past the last image.
            rows: model-input rows per call the method may use.
        """
        classes, args = self.target.chunk(start, stop)
        return Chunk(
            module=self.target.module,
            images=self.images[start:stop],
            classes=classes,
            forward_args=args,
            baselines=None if self.baselines is None else self.baselines[start:stop],
            layer=self.layer,
            layout=self.layout,
            rows=rows,
            max_rows=self.plan.max_rows if self.plan is not None else rows,
        )
