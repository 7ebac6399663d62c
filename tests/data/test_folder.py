"""Folder datasets: the round trip, resizing, splits, and a clear error for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from concilium.data import (
    FolderDatasetError,
    ImageDataset,
    SynthConfig,
    generate,
    load_folder,
    stratified_splits,
    write_folder,
)


@pytest.fixture(scope="module")
def synth() -> ImageDataset:
    return generate(SynthConfig(n=24, size=32, seed=2, clutter=1, watermark_class=0))


@pytest.fixture(scope="module")
def written(synth, tmp_path_factory) -> Path:
    return write_folder(synth, tmp_path_factory.mktemp("synth") / "data")


def _tiny(root: Path, *, n_per_class: int = 2, size: tuple[int, int] = (8, 8)) -> Path:
    """A hand-made folder dataset: two classes, images, masks, one part set, both CSVs."""
    rng = np.random.default_rng(0)
    ids = []
    for label in ("cat", "dog"):
        for k in range(n_per_class):
            sid = f"{label}{k}"
            ids.append(sid)
            for sub in ("images", "masks", "parts/ears"):
                (root / sub / label).mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "images" / label / f"{sid}.png")
            mask = np.zeros(size, np.uint8)
            mask[2:5, 1:4] = 200
            Image.fromarray(mask).save(root / "masks" / label / f"{sid}.png")
            Image.fromarray(mask // 2 + 10).save(root / "parts" / "ears" / label / f"{sid}.png")
    (root / "attributes.csv").write_text(
        "id,furry,small\n" + "".join(f"{s},1,{i % 2}\n" for i, s in enumerate(ids))
    )
    (root / "splits.csv").write_text(
        "id,split\n" + "".join(f"{s},{'train' if i % 2 else 'test'}\n" for i, s in enumerate(ids))
    )
    return root


# ----------------------------------------------------------------------------------------------
# round trip and reading
# ----------------------------------------------------------------------------------------------


def test_round_trip_of_the_benchmark(synth, written):
    back = load_folder(written)
    assert torch.equal(back.images, synth.images)  # 8-bit benchmark images come back exactly
    assert torch.equal(back.labels, synth.labels)
    assert torch.equal(back.masks, synth.masks)
    assert set(back.parts) == set(synth.parts)
    for name in synth.parts:
        assert torch.equal(back.parts[name], synth.parts[name]), name
    assert torch.equal(back.attributes, synth.attributes)
    assert back.attribute_names == synth.attribute_names
    assert back.ids == synth.ids and back.splits == synth.splits
    assert back.class_names == synth.class_names
    assert back.class_part_values == synth.class_part_values
    assert back.card["config"] == synth.card["config"]
    targets = torch.full((len(synth),), 3)
    assert torch.equal(back.difference_masks(targets), synth.difference_masks(targets))
    assert back.fingerprint() == synth.fingerprint()


def test_layout_and_card(written, synth):
    assert (written / "images" / synth.class_names[0]).is_dir()
    assert {p.name for p in (written / "parts").iterdir()} == set(synth.parts)
    card = json.loads((written / "card.json").read_text())
    assert card["card"]["config"]["seed"] == 2
    assert card["class_names"] == synth.class_names


def test_write_refuses_a_non_empty_folder_then_overwrites(synth, tmp_path):
    out = tmp_path / "d"
    small = synth.subset([0, 1, 2])
    write_folder(small, out)
    with pytest.raises(ValueError, match="not empty"):
        write_folder(small, out)
    write_folder(synth.subset([3, 4]), out, overwrite=True)
    assert load_folder(out).ids == [synth.ids[3], synth.ids[4]]


def test_hand_made_folder(tmp_path):
    ds = load_folder(_tiny(tmp_path))
    assert ds.class_names == ["cat", "dog"]
    assert ds.ids == ["cat0", "cat1", "dog0", "dog1"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.splits == ["test", "train", "test", "train"]
    assert ds.attribute_names == ["furry", "small"]
    assert ds.attributes[:, 1].tolist() == [0, 1, 0, 1]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:5, 1:4] = True
    assert torch.equal(ds.masks[0], expected)
    assert torch.equal(ds.parts["ears"][0], torch.zeros(8, 8, dtype=torch.bool))  # 110 <= 127
    raw = np.array(Image.open(tmp_path / "images" / "cat" / "cat1.png"))
    assert torch.equal(ds.images[1], torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    assert ds.class_part_values is None


def test_resize_images_and_masks_to_the_requested_size(tmp_path):
    root = _tiny(tmp_path)
    # one image and its masks twice as large: resized to the first image's size
    big = np.zeros((16, 16, 3), np.uint8)
    big[:, 8:] = 255
    Image.fromarray(big).save(root / "images" / "dog" / "dog1.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(root / "masks" / "dog" / "dog1.png")
    Image.fromarray(mask).save(root / "parts" / "ears" / "dog" / "dog1.png")
    ds = load_folder(root)
    assert ds.image_size == (8, 8)
    assert ds.masks[3, :, :4].all() and not ds.masks[3, :, 4:].any()  # nearest: stays binary
    assert ds.images[3, :, :, :3].max() < 0.05 and ds.images[3, :, :, 5:].min() > 0.95
    ds16 = load_folder(root, size=(16, 12))
    assert ds16.images.shape == (4, 3, 16, 12) and ds16.parts["ears"].shape == (4, 16, 12)


def test_jpeg_images_are_read(tmp_path):
    root = _tiny(tmp_path)
    png = root / "images" / "cat" / "cat0.png"
    Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=95)
    png.unlink()
    ds = load_folder(root)
    assert ds.ids[0] == "cat0" and ds.images.shape == (4, 3, 8, 8)


def test_without_splits_csv_the_split_is_seeded_and_stratified(written, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(written, root)
    (root / "splits.csv").unlink()
    a = load_folder(root, seed=4, split_fractions=(0.5, 0.25, 0.25))
    b = load_folder(root, seed=4, split_fractions=(0.5, 0.25, 0.25))
    assert a.splits == b.splits
    assert a.splits == stratified_splits(a.labels, fractions=(0.5, 0.25, 0.25), seed=4)
    assert a.splits.count("train") == 12
    assert a.card["split_seed"] == 4


def test_stratified_splits_hand_values():
    labels = [0] * 10 + [1] * 10
    s = stratified_splits(labels, fractions=(0.6, 0.2, 0.2), seed=1)
    assert s.count("train") == 12 and s.count("val") == 4 and s.count("test") == 4
    assert s[:10].count("train") == 6 and s[10:].count("train") == 6
    assert s == stratified_splits(labels, fractions=(0.6, 0.2, 0.2), seed=1)
    assert s != stratified_splits(labels, fractions=(0.6, 0.2, 0.2), seed=2)
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_splits(labels, fractions=(0.6, 0.6, 0.2))


def test_progress_is_reported(written):
    calls = []
    load_folder(written, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (24, 24)


# ----------------------------------------------------------------------------------------------
# every bad input: a clear error that names the file
# ----------------------------------------------------------------------------------------------


def _corrupt(root: Path, case: str) -> str:
    """Break the tiny dataset in one way; return a fragment the error message must contain."""
    if case == "no images folder":
        shutil.rmtree(root / "images")
        return "images"
    if case == "no label folders":
        for d in (root / "images").iterdir():
            shutil.rmtree(d)
        return "no label folders"
    if case == "empty label folder":
        (root / "images" / "bird").mkdir()
        return "bird has no images"
    if case == "file directly in images":
        (root / "images" / "stray.png").write_bytes(b"x")
        return "stray.png"
    if case == "not an image":
        (root / "images" / "cat" / "notes.txt").write_text("hi")
        return "notes.txt"
    if case == "unreadable image":
        (root / "images" / "cat" / "cat1.png").write_bytes(b"not a png at all")
        return "cat1.png"
    if case == "truncated image":
        p = root / "images" / "dog" / "dog0.png"
        big = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(big).save(p)
        p.write_bytes(p.read_bytes()[:70])
        return "dog0.png"
    if case == "duplicate id":
        shutil.copy(root / "images" / "cat" / "cat0.png", root / "images" / "dog" / "cat0.png")
        return "duplicate id 'cat0'"
    if case == "no masks folder":
        shutil.rmtree(root / "masks")
        return "masks"
    if case == "image without mask":
        (root / "masks" / "dog" / "dog1.png").unlink()
        return "dog1.png"
    if case == "mask without image":
        shutil.copy(root / "masks" / "dog" / "dog1.png", root / "masks" / "dog" / "dog9.png")
        return "dog9.png"
    if case == "unreadable mask":
        (root / "masks" / "cat" / "cat0.png").write_bytes(b"\x89PNG broken")
        return "cat0.png"
    if case == "mask of another size":
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "masks" / "dog" / "dog0.png")
        return "dog0.png"
    if case == "part mask of another size":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "parts/ears/cat/cat1.png")
        return "ears"
    if case == "missing part mask":
        (root / "parts" / "ears" / "cat" / "cat1.png").unlink()
        return "cat1.png"
    if case == "attributes without id column":
        (root / "attributes.csv").write_text("name,furry\ncat0,1\n")
        return "'id'"
    if case == "attribute not 0/1":
        text = (root / "attributes.csv").read_text().replace("dog0,1,", "dog0,yes,")
        (root / "attributes.csv").write_text(text)
        return "'yes'"
    if case == "attribute row missing":
        lines = (root / "attributes.csv").read_text().splitlines()
        (root / "attributes.csv").write_text("\n".join(lines[:-1]) + "\n")
        return "dog1"
    if case == "attribute unknown id":
        with (root / "attributes.csv").open("a") as fh:
            fh.write("cow0,1,1\n")
        return "cow0"
    if case == "attribute duplicate id":
        with (root / "attributes.csv").open("a") as fh:
            fh.write("cat0,1,1\n")
        return "duplicate id 'cat0'"
    if case == "attribute ragged row":
        text = (root / "attributes.csv").read_text().replace("cat1,1,1", "cat1,1")
        (root / "attributes.csv").write_text(text)
        return "line 3"
    if case == "attribute duplicate column":
        text = (root / "attributes.csv").read_text().replace("id,furry,small", "id,furry,furry")
        (root / "attributes.csv").write_text(text)
        return "unique"
    if case == "bad split name":
        text = (root / "splits.csv").read_text().replace("cat1,train", "cat1,training")
        (root / "splits.csv").write_text(text)
        return "'training'"
    if case == "bad split columns":
        (root / "splits.csv").write_text("id,fold\ncat0,1\n")
        return "id,split"
    if case == "split row missing":
        (root / "splits.csv").write_text("id,split\ncat0,train\n")
        return "cat1"
    if case == "card not json":
        (root / "card.json").write_text("{oops")
        return "card.json"
    if case == "card classes disagree":
        (root / "card.json").write_text(json.dumps({"class_names": ["cat", "cow"]}))
        return "card.json"
    raise AssertionError(case)


CASES = [
    "no images folder",
    "no label folders",
    "empty label folder",
    "file directly in images",
    "not an image",
    "unreadable image",
    "truncated image",
    "duplicate id",
    "no masks folder",
    "image without mask",
    "mask without image",
    "unreadable mask",
    "mask of another size",
    "part mask of another size",
    "missing part mask",
    "attributes without id column",
    "attribute not 0/1",
    "attribute row missing",
    "attribute unknown id",
    "attribute duplicate id",
    "attribute ragged row",
    "attribute duplicate column",
    "bad split name",
    "bad split columns",
    "split row missing",
    "card not json",
    "card classes disagree",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_folder_raises_naming_the_file(tmp_path, case):
    root = _tiny(tmp_path / "data")
    fragment = _corrupt(root, case)
    with pytest.raises(FolderDatasetError) as info:
        load_folder(root)
    assert fragment in str(info.value), str(info.value)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_folder(tmp_path / "nowhere")


def test_folder_error_is_a_value_error():
    assert issubclass(FolderDatasetError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": "big"}, TypeError),
        ({"size": (0, 8)}, ValueError),
        ({"split_fractions": (0.9, 0.2, 0.0)}, ValueError),
    ],
)
def test_bad_load_arguments(tmp_path, kwargs, error):
    root = _tiny(tmp_path)
    with pytest.raises(error):
        load_folder(root, **kwargs)


def test_write_rejects_unsafe_names(synth, tmp_path):
    bad = synth.subset([0, 1])
    bad.class_names = ["a/b", *bad.class_names[1:]]
    bad.labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="class name 'a/b'"):
        write_folder(bad, tmp_path / "out")
    with pytest.raises(TypeError, match="ImageDataset"):
        write_folder({"images": 1}, tmp_path / "out2")


def test_dataset_without_attributes_or_parts_round_trips(synth, tmp_path):
    bare = synth.subset([0, 1, 2, 3])
    bare.attributes, bare.attribute_names, bare.parts = None, [], {}
    out = write_folder(bare, tmp_path / "bare")
    assert not (out / "attributes.csv").exists() and not (out / "parts").exists()
    back = load_folder(out)
    assert back.attributes is None and back.parts == {}
    assert torch.equal(back.images, bare.images) and torch.equal(back.masks, bare.masks)
