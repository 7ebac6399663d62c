"""The layer of the layer methods (GradCAM and the CAM family): which module, and how its
output becomes a ``(N, C, h, w)`` map.

* :func:`resolve_layer`: the layer named by ``layer=`` (a dotted name or a module), the model's
  documented ``gradcam_layer``, or :func:`default_layer` for the model's family, logged when
  chosen.
* :func:`layer_layout`: how the layer's activations are laid out, found from one forward pass:
  ``nchw`` (CNNs), ``nhwc`` (timm's Swin and ConvNeXt-style LayerNorms put channels last) or
  ``tokens`` ``(N, T, D)`` (ViTs: the class, distillation and register tokens are the first
  ``prefix`` tokens, dropped; the rest form the patch grid). :meth:`LayerLayout.to_grid` turns
  activations and their gradients into ``(N, C, h, w)``.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    >>> default_layer(net, torch.rand(1, 3, 8, 8))
    '1'
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: The most leading non-patch tokens a ViT may carry (class, distillation, registers).
MAX_PREFIX_TOKENS = 16

#: Default-layer name suffixes of transformer families, tried in order: the first norm of the
#: last block of a ViT (timm ``blocks.N.norm1``, transformers ``layernorm_before``); the last
#: block's output norm of a class-token model receives no gradient on its patch tokens.
_VIT_SUFFIXES: tuple[str, ...] = ("norm1", "layernorm_before")


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the convolutional layers of ``model`` (layer-method candidates)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [n for n, m in model.named_modules() if isinstance(m, convs)]


def _candidates(model: nn.Module) -> str:
    names = conv_layers(model)
    norms = [n for n, _ in model.named_modules() if n.endswith(_VIT_SUFFIXES)]
    listed = names[-5:] + norms[-3:]
    return ", ".join(listed) or "(none found)"


def _is_swin(model: nn.Module) -> bool:
    return any("swin" in type(m).__name__.lower() for m in model.modules())


def _is_pool(module: nn.Module) -> bool:
    return "pool" in type(module).__name__.lower()


def _outputs(model: nn.Module, image: Tensor) -> list[tuple[str, Tensor]]:
    """``(name, output)`` of every submodule returning one tensor, in the order they finish."""
    order: list[tuple[str, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, Tensor):
                    order.append((name, out))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        for h in handles:
            h.remove()
    return order


#: model -> {image shape: default layer name}: the CNN rule's forward pass runs once per model.
_DEFAULTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def default_layer(model: nn.Module, image: Tensor) -> str:
    """The default layer of ``model``'s family, found by name and one forward pass of ``image``.

    * ViTs (timm, transformers): the first norm of the last block (``blocks.11.norm1``,
      ``...layer.11.layernorm_before``).
    * Swin: the final norm (its output is the last stage's feature map, average-pooled by the
      head).
    * CNNs: the last convolutional stage, the outermost module producing the last spatial
      ``(N, C, h, w)`` map (``h, w >= 2``) before global pooling (``layer4`` of a ResNet).

    Raises:
        ValueError: no candidate found (the message lists layers to pass as ``layer=``).
    """
    known = _DEFAULTS.setdefault(model, {})
    key = tuple(image.shape[1:])
    if key not in known:
        known[key] = _default_layer(model, image)
    return known[key]


def _default_layer(model: nn.Module, image: Tensor) -> str:
    names = [n for n, _ in model.named_modules()]
    if _is_swin(model):
        norms = [n for n in names if n.split(".")[-1] in ("norm", "layernorm")]
        if norms:
            return norms[-1]
    for suffix in _VIT_SUFFIXES:
        matched = [n for n in names if n.endswith(suffix)]
        if matched:
            return matched[-1]
    modules = dict(model.named_modules())
    spatial = [
        (n, out) for n, out in _outputs(model, image)
        if out.ndim == 4 and min(out.shape[-2:]) >= 2 and not _is_pool(modules[n])
    ]
    if not spatial:
        raise ValueError(
            "found no default layer for this model (no 4-D feature map and no ViT block norm); "
            f"pass layer=<name>, e.g. one of: {_candidates(model)}"
        )
    last = spatial[-1][1]
    # the outermost module returning that very tensor (`layer4`, not `layer4.2.relu`)
    same = [n for n, out in spatial if out is last]
    return min(same, key=lambda n: n.count("."))


def resolve_layer(
    model: nn.Module, layer: str | nn.Module | None, image: Tensor | None = None
) -> nn.Module:
    """The layer: ``layer`` (a dotted name or a module of ``model``), else the model's documented
    ``gradcam_layer``, else (given an ``image``) :func:`default_layer`, logged at INFO level.

    Raises:
        ValueError: if no layer is given and none can be found, or the name matches no module
            (the message lists candidate layers).
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer= is a module that is not part of the model; pass one of its modules")
        return layer
    name = layer if layer is not None else getattr(model, "gradcam_layer", None)
    modules = dict(model.named_modules())
    if name is None:
        if image is None:
            raise ValueError(
                "this model documents no gradcam_layer; pass layer=<name>, e.g. one of the "
                f"layers: {_candidates(model)}"
            )
        name = default_layer(model, image)
        log.info("layer methods use layer %r (the default for %s; pass layer= to choose another)",
                 name, type(model).__name__)
    if not isinstance(name, str) or name not in modules or name == "":
        raise ValueError(
            f"layer {name!r} matches no module of the model; candidate layers: {_candidates(model)}"
        )
    return modules[name]


def patch_grid(model: nn.Module, tokens: int, hw: tuple[int, int]) -> tuple[int, int, int]:
    """``(prefix, gh, gw)``: leading non-patch tokens and the patch grid of ``tokens`` tokens on
    an ``hw`` image (the model's ``num_prefix_tokens`` when it has one, else the fewest leading
    tokens whose remainder tiles the image's aspect ratio)."""
    declared = [getattr(m, "num_prefix_tokens", None) for m in model.modules()]
    hints = [int(d) for d in declared if isinstance(d, int)]
    for prefix in hints[:1] + list(range(MAX_PREFIX_TOKENS + 1)):
        n = tokens - prefix
        if n <= 0:
            continue
        gh = round(math.sqrt(n * hw[0] / hw[1]))
        if gh > 0 and n % gh == 0 and gh * hw[1] == (n // gh) * hw[0]:
            return prefix, gh, n // gh
    raise ValueError(
        f"the layer's {tokens} tokens do not form a patch grid of the {hw[0]}x{hw[1]} image after "
        f"dropping up to {MAX_PREFIX_TOKENS} class/register tokens; choose another layer"
    )


@dataclass(frozen=True)
class LayerLayout:
    """How a layer's output maps to ``(N, C, h, w)``.

    Attributes:
        kind: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        prefix: leading non-patch tokens dropped (``tokens`` only).
        grid: ``(h, w)`` of the map.
    """

    kind: Literal["nchw", "nhwc", "tokens"]
    prefix: int
    grid: tuple[int, int]

    @property
    def channel_dim(self) -> int:
        """The channel axis of the raw output (1 or -1)."""
        return 1 if self.kind == "nchw" else -1

    def to_grid(self, t: Tensor) -> Tensor:
        """Raw layer output (or its gradient) -> ``(N, C, h, w)``."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        patches = t[:, self.prefix:]
        return patches.reshape(t.shape[0], *self.grid, t.shape[-1]).permute(0, 3, 1, 2)


def _channels_last(model: nn.Module, layer: nn.Module, out: Tensor) -> bool:
    """A 4-D output with channels last: the model says so (timm's Swin: ``output_fmt``), or the
    layer normalises the last axis and that axis is not axis 1 (a LayerNorm on NHWC)."""
    if any(getattr(m, "output_fmt", None) == "NHWC" for m in model.modules()):
        return True
    shape = getattr(layer, "normalized_shape", None)
    return (
        isinstance(shape, tuple) and len(shape) == 1 and shape[0] == out.shape[-1]
        and out.shape[1] != shape[0]
    )


def layout_of(model: nn.Module, layer: nn.Module, out: Tensor, hw: tuple[int, int]) -> LayerLayout:
    """The :class:`LayerLayout` of ``layer`` from one of its outputs ``out`` on ``hw`` images
    (no forward pass).

    Raises:
        ValueError: ``out`` is neither a 4-D map nor ``(N, T, D)`` tokens forming a patch grid
            (naming the shape and what to choose instead).
    """
    if out.ndim == 4:
        if _channels_last(model, layer, out):
            return LayerLayout("nhwc", 0, (out.shape[1], out.shape[2]))
        return LayerLayout("nchw", 0, (out.shape[2], out.shape[3]))
    if out.ndim == 3:
        prefix, gh, gw = patch_grid(model, out.shape[1], hw)
        return LayerLayout("tokens", prefix, (gh, gw))
    raise ValueError(
        f"the layer's output has shape {tuple(out.shape)}; layer methods need a (N, C, h, w) map "
        f"or (N, tokens, D) tokens; choose another layer, e.g. one of: {_candidates(model)}"
    )


class LayerReader:
    """Reads one layer's outputs as ``(N, C, h, w)`` grids; the :class:`LayerLayout` is found
    from the first output it sees (no extra forward pass) and kept.

    Args:
        model: the model the layer belongs to (its ``num_prefix_tokens`` and ``output_fmt``
            are read).
        layer: the layer.
        hw: the image size.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, hw: tuple[int, int]) -> None:
        self.model, self.layer, self.hw = model, layer, hw
        self._layout: LayerLayout | None = None

    def layout(self, out: Tensor) -> LayerLayout:
        """The layout of the layer, from ``out`` (one of its outputs) the first time."""
        if self._layout is None:
            self._layout = layout_of(self.model, self.layer, out, self.hw)
        return self._layout

    def to_grid(self, t: Tensor) -> Tensor:
        """A raw output of the layer (or its gradient) as ``(N, C, h, w)``."""
        return self.layout(t).to_grid(t)


def layer_layout(model: nn.Module, layer: nn.Module, image: Tensor) -> LayerLayout:
    """The :class:`LayerLayout` of ``layer``, from one forward pass of ``image``'s first row.

    Raises:
        ValueError: the layer returns no tensor, or one of the wrong shape (see
            :func:`layout_of`).
    """
    seen: list[object] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        handle.remove()
    if not seen or not isinstance(seen[-1], Tensor):
        raise ValueError(
            "the layer must return one tensor (a feature map or tokens); choose a "
            f"convolutional layer or a block's norm, e.g. one of: {_candidates(model)}"
        )
    return layout_of(model, layer, seen[-1], (image.shape[-2], image.shape[-1]))
