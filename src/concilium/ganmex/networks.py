"""The two GANMEX networks: a StarGAN-style conditional generator and a PatchGAN-style critic.

The generator ``G(x, t)`` receives the image and the target class ``t`` as ``K`` one-hot planes
concatenated to the image channels, down-samples twice, applies residual blocks and up-samples
twice back to the input size; its output lies in ``[0, 1]`` like every concilium image. The
critic is a stack of stride-2 convolutions ending in a ``(N, 1, h, w)`` grid of patch scores,
averaged to one Wasserstein score per image. It has no normalisation layer that mixes samples
(batch norm would break the per-sample gradient penalty of WGAN-GP).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["OUTPUTS", "Critic", "Generator", "check_image_size"]

OUTPUTS = ("additive", "tanh", "sigmoid", "residual")
"""The generator's output mappings to ``[0, 1]`` (see :class:`Generator`)."""

_EPS = 1e-3  # images are clamped to [_EPS, 1 - _EPS] before the logit of the residual output


def check_image_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` are at least 8 and divisible by 4.

    The generator halves the resolution twice and doubles it twice, so the output has the input's
    size only when both sides are multiples of 4.
    """
    for name, side in (("height", height), ("width", width)):
        if side < 8 or side % 4:
            raise ValueError(
                f"GANMEX images need a {name} that is >= 8 and divisible by 4; got {side} "
                f"(resize or crop the images, e.g. to {max(8, side - side % 4)})"
            )


class _ResidualBlock(nn.Module):
    """``x + conv-IN-ReLU-conv-IN(x)`` at constant width (StarGAN's bottleneck block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """StarGAN generator ``G(x, t)``: the image translated to target class ``t``.

    Args:
        num_classes: number of classes ``K`` of the frozen classifier (one-hot input planes).
        in_channels: image channels (3 for RGB).
        base_channels: width of the first convolution; doubled at each of the two
            down-sampling steps.
        num_residual: residual blocks at the bottleneck (StarGAN uses 6).
        output: how the last convolution ``out`` is mapped to ``[0, 1]``:

            * ``"additive"`` (default): a residual in pixel space,
              ``G = x + a * where(a >= 0, 1 - x, x)`` with ``a = tanh(out)``, and the last
              convolution initialised to zero. ``G`` starts as the exact identity, stays inside
              ``[0, 1]`` without clamping, and ``a = +-1`` reaches white or black from any pixel,
              so it learns only the change (no dead gradient at 0 or 1).
            * ``"tanh"``: ``(tanh + 1) / 2``, as in StarGAN and the reference; it re-synthesises
              the whole image, so it starts about 0.18 per pixel away from ``x``.
            * ``"sigmoid"``: ``sigmoid(out)``.
            * ``"residual"``: ``sigmoid(logit(x) + out)``, zero-initialised: the identity up to
              clamping ``x`` to ``[1e-3, 1 - 1e-3]``, but it barely moves pixels near 0 or 1.

    Shapes:
        ``forward(images (N, C, H, W), targets (N,)) -> (N, C, H, W)`` with ``H`` and ``W``
        divisible by 4.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 32,
        num_residual: int = 3,
        output: Literal["additive", "tanh", "sigmoid", "residual"] = "additive",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a counterfactual generator needs num_classes >= 2; got {num_classes}")
        if in_channels < 1 or base_channels < 1 or num_residual < 0:
            raise ValueError(
                "in_channels and base_channels must be >= 1 and num_residual >= 0; got "
                f"{in_channels}, {base_channels}, {num_residual}"
            )
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.output = output
        c = base_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + num_classes, c, 7, padding=3, bias=False),
            nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(2):  # down-sampling
            layers += [
                nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(2 * c, affine=True),
                nn.ReLU(inplace=True),
            ]
            c *= 2
        layers += [_ResidualBlock(c) for _ in range(num_residual)]
        for _ in range(2):  # up-sampling
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(c // 2, affine=True),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        last = nn.Conv2d(c, in_channels, 7, padding=3)
        if output in ("additive", "residual"):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        n, ch, h, w = images.shape
        if ch != self.in_channels:
            raise ValueError(
                f"the generator was built for {self.in_channels}-channel images; got {ch} channels"
            )
        check_image_size(h, w)
        onehot = torch.zeros(n, self.num_classes, h, w, dtype=images.dtype, device=images.device)
        onehot[torch.arange(n, device=images.device), targets.to(images.device)] = 1.0
        out = self.net(torch.cat([images, onehot], dim=1))
        if self.output == "additive":
            a = torch.tanh(out)
            return images + a * torch.where(a >= 0, 1.0 - images, images)
        if self.output == "tanh":
            return (torch.tanh(out) + 1.0) / 2.0
        if self.output == "residual":
            return torch.sigmoid(torch.logit(images, eps=_EPS) + out)
        return torch.sigmoid(out)


class Critic(nn.Module):
    """PatchGAN-style WGAN critic: one realism score per image (higher = more real).

    Args:
        image_size: ``(H, W)`` of the images; fixes the number of stride-2 layers.
        in_channels: image channels.
        base_channels: width of the first layer, doubled at each further layer (capped at
            ``8 * base_channels``).
        num_layers: stride-2 convolution layers; ``None`` halves the resolution until the
            smaller side would drop below 4 pixels (3 layers at 32 px, 5 at 224 px, at most 6).

    Shapes:
        ``patches(images) -> (N, 1, h, w)`` patch scores; ``forward(images) -> (N,)``, their mean.
    """

    def __init__(
        self,
        *,
        image_size: tuple[int, int],
        in_channels: int = 3,
        base_channels: int = 32,
        num_layers: int | None = None,
    ) -> None:
        super().__init__()
        h, w = image_size
        check_image_size(h, w)
        if num_layers is None:
            num_layers = max(1, min(6, int(math.log2(min(h, w) / 4))))
        if num_layers < 1 or min(h, w) >> num_layers < 1:
            raise ValueError(
                f"num_layers must be >= 1 and leave at least 1 pixel of {min(h, w)}; got {num_layers}"
            )
        self.image_size = (h, w)
        layers: list[nn.Module] = []
        c_in, c_out = in_channels, base_channels
        for _ in range(num_layers):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c_in, c_out = c_out, min(2 * c_out, 8 * base_channels)
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def patches(self, images: Tensor) -> Tensor:
        """Patch scores ``(N, 1, h, w)``."""
        return self.net(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.patches(images).mean(dim=(1, 2, 3))
