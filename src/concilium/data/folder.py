"""Folder datasets: the way users bring their own images, masks, parts and attributes.

Layout (``DATA`` is any folder)::

    DATA/images/<label>/<id>.<png|jpg|jpeg>   one folder per class, ids unique across classes
    DATA/masks/<label>/<id>.png               the region a good explanation points at (a channel > 127 inside)
    DATA/parts/<part>/<label>/<id>.png        optional named mask sets (every image needs one)
    DATA/attributes.csv                       optional: id, then one 0/1 column per attribute
    DATA/splits.csv                           optional: id, split (train, val or test)
    DATA/card.json                            optional: class order, class_part_values, card

Everything is checked (files present, readable headers, sizes, CSV columns and values, ids)
before any pixel is decoded; every error names the file and the fix.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from concilium._util import atomic_write_text
from concilium.data.dataset import SPLITS, ImageDataset, stratified_splits
from concilium.data.io import (
    IMAGE_SUFFIXES,
    FolderDatasetError,
    image_size,
    read_image,
    read_mask,
    shown,
    write_image,
    write_mask,
)

CARD_FORMAT = "concilium-folder"
MAX_CARD_BYTES = 16 * 2**20
"""The largest ``card.json`` read (16 MiB): a card is metadata, not data."""
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-=]*$")

__all__ = ["FolderDatasetError", "load_folder", "write_folder"]


def _visible(entries: Sequence[Path]) -> list[Path]:
    """The entries not hidden (no leading dot), sorted; a name that is not valid UTF-8 is an
    error (ids and class names go into JSON, CSV and parquet files)."""
    out = []
    for p in entries:
        if p.name.startswith("."):
            continue
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise FolderDatasetError(
                f"{shown(p)} has a name that is not valid UTF-8; rename it (ids and class names "
                "are written to JSON, CSV and parquet files)"
            ) from None
        out.append(p)
    return sorted(out)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _scan_images(root: Path) -> list[tuple[str, str, Path]]:
    """``(label, id, path)`` of every image, after checking the folder structure."""
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FolderDatasetError(
            f"{shown(images_dir)} does not exist; a folder dataset keeps its images in "
            "DATA/images/<label>/<id>.png"
        )
    entries = _visible(list(images_dir.iterdir()))
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise FolderDatasetError(
            f"{shown(stray[0])} lies directly in images/; move it into images/<label>/"
        )
    if not entries:
        raise FolderDatasetError(
            f"{shown(images_dir)} has no label folders; put each class's images in images/<label>/"
        )
    found: list[tuple[str, str, Path]] = []
    seen: dict[str, Path] = {}
    for label_dir in entries:
        files = _visible(list(label_dir.iterdir()))
        for f in files:
            if f.is_dir():
                raise FolderDatasetError(
                    f"{shown(f)} is a folder inside a label folder; images/<label>/ holds image files only"
                )
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise FolderDatasetError(
                    f"{shown(f)} is not a .png/.jpg/.jpeg image; convert or remove it"
                )
            sid = f.stem
            if sid in seen:
                raise FolderDatasetError(
                    f"duplicate id {sid!r}: {shown(seen[sid])} and {shown(f)}; ids must be unique across all "
                    "label folders, rename one of them"
                )
            seen[sid] = f
            found.append((label_dir.name, sid, f))
        if not files:
            raise FolderDatasetError(
                f"label folder {shown(label_dir)} has no images; add images or remove the folder"
            )
    found.sort(key=lambda t: _natural_key(t[1]))
    return found


def _mask_paths(base: Path, what: str, items: list[tuple[str, str, Path]]) -> list[Path]:
    """The mask file of every image under ``base/<label>/<id>.png``; every one must exist and no
    mask may lack its image."""
    if not base.is_dir():
        raise FolderDatasetError(
            f"{shown(base)} does not exist; every image needs a {what} {shown(base)}/<label>/<id>.png"
        )
    paths = []
    for label, sid, img in items:
        p = base / label / f"{sid}.png"
        if not p.is_file():
            raise FolderDatasetError(
                f"{what} {shown(p)} is missing for image {shown(img)}; add it (a PNG, > 127 inside)"
            )
        paths.append(p)
    expected = {(label, f"{sid}.png") for label, sid, _ in items}
    for label_dir in _visible(list(base.iterdir())):
        if not label_dir.is_dir():
            raise FolderDatasetError(
                f"{shown(label_dir)} should be a label folder; move or remove it"
            )
        for f in _visible(list(label_dir.iterdir())):
            if (label_dir.name, f.name) not in expected:
                raise FolderDatasetError(
                    f"{what} {shown(f)} has no image images/{label_dir.name}/{f.stem}.<png|jpg>; "
                    "add the image or remove the mask"
                )
    return paths


def _read_csv(
    path: Path, ids: list[str], *, header: list[str] | None = None
) -> tuple[list[str], dict[str, list[str]]]:
    """Header and ``id -> row values`` of a CSV whose first column is ``id`` (and whose header
    is exactly ``header`` when given); every image id must appear exactly once and no other id
    may."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise FolderDatasetError(
            f"{shown(path)} could not be read ({err}); save it as UTF-8 CSV"
        ) from None
    if not rows or not rows[0] or rows[0][0].strip() != "id":
        raise FolderDatasetError(
            f"{shown(path)} must start with a header row whose first column is 'id'"
        )
    found = [h.strip() for h in rows[0]]
    if header is not None and found != header:
        raise FolderDatasetError(
            f"{shown(path)} must have exactly the columns {','.join(header)}; got {','.join(found)}"
        )
    header = found
    values: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise FolderDatasetError(
                f"{shown(path)} line {line} has {len(row)} columns, the header has {len(header)}"
            )
        sid = row[0].strip()
        if sid in values:
            raise FolderDatasetError(
                f"{shown(path)} line {line}: duplicate id {sid!r}; keep one row"
            )
        values[sid] = [v.strip() for v in row[1:]]
    known = set(ids)
    unknown = [s for s in values if s not in known]
    if unknown:
        raise FolderDatasetError(
            f"{shown(path)} lists id {unknown[0]!r} that has no image ({len(unknown)} unknown ids); "
            "remove the row or add the image"
        )
    missing = [s for s in ids if s not in values]
    if missing:
        raise FolderDatasetError(
            f"{shown(path)} has no row for image id {missing[0]!r} ({len(missing)} missing); "
            "add a row for every image"
        )
    return header, values


def _attributes(path: Path, ids: list[str]) -> tuple[torch.Tensor, list[str]]:
    header, values = _read_csv(path, ids)
    names = header[1:]
    if not names:
        raise FolderDatasetError(f"{shown(path)} has no attribute columns after 'id'")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise FolderDatasetError(
            f"{shown(path)}: attribute column names must be non-empty and unique"
        )
    out = np.zeros((len(ids), len(names)), np.float32)
    for i, sid in enumerate(ids):
        for j, v in enumerate(values[sid]):
            if v not in ("0", "1"):
                raise FolderDatasetError(
                    f"{shown(path)}: id {sid!r}, column {names[j]!r} holds {v!r}; attributes are 0 or 1"
                )
            out[i, j] = float(v)
    return torch.from_numpy(out), names


def _splits(path: Path, ids: list[str]) -> list[str]:
    _, values = _read_csv(path, ids, header=["id", "split"])
    out = []
    for sid in ids:
        split = values[sid][0]
        if split not in SPLITS:
            raise FolderDatasetError(
                f"{shown(path)}: id {sid!r} has split {split!r}; use one of {', '.join(SPLITS)}"
            )
        out.append(split)
    return out


def _card(path: Path, labels: list[str]) -> tuple[list[str], list[dict[str, str]] | None, dict]:
    """Class order, class_part_values and the data card from ``card.json`` (when present)."""
    names = sorted(set(labels))
    if not path.is_file():
        return names, None, {}
    if path.stat().st_size > MAX_CARD_BYTES:
        raise FolderDatasetError(
            f"{shown(path)} is {path.stat().st_size:,} bytes, more than a card may hold "
            f"({MAX_CARD_BYTES:,}); keep only class_names, class_part_values and a short card"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as err:
        raise FolderDatasetError(
            f"{shown(path)} is not valid JSON ({err}); fix or delete it"
        ) from None
    if not isinstance(card, dict):
        raise FolderDatasetError(f"{shown(path)} must hold a JSON object; fix or delete it")
    order = card.get("class_names")
    if order is not None:
        if (
            not isinstance(order, list)
            or not all(isinstance(c, str) for c in order)
            or len(set(order)) != len(order)
            or not set(names) <= set(order)
        ):
            raise FolderDatasetError(
                f"{shown(path)} lists the classes {order} but images/ has the label folders {names}; "
                "list every label folder once in class_names or delete class_names from the card"
            )
        names = list(order)
    cpv = card.get("class_part_values")
    if cpv is not None and (
        not isinstance(cpv, list)
        or len(cpv) != len(names)
        or not all(isinstance(d, dict) for d in cpv)
    ):
        raise FolderDatasetError(
            f"{shown(path)}: class_part_values must be a list of {len(names)} objects (one per class)"
        )
    extra = card.get("card", {})
    return names, cpv, extra if isinstance(extra, dict) else {"card": extra}


def _target_size(size: int | tuple[int, int] | None, first: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return first
    if isinstance(size, bool):
        raise TypeError(f"size must be an int or (height, width); got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be an int or (height, width); got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive; got {size}")
    return (size[0], size[1])


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(n: int, h: int, w: int, mask_sets: int, root: Path) -> None:
    """Refuse a dataset whose decoded tensors would not fit in this machine's memory, before
    allocating them (the images are float32, each mask set one byte per pixel)."""
    need = n * h * w * (3 * 4 + 1 + mask_sets)
    total = _physical_memory()
    if total is not None and need > total:
        raise FolderDatasetError(
            f"{shown(root)}: {n} images of {h}x{w} need {need / 2**30:.1f} GiB decoded, more "
            f"than this machine's {total / 2**30:.1f} GiB; load them at a smaller size "
            "(size=..., --size)"
        )


def load_folder(
    path: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: Callable[[int, int], None] | None = None,
) -> ImageDataset:
    """Load a folder dataset (see the module docstring for the layout).

    Args:
        path: the dataset folder ``DATA``.
        size: output size, an int (square) or ``(height, width)``; images of another size are
            resized bilinearly, their masks by nearest neighbour. Default: the first image's size.
        seed: seed of the stratified train/val/test split used when there is no ``splits.csv``.
        split_fractions: train, val and test fractions of that split.
        progress: called as ``progress(done, total)`` while pixels are read.

    Returns:
        An :class:`ImageDataset` ordered by id (natural order: ``s2`` before ``s10``); classes are
        the label folders in sorted order, or in the order of ``card.json`` when it has one.

    Raises:
        FileNotFoundError: if ``path`` is not a folder.
        FolderDatasetError: (a ``ValueError``) for any file that breaks the format; the message
            names the file and the fix.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {shown(root)} does not exist; check the path")
    fr = tuple(split_fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(
            f"split_fractions must be three non-negative numbers summing to 1; got {split_fractions}"
        )
    items = _scan_images(root)
    ids = [sid for _, sid, _ in items]
    labels_text = [label for label, _, _ in items]
    masks = _mask_paths(root / "masks", "mask", items)
    parts: dict[str, list[Path]] = {}
    parts_dir = root / "parts"
    if parts_dir.exists():
        for part_dir in _visible(list(parts_dir.iterdir())):
            if not part_dir.is_dir():
                raise FolderDatasetError(
                    f"{shown(part_dir)} lies directly in parts/; part masks go in parts/<part>/<label>/"
                )
            parts[part_dir.name] = _mask_paths(part_dir, f"part mask ({part_dir.name})", items)
    attributes, attribute_names = None, []
    if (root / "attributes.csv").exists():
        attributes, attribute_names = _attributes(root / "attributes.csv", ids)
    if (root / "splits.csv").exists():
        splits = _splits(root / "splits.csv", ids)
        split_seed = None
    else:
        splits, split_seed = None, seed
    class_names, class_part_values, card = _card(root / "card.json", labels_text)
    index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([index[label] for label in labels_text], dtype=torch.long)
    if splits is None:
        splits = stratified_splits(labels, fractions=fr, seed=seed)

    # headers: every file readable, every mask the size of its image
    sizes = []
    for k, (_, _, img) in enumerate(items):
        hw = image_size(img)
        sizes.append(hw)
        for what, p in [("mask", masks[k])] + [
            (f"part mask ({n})", ps[k]) for n, ps in parts.items()
        ]:
            mhw = image_size(p, what)
            if mhw != hw:
                raise FolderDatasetError(
                    f"{what} {shown(p)} is {mhw[1]}x{mhw[0]} but its image {shown(img)} is {hw[1]}x{hw[0]} "
                    "(width x height); export the mask at the image's size"
                )
    out_size = _target_size(size, sizes[0])

    n = len(items)
    h, w = out_size
    _check_memory(n, h, w, len(parts), root)
    images = torch.empty((n, 3, h, w), dtype=torch.float32)
    object_masks = torch.empty((n, h, w), dtype=torch.bool)
    part_masks = {name: torch.empty((n, h, w), dtype=torch.bool) for name in parts}
    for k, (_, _, img) in enumerate(items):
        pixels = read_image(img, size=out_size)
        images[k] = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        object_masks[k] = torch.from_numpy(read_mask(masks[k], size=out_size))
        for name, ps in parts.items():
            part_masks[name][k] = torch.from_numpy(
                read_mask(ps[k], size=out_size, what=f"part mask ({name})")
            )
        if progress is not None and (k + 1 == n or (k + 1) % 256 == 0):
            progress(k + 1, n)
    folder_card = {**card, "folder": shown(root.resolve())}
    if split_seed is not None:
        folder_card["split_seed"] = split_seed
        folder_card["split_fractions"] = list(fr)
    return ImageDataset(
        images=images,
        labels=labels,
        masks=object_masks,
        ids=ids,
        splits=splits,
        class_names=class_names,
        parts=part_masks,
        attributes=attributes,
        attribute_names=attribute_names,
        class_part_values=class_part_values,
        card=folder_card,
    )


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} cannot be a file or folder name; use letters, digits and . _ + - ="
        )


def write_folder(
    dataset: ImageDataset,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a dataset in the folder format that :func:`load_folder` reads.

    Images are written as 8-bit PNG; ``masks/`` holds the object masks; every mask set of
    ``dataset.parts`` (evidence, each part, watermark, ...) goes to ``parts/<name>/``; plus
    ``attributes.csv`` (when the dataset has attributes), ``splits.csv`` and ``card.json`` (class
    order, attribute names, ``class_part_values`` and the dataset card, e.g. generator parameters).

    Args:
        dataset: the dataset to write.
        out: the output folder; created if needed.
        overwrite: replace an existing dataset in ``out`` (its ``images/``, ``masks/``,
            ``parts/`` and the CSV/JSON files); otherwise a non-empty ``out`` is an error.
        progress: called as ``progress(done, total)`` while files are written.

    Returns:
        The output folder.

    Raises:
        TypeError: if ``dataset`` is not an :class:`ImageDataset`.
        ValueError: if ``out`` is not empty (and ``overwrite`` is false), or a class name, id or
            mask set name cannot be used as a file name.
    """
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{shown(root)} is a file; choose a folder for the dataset")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(
                f"{shown(root)} is not empty; choose a new folder or pass overwrite=True (--overwrite)"
            )
        for sub in ("images", "masks", "parts"):
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
        for name in ("attributes.csv", "splits.csv", "card.json"):
            (root / name).unlink(missing_ok=True)
    for name in dataset.class_names:
        _check_name(name, "class name")
    for name in dataset.parts:
        _check_name(name, "mask set name")
    for sid in dataset.ids:
        _check_name(sid, "sample id")
    root.mkdir(parents=True, exist_ok=True)
    label_names = [dataset.class_names[c] for c in dataset.labels.tolist()]
    dirs = [root / "images", root / "masks"] + [root / "parts" / p for p in dataset.parts]
    for d in dirs:
        for name in set(label_names):
            (d / name).mkdir(parents=True, exist_ok=True)
    pixels = (dataset.images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    pixels = pixels.numpy()
    obj = dataset.masks.numpy()
    sets = {name: m.numpy() for name, m in dataset.parts.items()}
    n = len(dataset)
    for k, (sid, label) in enumerate(zip(dataset.ids, label_names, strict=True)):
        write_image(root / "images" / label / f"{sid}.png", pixels[k])
        write_mask(root / "masks" / label / f"{sid}.png", obj[k])
        for name, m in sets.items():
            write_mask(root / "parts" / name / label / f"{sid}.png", m[k])
        if progress is not None and (k + 1 == n or (k + 1) % 256 == 0):
            progress(k + 1, n)
    if dataset.attributes is not None:
        with (root / "attributes.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *dataset.attribute_names])
            values = dataset.attributes.numpy() > 0.5
            for sid, row in zip(dataset.ids, values, strict=True):
                writer.writerow([sid, *(int(v) for v in row)])
    with (root / "splits.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "split"])
        writer.writerows(zip(dataset.ids, dataset.splits, strict=True))
    card = {
        "format": CARD_FORMAT,
        "version": 1,
        "class_names": list(dataset.class_names),
        "attribute_names": list(dataset.attribute_names),
        "class_part_values": dataset.class_part_values,
        "card": {k: v for k, v in dataset.card.items() if k != "folder"},
    }
    atomic_write_text(root / "card.json", json.dumps(card, indent=2) + "\n")
    return root
