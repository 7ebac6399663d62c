"""Interpretable features for perturbation methods: SLIC superpixels and square patches.

Both return integer feature masks ``(N, 1, H, W)`` with ids ``0..K-1`` per image, the form
Captum's ``feature_mask`` expects (broadcast over channels).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import slic
from torch import Tensor


def superpixels(images: Tensor, *, n_segments: int = 50, compactness: float = 10.0) -> Tensor:
    """SLIC superpixels of each image (scikit-image; deterministic for given inputs).

    Connected superpixels are used unless enforcing connectivity leaves fewer than
    ``max(2, n_segments // 4)`` of them (noise-like images), in which case the raw SLIC clusters
    are kept.

    Args:
        images: ``(N, C, H, W)`` images in ``[0, 1]``.
        n_segments: approximate number of superpixels per image.
        compactness: SLIC colour-versus-space trade-off (higher: squarer segments).

    Returns:
        ``(N, 1, H, W)`` int64 masks on the images' device, ids consecutive from 0 per image.
    """
    arr = images.detach().to("cpu", torch.float64).numpy()
    masks = []
    for img in arr:
        seg = _slic(img, n_segments, compactness, connected=True)
        if len(np.unique(seg)) < max(2, n_segments // 4):
            # Noise-like images collapse when connectivity is enforced: keep the raw clusters.
            seg = _slic(img, n_segments, compactness, connected=False)
        _, seg = np.unique(seg, return_inverse=True)
        masks.append(seg.reshape(img.shape[1:]))
    out = torch.from_numpy(np.stack(masks)).long().unsqueeze(1)
    return out.to(images.device)


def _slic(img: np.ndarray, n_segments: int, compactness: float, *, connected: bool) -> np.ndarray:
    if img.shape[0] == 1:
        return slic(img[0], n_segments=n_segments, compactness=compactness, start_label=0,
                    channel_axis=None, enforce_connectivity=connected)
    return slic(np.moveaxis(img, 0, -1), n_segments=n_segments, compactness=compactness,
                start_label=0, channel_axis=-1, enforce_connectivity=connected)


def patches(images: Tensor, *, size: int) -> Tensor:
    """Square patches of ``size`` pixels (the last row/column of patches may be smaller).

    Returns:
        ``(1, 1, H, W)`` int64 mask (the same for every image) on the images' device.
    """
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device) // size
    cols = torch.arange(w, device=images.device) // size
    per_row = int(cols.max()) + 1
    return (rows.view(-1, 1) * per_row + cols.view(1, -1)).view(1, 1, h, w)


def pixels(value: int | float, side: int) -> int:
    """A size given in pixels (``int``) or as a fraction of the image side (``float`` in (0, 1])."""
    if isinstance(value, float):
        return max(1, round(value * side))
    return max(1, min(int(value), side))
