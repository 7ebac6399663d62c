"""The benchmark's exact one-vs-one ground truth: counterfactuals x* and changed-pixel masks."""

from __future__ import annotations

import pytest
import torch

from concilium.data import (
    ImageDataset,
    SynthConfig,
    changed_masks,
    counterfactuals,
    generate,
    load_folder,
    render_counterfactuals,
    write_folder,
)
from concilium.data import synthetic as syn


@pytest.fixture(scope="module")
def ds() -> ImageDataset:
    return generate(SynthConfig(n=64, size=32, seed=3, clutter=1, watermark_class=1,
                                label_noise=0.1))


def _shown(ds: ImageDataset) -> torch.Tensor:
    """The class each image shows (its label unless label noise flipped it)."""
    idx = torch.arange(len(ds)).numpy()
    return torch.from_numpy(syn._true_classes(SynthConfig(**ds.card["config"]), idx))


def _other_targets(ds: ImageDataset) -> torch.Tensor:
    shown = _shown(ds)
    return (shown + 1 + torch.arange(len(ds)) % (ds.num_classes - 1)) % ds.num_classes


def test_own_class_reproduces_every_image_exactly(ds):
    # the drawn class (not the possibly noisy label) reproduces the image bit for bit
    idx, shown = torch.arange(len(ds)), _shown(ds)
    assert int((shown != ds.labels).sum()) > 0  # label noise is in play
    assert torch.equal(render_counterfactuals(SynthConfig(**ds.card["config"]), idx, shown),
                       ds.images)
    assert not changed_masks(ds, shown).any()


def test_counterfactual_has_the_target_parts_and_nothing_else_changes(ds):
    config = SynthConfig(**ds.card["config"])
    targets = _other_targets(ds)
    x_star = counterfactuals(ds, targets)
    # regenerate each x* as a dataset row with its attributes: slow, independent check that the
    # target's defining part values are drawn and every other attribute is the sample's own
    for i in range(0, len(ds), 7):
        t = int(targets[i])
        p = syn._Params(1, config.size, config.clutter)
        syn._draw(config, i, p, 0, config.class_probabilities().cumsum())
        for part, values in syn.PART_VALUES.items():
            if part in syn.CLASS_TABLE[t]:
                p.values[part][0] = values.index(syn.CLASS_TABLE[t][part])
        pixels, masks = syn._render(config, p)
        assert torch.equal(torch.from_numpy(pixels[0] / 255.0).float(), x_star[i])
    changed = changed_masks(ds, targets)
    # pixels outside the changed mask are identical; inside, at least one channel differs
    same = (x_star == ds.images).all(dim=1)
    assert torch.equal(~same, changed)
    # a class that differs in a defined part always changes some pixel, never the background
    assert changed.flatten(1).any(1).all()
    obj_or_target = ds.masks | (x_star != ds.images).any(1)
    assert not (changed & ~obj_or_target).any()


def test_changed_mask_differs_from_the_part_masks_for_tail_pairs():
    # the review's E2: the target's tail shape falls partly outside x's own tail mask
    data = generate(SynthConfig(n=200, size=32, seed=0))
    rows = [i for i, c in enumerate(data.labels.tolist()) if c == 7]  # beak-long_tail-pointed
    sub = data.subset(rows)
    t = torch.full((len(sub),), 1)  # beak-long_tail-fan: differs in the tail only
    changed, parts = changed_masks(sub, t), sub.difference_masks(t)
    outside = (changed & ~parts).sum() / changed.sum()
    assert outside > 0.3  # most of the wide fan lies outside x's narrow pointed tail


def test_survives_subset_and_folder_round_trip(ds, tmp_path):
    targets = _other_targets(ds)
    full = counterfactuals(ds, targets)
    sub = ds.subset("test")
    rows = [i for i, s in enumerate(ds.splits) if s == "test"]
    assert torch.equal(counterfactuals(sub, targets[rows]), full[rows])
    write_folder(ds, tmp_path / "data")
    back = load_folder(tmp_path / "data")
    order = [ds.ids.index(i) for i in back.ids]
    assert torch.equal(changed_masks(back, targets[order]), changed_masks(ds, targets)[order])


def test_clear_errors(ds):
    with pytest.raises(ValueError, match="same length"):
        render_counterfactuals(SynthConfig(n=4, size=32), [0, 1], [0])
    with pytest.raises(ValueError, match="classes 0 to 7"):
        render_counterfactuals(SynthConfig(n=4, size=32), [0], [8])
    with pytest.raises(ValueError, match=r"\(64,\)"):
        counterfactuals(ds, torch.zeros(3, dtype=torch.long))
    edited = ds.subset([0, 1])
    edited.images = edited.images.clone()
    edited.images[0, 0, 0, 0] = 0.5 if edited.images[0, 0, 0, 0] != 0.5 else 0.25
    with pytest.raises(ValueError, match="1 of 2 images differ"):
        counterfactuals(edited, torch.zeros(2, dtype=torch.long))
    foreign = ImageDataset(images=ds.images[:2], labels=ds.labels[:2], masks=ds.masks[:2],
                           ids=["a", "b"], splits=["train", "test"],
                           class_names=list(ds.class_names))
    with pytest.raises(ValueError, match="synthetic benchmark"):
        changed_masks(foreign, torch.zeros(2, dtype=torch.long))
