"""Reading and writing images and masks with Pillow, with errors that name the file.

Images are ``(H, W, 3)`` uint8 arrays, masks ``(H, W)`` bool arrays. Any file Pillow reads as a
PNG or JPEG is accepted, whatever its mode, and read as it is displayed:

- the EXIF orientation is applied (a phone photo stored sideways is read upright, and its size
  is the displayed one);
- 16-bit (and 32-bit integer) greyscale is scaled to 8 bits (65535 -> 255), not clipped;
- palette, greyscale and CMYK files are converted to RGB;
- transparency is composited over black (a transparent pixel is black in an image and outside
  in a mask);
- a mask pixel is inside when any of its colour channels is above 127 (for a greyscale mask:
  its grey value), so a white, red or palette-coloured annotation on black reads as inside.

A file whose header claims more than :data:`MAX_PIXELS` pixels is refused before any pixel is
decoded (a decompression bomb), as is a file that is truncated or corrupt.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes read as images (case-insensitive)."""

MAX_PIXELS = 89_478_485
"""The most pixels (width x height) an image or mask may have: Pillow's default decompression
bomb limit (about 9,459 x 9,459), enforced here whatever ``PIL.Image.MAX_IMAGE_PIXELS`` says."""

_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
"""What Pillow raises on a truncated, corrupt or oversized file."""

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class FolderDatasetError(ValueError):
    """A folder dataset breaks the documented format; the message names the file and the fix."""


def shown(path: str | Path) -> str:
    """``path`` as printable text: bytes of a name that is not UTF-8 are shown as ``\\xff``
    escapes, so the message naming the file can be printed and logged."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _open(path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise FolderDatasetError(
            f"{what} {shown(path)} does not exist; add it or remove its image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FolderDatasetError(
            f"{what} {shown(path)} claims more than {MAX_PIXELS:,} pixels (a decompression "
            "bomb, or a huge image); resize it before adding it to the dataset"
        ) from None
    except _DECODE_ERRORS as err:
        raise FolderDatasetError(
            f"{what} {shown(path)} is not a readable PNG/JPEG ({err}); re-export it or remove it"
        ) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise FolderDatasetError(
            f"{what} {shown(path)} is {width}x{height}, more than {MAX_PIXELS:,} pixels; "
            "resize it before adding it to the dataset"
        )
    if width < 1 or height < 1:
        im.close()
        raise FolderDatasetError(f"{what} {shown(path)} has no pixels ({width}x{height})")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except _DECODE_ERRORS + (TypeError,):
        return 1  # an unreadable EXIF block: read the pixels as stored


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """The displayed ``(height, width)`` of an image file (EXIF orientation applied), read
    from its header only."""
    with _open(path, what) as im:
        width, height = im.size
        if _orientation(im) in _ROTATED:
            width, height = height, width
    return height, width


def _displayed(im: Image.Image) -> Image.Image:
    """The decoded image as displayed: upright, 8 bits per channel, alpha over black; mode
    ``L`` or ``RGB``."""
    if _orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if im.mode in ("1", "L"):
        return im.convert("L")
    return im.convert("RGB")


def read_image(path: Path, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, resized (bilinear) to ``size = (H, W)``."""
    with _open(path, "image") as im:
        try:
            im = _displayed(im).convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
        except _DECODE_ERRORS as err:
            raise FolderDatasetError(
                f"image {shown(path)} could not be decoded ({err}); re-export it or remove it"
            ) from None


def read_mask(path: Path, *, size: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """Read a mask as ``(H, W)`` bool (a channel above 127), resized (nearest) to ``size``."""
    with _open(path, what) as im:
        try:
            im = _displayed(im)
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
            a = np.asarray(im, dtype=np.uint8)
            return (a.max(axis=2) if a.ndim == 3 else a) > 127
        except _DECODE_ERRORS as err:
            raise FolderDatasetError(
                f"{what} {shown(path)} could not be decoded ({err}); re-export it or remove it"
            ) from None


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 image as PNG (lossless)."""
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        path, format="PNG", compress_level=1
    )


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write an ``(H, W)`` bool mask as a 1-bit PNG (inside = 255)."""
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(path, format="PNG")
