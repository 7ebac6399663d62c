"""Method-subset study of the CNN ensembler: which methods add information?

One ensembler is trained per subset of the ``K`` methods (the full set, every leave-one-method-out
set, and with ``mode="all"`` and ``K <= 5`` every non-empty subset), each with the same training
settings and seed, and scored by the Dice (and IoU) of its binarised E* on held-out images. A
method whose removal lowers the Dice adds information the others lack.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from concilium.ensemble.cnn import CNNTrainConfig, dice_score, iou_score, train_cnn_ensembler

SubsetMode = Literal["leave_one_out", "all"]
MAX_K_ALL = 5


def method_subsets(methods: list[str], mode: SubsetMode = "leave_one_out") -> list[tuple[str, ...]]:
    """The subsets to study, largest first: the full set and each leave-one-out set, or (mode
    ``"all"``) every non-empty subset.

    Raises:
        ValueError: ``mode="all"`` with more than 5 methods (2**K - 1 trainings), or fewer than
            one method.
    """
    if not methods:
        raise ValueError("give at least one method")
    if mode == "all":
        if len(methods) > MAX_K_ALL:
            raise ValueError(f"mode='all' trains 2**K - 1 ensemblers; K={len(methods)} > {MAX_K_ALL}. "
                             "Use mode='leave_one_out' or fewer methods")
        return [c for r in range(len(methods), 0, -1) for c in itertools.combinations(methods, r)]
    if mode != "leave_one_out":
        raise ValueError(f"mode must be 'leave_one_out' or 'all'; got {mode!r}")
    out = [tuple(methods)]
    if len(methods) > 1:
        out += [tuple(m for m in methods if m != left) for left in methods]
    return out


def method_subset_study(
    train_maps: Mapping[str, Tensor],
    train_masks: Tensor,
    *,
    val_maps: Mapping[str, Tensor],
    val_masks: Tensor,
    test_maps: Mapping[str, Tensor],
    test_masks: Tensor,
    mode: SubsetMode = "leave_one_out",
    config: CNNTrainConfig | None = None,
    train_images: Tensor | None = None,
    val_images: Tensor | None = None,
    test_images: Tensor | None = None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Train one ensembler per method subset and score it on the test images.

    Args:
        train_maps, val_maps, test_maps: method -> ``(N, H, W)`` maps of each split (same methods).
        train_masks, val_masks, test_masks: ``(N, H, W)`` bool masks of each split.
        mode: ``"leave_one_out"`` or ``"all"`` (``K <= 5``).
        config: training settings shared by every subset.
        train_images, val_images, test_images: needed with ``config.with_image``.
        device: where to train.

    Returns:
        One row per subset: ``subset`` (methods joined by ``+``), ``k``, ``left_out`` (the
        missing method for leave-one-out rows, else empty), ``test_dice``, ``test_iou``,
        ``val_dice``, ``epochs``, and ``dice_drop``: full-set Dice minus this subset's.
    """
    methods = list(train_maps)
    for name, maps in (("val_maps", val_maps), ("test_maps", test_maps)):
        if set(maps) != set(methods):
            raise ValueError(f"{name} has methods {sorted(maps)}, train_maps has {sorted(methods)}")
    rows = []
    for subset in method_subsets(methods, mode):
        ens, history = train_cnn_ensembler(
            {m: train_maps[m] for m in subset}, train_masks,
            val_maps={m: val_maps[m] for m in subset}, val_masks=val_masks,
            train_images=train_images, val_images=val_images, config=config, device=device,
        )
        logits, _ = ens.predict({m: test_maps[m] for m in subset}, images=test_images)
        left = [m for m in methods if m not in subset]
        rows.append({
            "subset": "+".join(subset), "k": len(subset),
            "left_out": left[0] if len(left) == 1 else ("" if not left else "+".join(left)),
            "test_dice": float(dice_score(logits > 0, test_masks).mean()),
            "test_iou": float(iou_score(logits > 0, test_masks).mean()),
            "val_dice": ens.card.best_val_dice, "epochs": len(history),
        })
    table = pd.DataFrame(rows)
    full = table.loc[table.k == len(methods), "test_dice"].iloc[0]
    table["dice_drop"] = full - table["test_dice"]
    return table
