"""Ensemble members on disk: safetensors weights plus a JSON card, never a pickle.

Layout: ``MODELS/<member_id>/model.safetensors`` and ``MODELS/<member_id>/card.json``, member ids
``m0, m1, ...``. A head-diversity ensemble also keeps its shared backbone in
``MODELS/backbone/`` (same two files), which :func:`load_members` does not list.

Both files are written atomically (a temporary file in the same folder, then ``os.replace``), the
card last, so a member folder with a card always holds complete weights: a killed training run
resumes at the first member without a card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import save_file
from torch import nn

import concilium
from concilium._util import atomic_write, read_record
from concilium.models.architectures import create_model
from concilium.models.base import ConciliumNet
from concilium.models.weights import load_state_dict_file, load_weights_into
from concilium.vocabulary import MEMBER_ID

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
BACKBONE_ID = "backbone"
MAX_WIDTH = 100_000
"""The most classes (or attributes) a card may name: a larger head is a damaged card, and
building it would exhaust memory before the weights are checked."""
MAX_CHANNELS = 64
"""The most image channels a card may name."""
MAX_MEMBERS = 1_000
"""The most members an ensemble may have (a larger number is a typo; listing its members alone
would exhaust memory)."""

Diversity = Literal["head", "seed", "bootstrap", "arch"]
"""How an ensemble is made diverse: the names of
:data:`concilium.models.ensembles.DIVERSITIES` (a test keeps the two in step)."""


class MemberCard(BaseModel):
    """What a trained ensemble member is, stored next to its weights as ``card.json``.

    Attributes:
        member_id: ``m0``, ``m1``, ... (``backbone`` for the shared backbone of ``head``
            diversity).
        arch: architecture name for :func:`~concilium.models.architectures.create_model`.
        num_classes: width of the class head.
        class_names: the class names, in label order.
        num_attributes: width of the attribute head (0: none).
        attribute_names: the attribute names, in head order.
        in_channels: image channels.
        image_size: ``(H, W)`` of the training images.
        seed: the seed this member was trained with (initialisation, head, shuffling, bootstrap).
        diversity: how the ensemble was made diverse.
        val_accuracy: class accuracy on the validation split (``None`` if there was none).
        epochs: epochs this member was trained (fine-tuned, for ``head`` members).
        gradcam_layer: the model's default GradCAM layer (dotted module name).
        data_fingerprint: :meth:`ImageDataset.fingerprint` of the training data.
        concilium_version: the concilium version that wrote the card.
        backbone_epochs: epochs of the shared backbone (``head`` diversity only).
        finetune: ``"all"`` or ``"head"`` (``head`` diversity only).
        val_attribute_accuracy: mean per-attribute accuracy on the validation split, for
            multitask members.
        train_seconds: wall time of this member's training.
    """

    model_config = ConfigDict(extra="forbid")

    member_id: str
    arch: str
    num_classes: int = Field(ge=1, le=MAX_WIDTH)
    class_names: list[str]
    num_attributes: int = Field(default=0, ge=0, le=MAX_WIDTH)
    attribute_names: list[str] = Field(default_factory=list)
    in_channels: int = Field(default=3, ge=1, le=MAX_CHANNELS)
    image_size: tuple[int, int]
    seed: int
    diversity: Diversity
    val_accuracy: float | None = None
    epochs: int = Field(ge=0)
    gradcam_layer: str
    data_fingerprint: str
    concilium_version: str = concilium.__version__
    backbone_epochs: int | None = None
    finetune: Literal["all", "head"] | None = None
    val_attribute_accuracy: float | None = None
    train_seconds: float | None = None

    @field_validator("member_id")
    @classmethod
    def _known_id(cls, value: str) -> str:
        if value != BACKBONE_ID and not MEMBER_ID.match(value):
            raise ValueError(
                f"member_id must be m0, m1, ... (or {BACKBONE_ID!r} for a shared backbone); "
                f"got {value!r}"
            )
        return value


def save_member(model: nn.Module, card: MemberCard, directory: str | Path) -> Path:
    """Write ``directory/model.safetensors`` and then ``directory/card.json``, each atomically.

    Args:
        model: the trained network (its ``state_dict`` is saved from the CPU).
        card: its card.
        directory: the member folder (created if needed).

    Returns:
        The member folder.
    """
    if not isinstance(card, MemberCard):
        raise TypeError(f"card must be a MemberCard; got {type(card).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / MODEL_FILE, lambda p: save_file(state, str(p)))
    text = card.model_dump_json(indent=2)
    atomic_write(directory / CARD_FILE, lambda p: p.write_text(text + "\n"))
    return directory


def read_card(directory: str | Path) -> MemberCard:
    """The :class:`MemberCard` of a member folder.

    Raises:
        FileNotFoundError: no ``card.json`` in the folder.
        ValueError: the card is not valid JSON or misses fields.
    """
    return read_record(
        Path(directory) / CARD_FILE,
        MemberCard,
        what="member card",
        if_missing=": a member folder holds model.safetensors and card.json "
        "(train members with `concilium train`)",
    )


def load_member(
    directory: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[ConciliumNet, MemberCard]:
    """Rebuild a member from its folder.

    Args:
        directory: the member folder (``model.safetensors`` + ``card.json``).
        device: where to put the model. Default ``"cpu"``.

    Returns:
        ``(model, card)``, the model in eval mode.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the weights do not fit the card's architecture.
    """
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; the member folder is incomplete, retrain it")
    model = create_model(
        card.arch,
        num_classes=card.num_classes,
        num_attributes=card.num_attributes,
        in_channels=card.in_channels,
    )
    load_weights_into(model, load_state_dict_file(weights), source=str(weights))
    if model.gradcam_layer != card.gradcam_layer:
        model.gradcam_layer = card.gradcam_layer  # a user override recorded at training time
        model.gradcam_module()
    return model.to(device).eval(), card


def member_dirs(models_dir: str | Path) -> list[Path]:
    """Member folders (``m<k>`` with a card) of ``models_dir``, sorted numerically by ``k``."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FileNotFoundError(
            f"models folder {models_dir} not found; train with `concilium train`"
        )
    found = []
    for d in models_dir.iterdir():
        match = MEMBER_ID.match(d.name)
        if match and d.is_dir() and (d / CARD_FILE).is_file():
            found.append((int(match.group(1)), d))
    return [d for _, d in sorted(found)]


def load_members(
    models_dir: str | Path, *, device: str | torch.device = "cpu"
) -> list[tuple[ConciliumNet, MemberCard]]:
    """Every member of ``models_dir`` as ``(model, card)``, sorted by member id (m0, m1, ...,
    m10 numerically). The shared ``backbone`` folder is not a member and is not listed.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no member.
    """
    dirs = member_dirs(models_dir)
    if not dirs:
        raise ValueError(
            f"{models_dir} holds no member folders (m0/, m1/, ... with card.json); "
            "train an ensemble with `concilium train DATA --out MODELS`"
        )
    return [load_member(d, device=device) for d in dirs]
