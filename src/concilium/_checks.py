"""Input checks shared by every public entry point: shapes, dtypes and values, checked once at
the boundary, with errors that name the problem and the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(images: object, name: str = "images") -> Tensor:
    """Check a batch of images ``(N, C, H, W)``, floating point and finite."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"{name} must be (N, C, H, W); got shape {tuple(images.shape)}"
            + (" (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else "")
        )
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1]; got {images.dtype} (use images.float() / 255)")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return images


def check_maps(maps: object, name: str = "maps") -> Tensor:
    """Check a batch of explanation maps ``(N, H, W)``, floating point."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, H, W); got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(
            f"{name} must be (N, H, W); got shape {tuple(maps.shape)}"
            + (" (reduce the channel axis first, e.g. maps.sum(1))" if maps.ndim == 4 else "")
        )
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be floating point; got {maps.dtype}")
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values; check the explanation method")
    return maps


def check_masks(masks: object, like: Tensor | None = None, name: str = "masks") -> Tensor:
    """Check boolean masks ``(N, H, W)``; ``like`` (maps or images) fixes N, H and W."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, H, W); got {type(masks).__name__}")
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W); got shape {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"{name} must be bool; got {masks.dtype} (use masks > 0.5)")
    if like is not None:
        expected = (like.shape[0], *like.shape[-2:])
        if tuple(masks.shape) != tuple(expected):
            raise ValueError(f"{name} must be (N, H, W) = {expected} like the maps; got {tuple(masks.shape)}")
    return masks


def check_labels(labels: object, n: int, num_classes: int | None = None, name: str = "labels") -> Tensor:
    """Check integer class indices ``(N,)`` in ``[0, num_classes)``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N,); got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must be ({n},); got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must be integer class indices; got {labels.dtype}")
    if num_classes is not None and n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}); got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()
