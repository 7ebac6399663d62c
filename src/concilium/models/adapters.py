"""Adapters that wrap ``timm`` and ``torchvision`` networks as :class:`ConciliumNet`.

``create_model("timm:<name>", ...)`` and ``create_model("torchvision:<name>", ...)`` work when
the package is importable (concilium never depends on either). Weights come only from a local
file: the network is built with ``pretrained=False`` / ``weights=None`` and the file (the
library's own state dict for that network, classifier included or not) is loaded into it.
Nothing is ever downloaded.

The wrapped backbone is the library network with its classifier removed, so it maps images to
pooled features ``(N, D)``; concilium's own class (and attribute) heads sit on top.

GradCAM layer detection (override with ``gradcam_layer=``): the last ``nn.Conv2d`` in module
registration order, which is the last convolution of the final stage for the common families:
ResNet/ResNeXt/Wide-ResNet (``layer4.<last>.conv2``/``conv3``), VGG (``features.<last conv>``),
DenseNet (``features.denseblock4.<last>.conv2``), EfficientNet/MobileNet (the final 1x1 conv
of ``features``/``conv_head``), ConvNeXt (the last depthwise conv), RegNet. Networks without a
``Conv2d`` (vision transformers) need an explicit ``gradcam_layer`` or a method other than
GradCAM.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Literal

from torch import Tensor, nn

from concilium.models.base import ConciliumNet
from concilium.models.weights import load_state_dict_file, load_weights_into

AdapterLibrary = Literal["timm", "torchvision"]
LIBRARIES: tuple[str, ...] = ("timm", "torchvision")
BUILT_INS_HINT = "concilium.models.architecture_names() lists the built-in architectures"
"""Where errors send a user for the built-in names (this module sits below the registry)."""


def _import_library(library: str) -> ModuleType:
    try:
        return importlib.import_module(library)
    except ImportError:
        raise ValueError(
            f"architecture '{library}:<name>' needs the {library!r} package, which is not "
            f"installed; install it (pip install {library}) or use a built-in architecture "
            f"({BUILT_INS_HINT})"
        ) from None


def find_last_conv(module: nn.Module) -> str:
    """Dotted name of the last ``nn.Conv2d`` of ``module`` in registration order.

    Raises:
        ValueError: the module has no ``Conv2d``.
    """
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            last = name
    if last is None:
        raise ValueError(
            f"{type(module).__name__} has no Conv2d layer for GradCAM; pass gradcam_layer= "
            "naming a module with a spatial output, or use a method other than GradCAM"
        )
    return last


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the last ``nn.Linear`` (the classifier) by ``nn.Identity``; its input width."""
    last = None
    for name, sub in model.named_modules():
        if isinstance(sub, nn.Linear):
            last = (name, sub)
    if last is None:
        raise ValueError(
            f"cannot find the classifier (an nn.Linear) of {type(model).__name__}; "
            "wrap the network yourself as ConciliumNet(backbone, feature_dim=..., ...)"
        )
    name, linear = last
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return linear.in_features


class AdapterBackbone(nn.Module):
    """A library network without its classifier, returning ``(N, D)`` features.

    Args:
        net: the network (classifier already removed).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.flatten(1)


def _load_library_weights(net: nn.Module, weights: str | Path) -> None:
    state = load_state_dict_file(weights)
    load_weights_into(net, state, source=str(weights))


def create_adapter(
    arch: str,
    *,
    num_classes: int,
    num_attributes: int = 0,
    in_channels: int = 3,
    weights: str | Path | None = None,
    gradcam_layer: str | None = None,
) -> ConciliumNet:
    """Wrap ``timm:<name>`` or ``torchvision:<name>`` as a :class:`ConciliumNet`.

    Args:
        arch: ``"timm:<name>"`` or ``"torchvision:<name>"``.
        num_classes: number of classes (concilium's own head).
        num_attributes: attribute-head width (0: none). Default 0.
        in_channels: image channels. Default 3 (torchvision networks support only 3).
        weights: the library's state dict for ``<name>`` in a local ``.safetensors`` or ``.pt``
            file, loaded strictly before the classifier is removed. Default ``None`` (random
            initialisation).
        gradcam_layer: dotted name inside the library network (e.g. ``"layer4"``) to use for
            GradCAM instead of the detected last ``Conv2d``. Default ``None``.

    Returns:
        The wrapped network; its ``gradcam_layer`` is ``"backbone.net.<layer>"``.

    Raises:
        ValueError: unknown library, the library is not installed, ``in_channels`` unsupported,
            weights that do not fit, or a ``gradcam_layer`` that names no module.
    """
    library, _, name = arch.partition(":")
    if library not in LIBRARIES or not name:
        raise ValueError(
            f"unknown architecture {arch!r}; adapters are 'timm:<name>' and "
            f"'torchvision:<name>'; {BUILT_INS_HINT}"
        )
    lib = _import_library(library)
    if library == "timm":
        net = lib.create_model(name, pretrained=False, in_chans=in_channels)
    else:
        if in_channels != 3:
            raise ValueError(
                f"torchvision networks take 3-channel images; got in_channels={in_channels}"
            )
        net = lib.models.get_model(name, weights=None)
    if weights is not None:
        _load_library_weights(net, weights)
    if library == "timm" and hasattr(net, "reset_classifier"):
        net.reset_classifier(0)
        feature_dim = int(net.num_features)
    else:
        feature_dim = _strip_last_linear(net)
    layer = gradcam_layer if gradcam_layer is not None else find_last_conv(net)
    modules = dict(net.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-5:]
        raise ValueError(
            f"gradcam_layer {layer!r} is not a module of {arch}; last conv layers: {convs}"
        )
    return ConciliumNet(
        AdapterBackbone(net),
        feature_dim=feature_dim,
        num_classes=num_classes,
        num_attributes=num_attributes,
        gradcam_layer=f"backbone.net.{layer}",
    )
