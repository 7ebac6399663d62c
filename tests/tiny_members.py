"""Test helpers shared across folders: untrained small-cnn members of a dataset, and the bytes of
a run's stored map chunks (to compare two runs bit for bit)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from concilium.data.dataset import ImageDataset
from concilium.models.architectures import create_model
from concilium.models.members import MemberCard, save_member


def small_cnn_members(data: ImageDataset, count: int = 2) -> list[tuple[nn.Module, MemberCard]]:
    """``count`` untrained small-cnn members ``m0, m1, ...`` of ``data`` in eval mode, member
    ``k`` initialised from ``torch.manual_seed(k)``."""
    size = tuple(data.images.shape[-2:])
    members = []
    for k in range(count):
        torch.manual_seed(k)
        model = create_model("small-cnn", num_classes=len(data.class_names)).eval()
        members.append((model, MemberCard(
            member_id=f"m{k}", arch="small-cnn", num_classes=len(data.class_names),
            class_names=list(data.class_names), image_size=size, seed=k, diversity="seed",
            epochs=0, gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint(),
        )))
    return members


def save_small_cnn_members(data: ImageDataset, models: Path, count: int = 2) -> Path:
    """:func:`small_cnn_members` saved as a members folder ``models/m0, m1, ...``."""
    for model, card in small_cnn_members(data, count):
        save_member(model, card, Path(models) / card.member_id)
    return Path(models)


def chunk_files(run: Path) -> dict[str, bytes]:
    """``{path in explanations.zarr: bytes}`` of every stored map chunk of ``run``."""
    root = Path(run) / "explanations.zarr"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "/c/" in p.as_posix()}
