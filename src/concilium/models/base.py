"""The model contract every concilium architecture follows.

A :class:`ConciliumNet` is a backbone producing a feature vector, a class head and an optional
attribute head (multitask). ``forward`` returns class logits, so any Captum method works on it
directly; :class:`AttributeView` exposes the attribute logits as a module of its own, so that an
attribute head is explained exactly like a class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConciliumNet(nn.Module):
    """Backbone + class head (+ attribute head).

    Args:
        backbone: maps ``(N, C, H, W)`` images to ``(N, feature_dim)`` features.
        feature_dim: width of the backbone's output.
        num_classes: number of classes.
        num_attributes: number of binary attributes (0 for no attribute head).
        gradcam_layer: dotted name, within this module, of the last convolutional layer
            (e.g. ``"backbone.features.6"``), the default layer for GradCAM.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        num_classes: int,
        num_attributes: int = 0,
        gradcam_layer: str,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.num_attributes = num_attributes
        self.head = nn.Linear(feature_dim, num_classes)
        self.attribute_head = nn.Linear(feature_dim, num_attributes) if num_attributes else None
        self.gradcam_layer = gradcam_layer
        names = dict(self.named_modules())
        if gradcam_layer not in names:
            raise ValueError(f"gradcam_layer {gradcam_layer!r} is not a module of this network")

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(N, feature_dim)``."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.head(self.backbone(x))

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Class logits and attribute logits (``None`` without an attribute head), one pass."""
        f = self.backbone(x)
        attrs = self.attribute_head(f) if self.attribute_head is not None else None
        return self.head(f), attrs

    def reset_heads(self, generator: torch.Generator) -> None:
        """Re-initialise the class (and attribute) head from ``generator`` (head diversity)."""
        for head in (self.head, self.attribute_head):
            if head is None:
                continue
            bound = 1.0 / head.in_features**0.5
            with torch.no_grad():
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)

    def gradcam_module(self) -> nn.Module:
        """The module named by ``gradcam_layer``.

        Raises:
            ValueError: no module has that name (the message lists the convolutional ones).
        """
        modules = dict(self.named_modules())
        if not self.gradcam_layer or self.gradcam_layer not in modules:  # "" is the model itself
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise ValueError(
                f"gradcam_layer {self.gradcam_layer!r} names no module of this model; "
                f"its convolutional layers: {', '.join(convs[-8:]) or 'none'}"
            )
        return modules[self.gradcam_layer]


class AttributeView(nn.Module):
    """A view of a multitask model whose ``forward`` returns the attribute logits ``(N, A)``.

    Shares parameters with the model; explaining attribute ``a`` of ``model`` is explaining
    target ``a`` of ``AttributeView(model)``.
    """

    def __init__(self, model: ConciliumNet) -> None:
        super().__init__()
        if getattr(model, "attribute_head", None) is None:
            raise ValueError(
                "this model has no attribute head; train it with attributes (multitask)"
            )
        self.model = model
        self.gradcam_layer = f"model.{model.gradcam_layer}"

    def forward(self, x: Tensor) -> Tensor:
        return self.model.attribute_head(self.model.backbone(x))
