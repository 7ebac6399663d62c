"""Tiny models and images for the explain tests (16x16, a few thousand parameters)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concilium.models.base import ConciliumNet


def tiny_net(*, seed: int = 0, num_classes: int = 3, num_attributes: int = 2,
             in_channels: int = 3, dtype: torch.dtype = torch.float32,
             smooth: bool = False) -> ConciliumNet:
    """A small CNN following the model contract: two convs (GradCAM on the second).

    ``smooth=True`` uses Softplus instead of ReLU, so path integrals have no kinks.
    """
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1),
        nn.Softplus() if smooth else nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.Softplus() if smooth else nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )
    net = ConciliumNet(backbone, feature_dim=32, num_classes=num_classes,
                       num_attributes=num_attributes, gradcam_layer="backbone.2")
    return net.to(dtype)


@pytest.fixture
def net() -> ConciliumNet:
    return tiny_net()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def make_net():
    """The :func:`tiny_net` factory, for tests that need fresh or special models."""
    return tiny_net
