"""The architecture registry: small image classifiers defined in-project (no torchvision).

Every factory takes ``(*, num_classes, num_attributes=0, in_channels=3)`` and returns a
:class:`~concilium.models.base.ConciliumNet` whose ``gradcam_layer`` names its last
convolutional layer. All networks end in global average pooling, so any image size from 32 px
upwards works.

Every ReLU is its own, non-inplace ``nn.ReLU`` module and ``forward`` uses no functional
activations: Captum's DeepLift and GuidedBackprop hook ReLU modules, and an in-place or shared
ReLU silently corrupts their attributions.

Registered names:

- ``small-cnn``: 4 conv blocks (16-32-64-128 channels, BN + ReLU, max pool between blocks),
  ~98k parameters, fast on CPU at 64x64. GradCAM layer ``backbone.features.conv4``.
- ``resnet18``: ResNet-18 with a CIFAR-style stem (3x3 conv, stride 1, no max pool) for 32 to
  64 px images, base width 64 (11.2M parameters). GradCAM layer ``backbone.layer4.1.conv2``.
- ``resnet18-small``: the same network at base width 16 (0.7M parameters).
- ``vgg11``: VGG-11 with batch norm, the last max pool dropped so 32 px images keep a 2x2 map.
  GradCAM layer ``backbone.features.conv8``.
- ``vgg11-small``: the same network at a quarter of the widths (16 ... 128 channels).

``create_model`` also accepts ``timm:<name>`` and ``torchvision:<name>`` (see
:mod:`concilium.models.adapters`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import Tensor, nn

from concilium._registry import Registry
from concilium.models.adapters import create_adapter
from concilium.models.base import ConciliumNet
from concilium.models.weights import load_state_dict_file, load_weights_into

ArchitectureFactory = Callable[..., ConciliumNet]

ARCHITECTURES: Registry[ArchitectureFactory] = Registry("architecture")


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=False),
    ]


def _plain_features(in_channels: int, plan: list[int | str]) -> tuple[nn.Sequential, int]:
    """A named sequential stack: ``conv{i}``/``bn{i}``/``relu{i}`` per int, ``pool{j}`` per "M"."""
    features = nn.Sequential()
    ch, conv_i, pool_i = in_channels, 0, 0
    for item in plan:
        if item == "M":
            pool_i += 1
            features.add_module(f"pool{pool_i}", nn.MaxPool2d(kernel_size=2))
            continue
        conv_i += 1
        conv, bn, relu = _conv_bn_relu(ch, int(item))
        features.add_module(f"conv{conv_i}", conv)
        features.add_module(f"bn{conv_i}", bn)
        features.add_module(f"relu{conv_i}", relu)
        ch = int(item)
    return features, ch


class PlainBackbone(nn.Module):
    """Convolutional features, global average pooling and flattening: ``(N, C, H, W) -> (N, D)``.

    Args:
        in_channels: image channels.
        plan: channel widths of successive 3x3 conv + BN + ReLU layers, ``"M"`` for a 2x2 max
            pool.
    """

    def __init__(self, *, in_channels: int, plan: list[int | str]) -> None:
        super().__init__()
        self.features, self.out_dim = _plain_features(in_channels, plan)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        last = max(i for i, p in enumerate(plan) if p != "M")
        self.last_conv = f"features.conv{sum(1 for p in plan[: last + 1] if p != 'M')}"

    def forward(self, x: Tensor) -> Tensor:
        return self.flatten(self.pool(self.features(x)))


def _check_sizes(num_classes: int, num_attributes: int, in_channels: int) -> None:
    for name, value, low in (
        ("num_classes", num_classes, 1),
        ("num_attributes", num_attributes, 0),
        ("in_channels", in_channels, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int; got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}; got {value}")


_FACTORY_ARGS = """

    Args:
        num_classes: number of classes.
        num_attributes: attribute-head width (0: no attribute head). Default 0.
        in_channels: image channels. Default 3.
"""


def _classifier(
    backbone: Callable[..., PlainBackbone | ResNetBackbone],
    *,
    num_classes: int,
    num_attributes: int,
    in_channels: int,
) -> ConciliumNet:
    """``backbone(in_channels=...)`` with the class (and attribute) heads; GradCAM on its last
    conv."""
    _check_sizes(num_classes, num_attributes, in_channels)
    net = backbone(in_channels=in_channels)
    return ConciliumNet(
        net,
        feature_dim=net.out_dim,
        num_classes=num_classes,
        num_attributes=num_attributes,
        gradcam_layer=f"backbone.{net.last_conv}",
    )


def _architecture(
    name: str, backbone: Callable[..., PlainBackbone | ResNetBackbone], summary: str
) -> ArchitectureFactory:
    """Register the factory ``name`` of :func:`_classifier` on ``backbone``; ``summary`` is the
    first paragraph of its docstring."""

    def factory(
        *, num_classes: int, num_attributes: int = 0, in_channels: int = 3
    ) -> ConciliumNet:
        return _classifier(
            backbone,
            num_classes=num_classes,
            num_attributes=num_attributes,
            in_channels=in_channels,
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = summary + _FACTORY_ARGS
    return ARCHITECTURES.register(name)(factory)


def _vgg11_plan(width: int) -> list[int | str]:
    w = width
    return [w, "M", 2 * w, "M", 4 * w, 4 * w, "M", 8 * w, 8 * w, "M", 8 * w, 8 * w]


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs with BN, an identity (or 1x1 projection) shortcut,
    and a ReLU after the sum. Each ReLU is its own module (``relu1``, ``relu2``)."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=False)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """ResNet with a CIFAR-style stem (3x3 conv, stride 1, no max pool) for 32 to 64 px images.

    Args:
        in_channels: image channels.
        width: channels of the first stage; stages have ``width * (1, 2, 4, 8)``.
        blocks: basic blocks per stage (``(2, 2, 2, 2)`` is ResNet-18).
    """

    def __init__(
        self, *, in_channels: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1; got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        ch = width
        for stage, n in enumerate(blocks):
            out = width * 2**stage
            layers = [
                BasicBlock(ch if i == 0 else out, out, stride=1 if stage == 0 or i else 2)
                for i in range(n)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
            ch = out
        self.num_stages = len(blocks)
        self.out_dim = ch
        self.last_conv = f"layer{len(blocks)}.{blocks[-1] - 1}.conv2"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.flatten(self.pool(x))


def resnet18_net(
    *, num_classes: int, num_attributes: int = 0, in_channels: int = 3, width: int = 64
) -> ConciliumNet:
    """ResNet-18 (CIFAR stem) of any base ``width``. GradCAM layer:
    ``backbone.layer4.1.conv2`` (the last conv, at 1/8 of the input resolution).

    Args:
        num_classes: number of classes.
        num_attributes: attribute-head width (0: no attribute head). Default 0.
        in_channels: image channels. Default 3.
        width: channels of the first stage. Default 64 (the standard ResNet-18).
    """
    return _classifier(
        partial(ResNetBackbone, width=width),
        num_classes=num_classes,
        num_attributes=num_attributes,
        in_channels=in_channels,
    )


small_cnn = _architecture(
    "small-cnn",
    partial(PlainBackbone, plan=[16, "M", 32, "M", 64, "M", 128]),
    """Four conv blocks (16, 32, 64, 128 channels; BN + ReLU; 2x2 max pool between blocks) and
    global average pooling: ~98k parameters. GradCAM layer: ``backbone.features.conv4`` (the
    last conv, at 1/8 of the input resolution).""",
)
vgg11 = _architecture(
    "vgg11",
    partial(PlainBackbone, plan=_vgg11_plan(64)),
    """VGG-11 with batch norm (64 ... 512 channels), the fifth max pool dropped and the
    fully-connected classifier replaced by global average pooling (a 32 px image keeps a 2x2 map
    for GradCAM). GradCAM layer: ``backbone.features.conv8``.""",
)
vgg11_small = _architecture(
    "vgg11-small",
    partial(PlainBackbone, plan=_vgg11_plan(16)),
    """``vgg11`` at a quarter of the widths (16 ... 128 channels, ~0.6M parameters).
    GradCAM layer: ``backbone.features.conv8``.""",
)
resnet18 = _architecture(
    "resnet18",
    partial(ResNetBackbone, width=64),
    """ResNet-18, CIFAR-style stem, base width 64. GradCAM layer: ``backbone.layer4.1.conv2``.""",
)
resnet18_small = _architecture(
    "resnet18-small",
    partial(ResNetBackbone, width=16),
    """ResNet-18, CIFAR-style stem, base width 16 (fast on CPU). GradCAM layer:
    ``backbone.layer4.1.conv2``.""",
)


def architecture_names() -> list[str]:
    """Registered architecture names plus the adapter prefixes (``timm:``, ``torchvision:``)."""
    return [*ARCHITECTURES.names(), "timm:<name>", "torchvision:<name>"]


def create_model(
    arch: str,
    *,
    num_classes: int,
    num_attributes: int = 0,
    in_channels: int = 3,
    weights: str | Path | None = None,
) -> ConciliumNet:
    """Build a network by name.

    Args:
        arch: a registered name (``small-cnn``, ``resnet18``, ``resnet18-small``, ``vgg11``,
            ``vgg11-small``) or an adapter ``timm:<name>`` / ``torchvision:<name>``.
        num_classes: number of classes.
        num_attributes: attribute-head width (0: no attribute head). Default 0.
        in_channels: image channels. Default 3.
        weights: optional local weights file (``.safetensors``, or ``.pt``/``.pth`` read with
            ``torch.load(weights_only=True)``). For registered names it is a state dict of the
            whole :class:`ConciliumNet` (e.g. a member's ``model.safetensors``), loaded strictly;
            for adapters it is the original library's state dict for ``<name>`` (see
            :func:`concilium.models.adapters.create_adapter`). Nothing is ever downloaded.
            Default ``None`` (random initialisation).

    Returns:
        The network, in training mode, on the CPU.

    Raises:
        ValueError: unknown ``arch`` (the message lists the valid names), bad sizes, or
            weights that do not fit the network.
        TypeError: ``arch`` is not a string.
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string such as 'small-cnn'; got {type(arch).__name__}")
    if ":" in arch:
        return create_adapter(
            arch,
            num_classes=num_classes,
            num_attributes=num_attributes,
            in_channels=in_channels,
            weights=weights,
        )
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; valid names: {', '.join(architecture_names())}"
        )
    model = ARCHITECTURES.get(arch)(
        num_classes=num_classes, num_attributes=num_attributes, in_channels=in_channels
    )
    if weights is not None:
        load_weights_into(model, load_state_dict_file(weights), source=str(weights))
    return model
