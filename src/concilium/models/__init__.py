"""Models: the architecture registry, multitask heads, ensemble training, safe checkpoints."""

from concilium.models.base import AttributeView, ConciliumNet

__all__ = ["AttributeView", "ConciliumNet"]
