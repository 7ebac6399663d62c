"""Ensemble members on disk: safetensors weights plus a JSON card, never a pickle.

Layout: ``MODELS/<member_id>/model.safetensors`` and ``MODELS/<member_id>/card.json``, member ids
``m0, m1, ...``. A head-diversity ensemble also keeps its shared backbone in
``MODELS/backbone/`` (same two files), which :func:`load_members` does not list.

Both files are written atomically (a temporary file in the same folder, then ``os.replace``), the
card last, so a member folder with a card always holds complete weights: a killed training run
resumes at the first member without a card.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import concilium
from concilium._util import atomic_write
from concilium.models.base import ConciliumNet
from concilium.vocabulary import MEMBER_ID

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"
BACKBONE_ID = "backbone"

Diversity = Literal["head", "seed", "bootstrap", "arch"]


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
    num_classes: int = Field(ge=1)
    class_names: list[str]
    num_attributes: int = Field(default=0, ge=0)
    attribute_names: list[str] = Field(default_factory=list)
    in_channels: int = Field(default=3, ge=1)
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
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a member folder holds model.safetensors and card.json "
            "(train members with `concilium train`)"
        )
    try:
        return MemberCard.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid member card: {err}") from None


def _unpickler_reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else type(err).__name__)
    return lines[0] if lines else type(err).__name__


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict without ever unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin`` files with
    ``torch.load(weights_only=True)``, which refuses any pickle that would build objects other
    than tensors and plain containers (such as one that would run code).

    Args:
        path: the weights file.

    Returns:
        The state dict (CPU tensors).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix, a refused pickle (convert the file to safetensors), or
            a file that is not a flat ``name -> tensor`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    if suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(
            f"unsupported weights file {path.name!r}; use .safetensors (or a .pt/.pth state dict)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise ValueError(
            f"refusing to unpickle {path}: it holds objects other than tensors "
            f"({_unpickler_reason(err)}). "
            "Loading it could run arbitrary code. If you trust its origin, convert it to "
            "safetensors (safetensors.torch.save_file(state_dict, 'model.safetensors'))"
        ) from None
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is not a state dict (a mapping of parameter names to tensors); "
            "save model.state_dict(), not the model"
        )
    return dict(state)


def load_weights_into(module: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state`` strictly into ``module``, with a readable error on any mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]
                )
            )
        raise ValueError(
            f"weights in {source} do not fit {type(module).__name__}: {'; '.join(parts)}. "
            "Check the architecture, number of classes and attributes"
        )
    module.load_state_dict(state, strict=True)


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
    from concilium.models.architectures import create_model

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
