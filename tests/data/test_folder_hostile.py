"""The folder loader against corrupt and odd files (issue 16): each is read correctly or refused
with a ``FolderDatasetError`` that names the file. Every file is generated here with Pillow."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concilium.data import FolderDatasetError, load_folder
from concilium.data.io import MAX_PIXELS, read_image, read_mask

SIZE = (6, 8)  # (H, W)


def _rgb(seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _mask(size: tuple[int, int] = SIZE) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[1:4, 2:5] = 255
    return m


def _dataset(
    root: Path,
    *,
    image: Image.Image | bytes | None = None,
    name: str = "x.png",
    mask: Image.Image | None = None,
) -> Path:
    """Two classes of two images each; the first image (``images/a/<name>``) and its mask may
    be replaced by the given ones."""
    for label in ("a", "b"):
        for k in range(2):
            (root / "images" / label).mkdir(parents=True, exist_ok=True)
            (root / "masks" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_rgb(k + 2 * (label == "b"))).save(
                root / "images" / label / f"{label}{k}.png"
            )
            Image.fromarray(_mask()).save(root / "masks" / label / f"{label}{k}.png")
    if image is not None:
        path = root / "images" / "a" / name
        if isinstance(image, bytes):
            path.write_bytes(image)
        else:
            image.save(path)
        stem = os.path.splitext(name)[0]
        (mask if mask is not None else Image.fromarray(_mask(_size_of(path)))).save(
            root / "masks" / "a" / f"{stem}.png"
        )
    return root


def _size_of(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - a corrupt file: any mask will do
        return SIZE


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _refused(root: Path, *words: str) -> str:
    with pytest.raises(FolderDatasetError) as info:
        load_folder(root)
    message = str(info.value)
    for w in words:
        assert w in message, message
    return message


# --- corrupt files: refused, naming the file ------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files_are_refused_naming_the_file(tmp_path, fmt, keep):
    big = Image.fromarray(_rgb(size=(64, 64)))
    data = _png_bytes(big) if fmt == "png" else _jpeg_bytes(big)
    cut = data[: int(len(data) * keep)]
    root = _dataset(tmp_path, image=cut, name=f"x.{fmt}", mask=Image.fromarray(_mask((64, 64))))
    _refused(root, f"x.{fmt}")


def test_empty_and_non_image_files_are_refused(tmp_path):
    root = _dataset(tmp_path, image=b"", name="x.png")
    _refused(root, "x.png", "not a readable PNG/JPEG")
    (root / "images" / "a" / "x.png").write_bytes(b"<html>not an image</html>")
    _refused(root, "x.png")


def test_corrupted_bytes_never_escape_as_another_error(tmp_path):
    """Seeded byte flips in a PNG and a JPEG: each file loads or is refused clearly."""
    rng = np.random.default_rng(0)
    sources = {
        "png": _png_bytes(Image.fromarray(_rgb(size=(16, 16)))),
        "jpg": _jpeg_bytes(Image.fromarray(_rgb(size=(16, 16)))),
    }
    root = _dataset(
        tmp_path, image=sources["png"], name="x.png", mask=Image.fromarray(_mask((16, 16)))
    )
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(40):
        fmt = "png" if trial % 2 else "jpg"
        data = bytearray(sources[fmt])
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] = int(rng.integers(0, 256))
        for old in (root / "images" / "a").glob("x.*"):
            old.unlink()
        (root / "images" / "a" / f"x.{fmt}").write_bytes(bytes(data))
        try:
            ds = load_folder(root, size=(16, 16))
        except FolderDatasetError as err:
            assert f"x.{fmt}" in str(err) or "mask" in str(err), str(err)
            outcomes["refused"] += 1
        else:
            assert ds.images.shape == (5, 3, 16, 16)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 0


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (no pixel data follows)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 60_000])  # PIL warns over 89M pixels, raises over 179M
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side):
    assert side * side > MAX_PIXELS
    root = _dataset(
        tmp_path, image=_png_header_only(side, side), name="x.png", mask=Image.fromarray(_mask())
    )
    _refused(root, "x.png", "pixels")


def test_the_pixel_limit_holds_when_pillow_is_told_to_ignore_bombs(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    root = _dataset(
        tmp_path,
        image=_png_header_only(20_000, 20_000),
        name="x.png",
        mask=Image.fromarray(_mask()),
    )
    _refused(root, "x.png", "20000x20000", "more than 89,478,485 pixels")


def test_a_dataset_too_large_for_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    import concilium.data.folder as folder

    monkeypatch.setattr(folder, "_physical_memory", lambda: 1000)
    _refused(_dataset(tmp_path), "GiB", "--size")


# --- odd but valid files: read as displayed ----------------------------------------------------


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, SIZE[0] * SIZE[1]).reshape(SIZE).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_image(path)
    expected = np.round(grey / 257.0).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    mask16 = _mask().astype(np.uint16) * 257
    Image.fromarray(mask16).save(tmp_path / "m16.png")
    assert np.array_equal(read_mask(tmp_path / "m16.png"), _mask() > 127)


def test_palette_image_and_palette_mask(tmp_path):
    rgb = _rgb()
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    # a VOC-style palette mask: index 0 black background, index 1 dark red object
    m = Image.fromarray((_mask() > 0).astype(np.uint8), mode="P")
    m.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    m.save(tmp_path / "pm.png")
    assert np.array_equal(read_mask(tmp_path / "pm.png"), _mask() > 0)


def test_colour_mask_reads_any_channel(tmp_path):
    red = np.zeros((*SIZE, 3), np.uint8)
    red[..., 0] = _mask()
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(read_mask(tmp_path / "red.png"), _mask() > 0)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    rgb = np.full((*SIZE, 3), (200, 40, 90), np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    got = read_image(tmp_path / "c.jpg").astype(int)
    assert np.abs(got - rgb.astype(int)).max() <= 12, got[0, 0]


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.concatenate([_rgb(), np.zeros((*SIZE, 1), np.uint8)], axis=2)
    rgba[..., 3] = _mask()  # opaque where the mask is, transparent elsewhere
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    inside = _mask() > 0
    assert np.array_equal(got[inside], _rgb()[inside]) and not got[~inside].any()
    # a mask drawn as opaque white on a transparent sheet
    sheet = np.zeros((*SIZE, 4), np.uint8)
    sheet[..., :3] = 255
    sheet[..., 3] = _mask()
    Image.fromarray(sheet, mode="RGBA").save(tmp_path / "am.png")
    assert np.array_equal(read_mask(tmp_path / "am.png"), inside)


def test_exif_rotation_is_applied_to_images_masks_and_sizes(tmp_path):
    stored = _rgb(size=(6, 10))  # stored 10 wide, 6 high, displayed rotated: 6 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im = Image.fromarray(stored)
    data = _png_bytes(im, exif=exif)
    displayed = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    assert displayed.shape == (10, 6, 3)
    mask = Image.fromarray(_mask((10, 6)))  # drawn on the displayed image
    root = _dataset(tmp_path, image=data, name="x.png", mask=mask)
    ds = load_folder(root, size=(10, 6))
    k = ds.ids.index("x")
    assert np.array_equal((ds.images[k].permute(1, 2, 0).numpy() * 255).round(), displayed)
    assert np.array_equal(ds.masks[k].numpy(), _mask((10, 6)) > 0)
    # without a size, the mask-size check compares displayed sizes: a stored-size mask is refused
    (root / "masks" / "a" / "x.png").unlink()
    Image.fromarray(_mask((6, 10))).save(root / "masks" / "a" / "x.png")
    _refused(root, "x.png", "6x10")


# --- masks, ids and names -----------------------------------------------------------------------


def test_mask_of_another_size_is_refused_naming_both_files(tmp_path):
    root = _dataset(
        tmp_path, image=Image.fromarray(_rgb()), name="x.png", mask=Image.fromarray(_mask((5, 8)))
    )
    message = _refused(root, "masks/a/x.png", "images/a/x.png")
    assert "8x5" in message and "8x6" in message


def test_mask_that_is_a_jpeg_under_a_png_name_is_read(tmp_path):
    root = _dataset(tmp_path)
    (root / "masks" / "a" / "a0.png").write_bytes(_jpeg_bytes(Image.fromarray(_mask())))
    ds = load_folder(root)
    assert ds.masks[ds.ids.index("a0")].sum() == (_mask() > 0).sum()


def test_duplicate_ids_across_suffixes_and_classes_are_refused(tmp_path):
    root = _dataset(tmp_path)
    Image.fromarray(_rgb()).save(root / "images" / "a" / "a0.jpg")
    _refused(root, "duplicate id 'a0'")
    (root / "images" / "a" / "a0.jpg").unlink()
    Image.fromarray(_rgb()).save(root / "images" / "b" / "a0.png")
    _refused(root, "duplicate id 'a0'")


@pytest.mark.skipif(os.name != "posix", reason="byte file names are a POSIX matter")
@pytest.mark.parametrize("where", ["image", "label"])
def test_non_utf8_names_are_refused_and_the_message_prints(tmp_path, where):
    root = _dataset(tmp_path)
    bad = b"caf\xe9"  # latin-1, not UTF-8
    if where == "image":
        target = os.path.join(os.fsencode(root / "images" / "a"), bad + b".png")
        Image.fromarray(_rgb()).save(os.fsdecode(target))
    else:
        target = os.path.join(os.fsencode(root / "images"), bad)
        os.mkdir(target)
        Image.fromarray(_rgb()).save(os.fsdecode(os.path.join(target, b"z.png")))
    message = _refused(root, "not valid UTF-8", "caf\\xe9")
    message.encode("utf-8")  # printable: no lone surrogates


def test_utf8_names_are_fine(tmp_path):
    root = _dataset(tmp_path, image=Image.fromarray(_rgb()), name="café-日本.png")
    ds = load_folder(root)
    assert "café-日本" in ds.ids
