"""Tiny shared inputs for the metric tests: a small CNN, a linear model, images, maps, masks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """A ~300-parameter CNN: conv -> ReLU -> pool -> linear, 3 classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class LinearNet(nn.Module):
    """Two logits: ``[sum(w * x), 0]`` -- the hand-computable model."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(weights.clone())

    def forward(self, x: Tensor) -> Tensor:
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def input_x_gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Input x gradient summed over channels, the explainer used by the tests."""
    x = images.detach().clone().requires_grad_(True)
    out = model(x).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(out, x)
    return (grad * x).sum(1).detach()


def make_batch(n: int = 4, c: int = 1, size: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet(c).eval()
    images = torch.rand(n, c, size, size, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    maps = torch.randn(n, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i, 1 + i % 3 : 6 + i % 3, 2 : 2 + 3 + i] = True
    return model, images, labels, maps, masks


#: Parameters that keep each metric fast on the tiny batch of :func:`make_batch`.
FAST = {
    "top_k_intersection": {"k": 20},
    "faithfulness_correlation": {"nr_runs": 10, "subset_size": 10},
    "pixel_flipping": {"step": 10},
    "monotonicity": {"step": 10},
    "monotonicity_correlation": {"nr_samples": 3, "step": 10},
    "road": {"percentages": (10, 50, 90)},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},
    "local_lipschitz": {"nr_samples": 3},
    "consistency": {"discretise": "first_n_sign"},  # random maps share no top-5 key
}
