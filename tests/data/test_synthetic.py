"""The ground-truth benchmark: determinism, mask consistency, knobs and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path as MplPath
from pydantic import ValidationError

from concilium.data import ImageDataset, SynthConfig, generate
from concilium.data import synthetic as syn

ATTRIBUTE_PARTS = ("beak", "wings", "tail")


@pytest.fixture(scope="module")
def small() -> ImageDataset:
    return generate(SynthConfig(n=96, size=32, seed=7, clutter=2, watermark_class=1))


@pytest.fixture(scope="module")
def large() -> ImageDataset:
    """Enough samples to check rates: rare class, watermark rate and label noise."""
    config = SynthConfig(
        n=2400,
        size=32,
        seed=11,
        watermark_class=2,
        watermark_rate=0.5,
        rare_class=5,
        rare_fraction=0.04,
        label_noise=0.1,
    )
    return generate(config)


def _within_binomial(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# ----------------------------------------------------------------------------------------------
# (a) hand values and slow re-implementations
# ----------------------------------------------------------------------------------------------


def test_triangle_matches_point_in_polygon_reference():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 2, size=(4000, 2))
    tri = [(0.1, 0.2), (1.5, 0.4), (0.3, 1.3)]
    ours = syn._triangle(pts[:, 0], pts[:, 1], *tri)
    ref = MplPath(tri).contains_points(pts)
    # points exactly on an edge may differ; random points never are
    assert np.array_equal(ours, ref)
    # the orientation of the vertices does not matter
    assert np.array_equal(syn._triangle(pts[:, 0], pts[:, 1], tri[0], tri[2], tri[1]), ours)


def test_ellipse_hand_values():
    x = np.array([0.0, 0.6, 0.63, 0.0, 0.0])
    y = np.array([0.0, 0.0, 0.0, 0.35, 0.37])
    assert syn._ellipse(x, y, 0.0, 0.0, 0.62, 0.36).tolist() == [True, True, False, True, False]


def test_class_table_is_unambiguous_and_has_two_or_more_parts():
    for i, a in enumerate(syn.CLASS_TABLE):
        assert len(a) >= 2
        assert all(a[p] in syn.PART_VALUES[p] for p in a)
        for b in syn.CLASS_TABLE[i + 1 :]:
            # some part is defined in both with different values: no bird fits both classes
            assert any(p in b and a[p] != b[p] for p in a)


def test_attributes_follow_the_class_definition(small):
    names = small.attribute_names
    for i in range(len(small)):
        row = small.attributes[i]
        for part in ATTRIBUTE_PARTS:
            cols = [k for k, n in enumerate(names) if n.startswith(part + "_")]
            assert row[cols].sum() == 1
        cols = [k for k, n in enumerate(names) if n.startswith("body_")]
        assert row[cols].sum() == 1
        # noise-free labels here: the defining attributes are on
        for part, value in small.class_part_values[int(small.labels[i])].items():
            assert row[names.index(f"{part}_{value}")] == 1


# ----------------------------------------------------------------------------------------------
# (b) properties
# ----------------------------------------------------------------------------------------------


def test_same_config_gives_byte_identical_data():
    config = SynthConfig(n=40, size=32, seed=3, clutter=1, watermark_class=0, label_noise=0.2)
    a, b = generate(config), generate(config)
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert torch.equal(a.labels, b.labels) and a.splits == b.splits and a.ids == b.ids
    assert torch.equal(a.masks, b.masks)
    assert all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)
    assert torch.equal(a.attributes, b.attributes)
    assert a.fingerprint() == b.fingerprint()


def test_other_seed_gives_other_data():
    a = generate(n=20, size=32, seed=0)
    b = generate(n=20, size=32, seed=1)
    assert not torch.equal(a.images, b.images)
    assert a.fingerprint() != b.fingerprint()


def test_sample_does_not_depend_on_n():
    big = generate(n=70, size=32, seed=5)
    few = generate(n=9, size=32, seed=5)
    assert torch.equal(big.images[:9], few.images)
    assert torch.equal(big.parts["evidence"][:9], few.parts["evidence"])
    assert torch.equal(big.labels[:9], few.labels)


def test_images_are_8bit_quantised_and_in_range(small):
    x = small.images
    assert x.dtype == torch.float32 and x.shape == (96, 3, 32, 32)
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal((x * 255).round() / 255, x)


def test_parts_are_disjoint_and_make_up_the_object(small):
    stack = torch.stack([small.parts[p] for p in syn.PART_NAMES])
    assert stack.sum(0).max() <= 1
    assert torch.equal(stack.any(0), small.masks)
    for name in (*syn.PART_NAMES, "evidence"):
        assert not (small.parts[name] & ~small.masks).any(), name


def test_every_part_is_visible_and_no_bird_leaves_the_image(large):
    unmarked = ~large.parts["watermark"].flatten(1).any(1)
    for name in syn.PART_NAMES:
        assert large.parts[name][unmarked].flatten(1).any(1).all(), name
    m = large.masks
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def test_evidence_is_the_union_of_the_defining_parts(small):
    for i in range(len(small)):
        definition = small.class_part_values[int(small.labels[i])]
        expected = torch.zeros_like(small.masks[i])
        for part in definition:
            expected |= small.parts[part][i]
        assert torch.equal(small.parts["evidence"][i], expected)
        assert small.parts["evidence"][i].any()


def test_clutter_is_never_evidence_nor_object(small):
    clutter = small.parts["clutter"]
    assert clutter.any(), "clutter=2 must draw distractors"
    assert not (clutter & small.parts["evidence"]).any()
    assert not (clutter & small.masks).any()


def test_watermark_only_where_and_when_drawn():
    base = SynthConfig(n=120, size=32, seed=4, noise=0.0)
    plain = generate(base)
    marked = generate(
        SynthConfig(**{**base.model_dump(), "watermark_class": 3, "watermark_rate": 0.7})
    )
    wm = marked.parts["watermark"]
    has = wm.flatten(1).any(1)
    assert has.any()
    assert (marked.labels[has] == 3).all()  # only the watermark class gets it
    assert not plain.parts["watermark"].any()
    # outside the watermark mask the images are those drawn without a watermark
    outside = ~wm[:, None].expand_as(marked.images)
    assert torch.equal(marked.images[outside], plain.images[outside])
    # inside, the pixels are the watermark's white fill or magenta ink
    px = marked.images.permute(0, 2, 3, 1)[wm]
    white = (px == torch.tensor([1.0, 1.0, 1.0])).all(1)
    magenta = (px == torch.tensor([1.0, 0.0, 1.0])).all(1)
    assert (white | magenta).all() and white.any() and magenta.any()
    # masks lose the pixels the watermark covers, nothing else
    assert torch.equal(marked.masks, plain.masks & ~wm)


def test_label_noise_changes_labels_only():
    base = SynthConfig(n=60, size=32, seed=8)
    clean = generate(base)
    noisy = generate(SynthConfig(**{**base.model_dump(), "label_noise": 0.3}))
    assert torch.equal(clean.images, noisy.images)
    assert torch.equal(clean.parts["evidence"], noisy.parts["evidence"])
    flipped = [clean.ids[i] for i in torch.nonzero(clean.labels != noisy.labels).flatten()]
    assert flipped and flipped == noisy.card["noisy_ids"]


def test_rare_class_rate(large):
    counts = torch.bincount(large.labels, minlength=8)
    n = len(large)
    # labels include 10% label noise: the rare class's label rate is
    # 0.9 * 0.04 + 0.1 * (1 - 0.04) / 7
    p = 0.9 * 0.04 + 0.1 * 0.96 / 7
    assert _within_binomial(int(counts[5]), n, p), counts.tolist()
    assert counts[5] < counts.float().mean() / 2


def test_watermark_and_label_noise_rates(large):
    has = large.parts["watermark"].flatten(1).any(1)
    noisy = set(large.card["noisy_ids"])
    # the watermark is tied to the drawn class; recover it by undoing the label flips
    drawn = torch.tensor([i for i, s in enumerate(large.ids) if s not in noisy])
    clean_labels = large.labels[drawn]
    of_class = int((clean_labels == 2).sum())
    assert _within_binomial(int(has[drawn][clean_labels == 2].sum()), of_class, 0.5)
    assert not has[drawn][clean_labels != 2].any()
    assert _within_binomial(len(noisy), len(large), 0.1)


def test_difference_masks(small):
    n = len(small)
    own = small.difference_masks(small.labels)
    assert not own.any(), "a class against itself differs nowhere"
    # classes 0 and 3 differ in the wings only: the difference mask is the wings mask
    assert small.class_part_values[0] == {"beak": "short", "wings": "plain"}
    assert small.class_part_values[3] == {"beak": "short", "wings": "striped"}
    sel = small.labels == 0
    targets = torch.full((n,), 3)
    diff = small.difference_masks(targets)
    assert sel.any()
    assert torch.equal(diff[sel], small.parts["wings"][sel])
    # classes 0 and 1 differ in beak, wings (defined by 0 only) and tail (defined by 1 only)
    diff01 = small.difference_masks(torch.ones(n, dtype=torch.long))
    union = small.parts["beak"] | small.parts["wings"] | small.parts["tail"]
    assert torch.equal(diff01[sel], union[sel])


def test_splits_are_stratified_with_requested_fractions(large):
    splits = np.array(large.splits)
    assert (splits == "train").sum() == round(0.7 * len(large))
    assert (splits == "val").sum() == round(0.85 * len(large)) - round(0.7 * len(large))
    for c in range(8):
        share = (splits[large.labels.numpy() == c] == "train").mean()
        assert abs(share - 0.7) < 0.05


def test_progress_and_overrides():
    calls = []
    ds = generate(
        SynthConfig(clutter=1), n=5, size=40, seed=2, progress=lambda d, t: calls.append((d, t))
    )
    assert len(ds) == 5 and ds.image_size == (40, 40)
    assert ds.card["config"]["clutter"] == 1 and ds.card["config"]["seed"] == 2
    assert calls[-1] == (5, 5)


# ----------------------------------------------------------------------------------------------
# (c) validation: every bad knob raises a clear error
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"size": 16}, "size"),
        ({"size": 300}, "size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 99}, "num_classes"),
        ({"n": 0}, "n"),
        ({"watermark_class": 8}, "watermark_class=8"),
        ({"watermark_rate": 0.5}, "needs watermark_class"),
        ({"watermark_class": 0, "watermark_rate": 1.5}, "watermark_rate"),
        ({"rare_class": 9}, "rare_class=9"),
        ({"rare_fraction": 0.01}, "needs rare_class"),
        ({"rare_class": 0, "rare_fraction": 0.3}, "not rare"),
        ({"label_noise": 0.9}, "label_noise"),
        ({"split_fractions": (0.5, 0.2, 0.2)}, "split_fractions"),
        ({"clutter": -1}, "clutter"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_config_raises_naming_the_field(knobs, message):
    with pytest.raises(ValidationError, match=message):
        SynthConfig(**knobs)


def test_config_round_trips_through_the_card(small):
    config = SynthConfig(**small.card["config"])
    assert config == SynthConfig(n=96, size=32, seed=7, clutter=2, watermark_class=1)
    assert config.watermark_rate == 0.8 and config.rare_fraction is None
    plain = SynthConfig(**SynthConfig().model_dump())
    assert plain.watermark_rate is None and plain.rare_class is None
    assert SynthConfig(rare_class=2).rare_fraction == 0.02


def test_generate_rejects_non_config():
    with pytest.raises(TypeError, match="SynthConfig"):
        generate({"n": 3})


def _difference_masks_slow(ds: ImageDataset, targets: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(ds.masks)
    for i, (c, t) in enumerate(zip(ds.labels.tolist(), targets.tolist(), strict=True)):
        a, b = ds.class_part_values[c], ds.class_part_values[t]
        for part in set(a) | set(b):
            if a.get(part) != b.get(part):
                out[i] |= ds.parts[part][i]
    return out


def test_difference_masks_match_a_slow_loop(small):
    targets = torch.randint(0, 8, (len(small),), generator=torch.Generator().manual_seed(0))
    assert torch.equal(small.difference_masks(targets), _difference_masks_slow(small, targets))


def test_difference_masks_reject_bad_targets(small):
    with pytest.raises(ValueError, match=r"targets must be \(96,\)"):
        small.difference_masks(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="lie in"):
        small.difference_masks(torch.full((96,), 8))
