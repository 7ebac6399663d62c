"""What an explanation explains: a class, the prediction, an attribute head, or a contrast.

A target spec is resolved once, at the boundary, into a :class:`Target`: the module whose output
is attributed, the output column per sample, and the extra forward arguments (contrast classes)
that Captum carries through every expansion of the batch.

Spec grammar (strings are case-sensitive):

* ``"label"``: the true class; needs ``labels``.
* ``"pred"``: the model's predicted class.
* ``<int>`` or ``"<int>"``: that class for every image.
* a ``(N,)`` integer tensor: one class per image.
* ``"attr:<name or index>"``: attribute head ``a`` of a multitask model (target ``a`` of
  :class:`~concilium.models.base.AttributeView`); names come from ``attribute_names`` or the
  model's ``attribute_names`` attribute.
* ``"contrast:<t>"``: "why ``c`` and not ``t``": attributes ``f_c - f_t``, where ``c`` is the label
  when ``labels`` are given and the prediction otherwise, and ``t`` is a class index, ``"pred"``
  or ``"runner_up"`` (the second most likely class). A ``(N,)`` tensor of contrast classes is
  accepted through :func:`contrast_target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from concilium.models.base import AttributeView

TargetSpec = str | int | Tensor


class ContrastModel(nn.Module):
    """Wraps a classifier so that column ``c`` of its output for sample ``i`` is
    ``logit_c - logit_{t_i}``: attributing target ``c`` explains "why ``c`` and not ``t_i``".

    The contrast classes travel as a forward argument, so Captum expands them together with the
    inputs (integration steps, noise samples, perturbations).

    Args:
        model: a module giving ``(N, C)`` logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        layer = getattr(model, "gradcam_layer", None)
        if isinstance(layer, str):
            self.gradcam_layer = f"model.{layer}"

    def forward(self, x: Tensor, contrast: Tensor) -> Tensor:
        logits = self.model(x)
        return logits - logits.gather(1, contrast.long().view(-1, 1))


@dataclass(frozen=True)
class Target:
    """A resolved target.

    Attributes:
        module: the module whose output is attributed (the model, an ``AttributeView`` or a
            ``ContrastModel``).
        classes: ``(N,)`` int64 output column per sample.
        forward_args: extra forward arguments (``(contrast,)`` for contrast targets) or ``None``.
        spec: the spec it came from, for messages and metadata.
    """

    module: nn.Module
    classes: Tensor
    forward_args: tuple[Tensor, ...] | None
    spec: str

    def chunk(self, start: int, stop: int) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Classes and forward arguments of samples ``start:stop``."""
        args = None if self.forward_args is None else tuple(a[start:stop] for a in self.forward_args)
        return self.classes[start:stop], args

    @property
    def baseline_classes(self) -> Tensor:
        """``(N,)`` the classes a class-conditional baseline is made for: the contrast classes
        ``t`` of a contrast target ("why ``c`` and not ``t``" compares the input with a
        counterfactual of class ``t``, e.g. GANMEX's ``G(x, t)``), otherwise :attr:`classes`."""
        if isinstance(self.module, ContrastModel) and self.forward_args:
            return self.forward_args[0]
        return self.classes


def _declared_outputs(module: nn.Module) -> int | None:
    if isinstance(module, AttributeView):
        return int(module.model.num_attributes)
    if isinstance(module, ContrastModel):
        return _declared_outputs(module.model)
    num = getattr(module, "num_classes", None)
    return int(num) if isinstance(num, int) else None


def _logits(module: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        out = module(images)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the model must return (N, C) logits for (N, C, H, W) images; got {got} "
            "(wrap it so that forward returns one logit row per image)"
        )
    return out


def _num_outputs(module: nn.Module, images: Tensor) -> int:
    """Number of outputs: declared by the model (``num_classes``) or from one image's forward."""
    declared = _declared_outputs(module)
    return declared if declared is not None else _logits(module, images[:1]).shape[1]


def _check_classes(classes: Tensor, n: int, num: int, what: str) -> Tensor:
    classes = classes.long().view(-1)
    if classes.shape[0] != n:
        raise ValueError(f"{what} must give one class per image ({n}); got shape {tuple(classes.shape)}")
    if n and (int(classes.min()) < 0 or int(classes.max()) >= num):
        raise ValueError(
            f"{what} out of range: got classes in [{int(classes.min())}, {int(classes.max())}] but "
            f"the model has {num} outputs (valid: 0..{num - 1})"
        )
    return classes


def _class_index(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{what} {text!r} is not a class index; use an integer, 'label', 'pred', "
            "'attr:<name|index>' or 'contrast:<t>'"
        ) from None


def contrast_target(
    model: nn.Module, images: Tensor, base: Tensor, contrast: Tensor, *, spec: str = "contrast"
) -> Target:
    """A one-vs-one target "why ``base[i]`` and not ``contrast[i]``" (per-sample classes).

    Raises:
        ValueError: if a class is out of range or the shapes do not match the images.
    """
    num = _num_outputs(model, images)
    n = images.shape[0]
    base = _check_classes(base.to(images.device), n, num, "contrast base classes")
    contrast = _check_classes(contrast.to(images.device), n, num, "contrast classes")
    return Target(ContrastModel(model), base, (contrast,), spec)


def resolve_target(
    model: nn.Module,
    images: Tensor,
    spec: TargetSpec,
    *,
    labels: Tensor | None = None,
    attribute_names: Sequence[str] | None = None,
) -> Target:
    """Resolve a target spec (see the module docstring) for ``images``.

    Args:
        model: the classifier (``ConciliumNet`` or any module giving ``(N, C)`` logits).
        images: ``(N, C, H, W)`` images on the model's device.
        spec: the target spec.
        labels: ``(N,)`` true classes, needed by ``"label"`` and used as ``c`` by ``"contrast:t"``.
        attribute_names: names of the attribute heads for ``"attr:<name>"``; default: the
            model's ``attribute_names`` attribute, if any.

    Returns:
        The resolved :class:`Target`.

    Raises:
        ValueError: on an unknown spec, a missing ``labels``, or a class out of range.
        TypeError: if ``spec`` has an unsupported type.
    """
    n = images.shape[0]
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,):
            raise ValueError(
                f"labels must be a (N,) = ({n},) tensor of class indices; got "
                f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
            )
        labels = labels.to(images.device).long()
    if isinstance(spec, bool) or not isinstance(spec, str | int | Tensor):
        raise TypeError(
            f"targets must be a (N,) tensor, an int or a spec string; got {type(spec).__name__}"
        )
    if isinstance(spec, Tensor):
        num = _num_outputs(model, images)
        return Target(model, _check_classes(spec.to(images.device), n, num, "targets"), None, "tensor")
    if isinstance(spec, int):
        spec = str(spec)
    if spec.startswith("attr:"):
        key = spec.split(":", 1)[1]
        view = AttributeView(model)  # raises if the model has no attribute head
        names = list(attribute_names or getattr(model, "attribute_names", None) or [])
        if key in names:
            index = names.index(key)
        else:
            try:
                index = int(key)
            except ValueError:
                raise ValueError(
                    f"unknown attribute {key!r}; valid: {names or 'indices only (no names given)'}"
                ) from None
        num = _num_outputs(view, images)
        classes = _check_classes(torch.full((n,), index, device=images.device), n, num, "attribute")
        return Target(view, classes, None, spec)
    num = _num_outputs(model, images)
    if spec == "label":
        if labels is None:
            raise ValueError("target 'label' needs labels=; pass the (N,) true classes or use 'pred'")
        return Target(model, _check_classes(labels, n, num, "labels"), None, spec)
    if spec == "pred":
        return Target(model, _logits(model, images).argmax(1), None, spec)
    if spec.startswith("contrast:"):
        logits = _logits(model, images)
        pred = logits.argmax(1)
        other = spec.split(":", 1)[1]
        base = labels if labels is not None else pred
        if other == "pred":
            contrast = pred
        elif other == "runner_up":
            ranked = logits.argsort(1, descending=True)
            contrast = torch.where(ranked[:, 0] == base, ranked[:, 1], ranked[:, 0])
        else:
            contrast = torch.full((n,), _class_index(other, "contrast class"), device=images.device)
        return contrast_target(model, images, base, contrast, spec=spec)
    index = _class_index(spec, "target")
    classes = torch.full((n,), index, device=images.device)
    return Target(model, _check_classes(classes, n, num, "target"), None, spec)
