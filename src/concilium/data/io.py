"""Reading and writing images and masks with Pillow, with errors that name the file.

Images are ``(H, W, 3)`` uint8 arrays, masks ``(H, W)`` bool arrays (a mask pixel is inside when
its grey value is above 127).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes read as images (case-insensitive)."""


class FolderDatasetError(ValueError):
    """A folder dataset breaks the documented format; the message names the file and the fix."""


def _open(path: Path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise FolderDatasetError(
            f"{what} {path} does not exist; add it or remove its image"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise FolderDatasetError(
            f"{what} {path} is not a readable PNG/JPEG ({err}); re-export it or remove it"
        ) from None


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """The ``(height, width)`` of an image file, read from its header only."""
    with _open(path, what) as im:
        width, height = im.size
    return height, width


def read_image(path: Path, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, resized (bilinear) to ``size = (H, W)``."""
    with _open(path, "image") as im:
        try:
            im = im.convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
        except OSError as err:
            raise FolderDatasetError(
                f"image {path} could not be decoded ({err}); re-export it or remove it"
            ) from None


def read_mask(path: Path, *, size: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """Read a mask as ``(H, W)`` bool (grey value > 127), resized (nearest) to ``size``."""
    with _open(path, what) as im:
        try:
            im = im.convert("L")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
            return np.asarray(im, dtype=np.uint8) > 127
        except OSError as err:
            raise FolderDatasetError(
                f"{what} {path} could not be decoded ({err}); re-export it or remove it"
            ) from None


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 image as PNG (lossless)."""
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        path, format="PNG", compress_level=1
    )


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write an ``(H, W)`` bool mask as a 1-bit PNG (inside = 255)."""
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(path, format="PNG")
