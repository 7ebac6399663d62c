"""GANMEX generators on disk: options, the JSON card, safetensors weights and resumable state.

Layout of a generator directory ``GEN/``::

    GEN/card.json               GanmexCard: image size, classes, classifier card hash, step, options
    GEN/generator.safetensors   generator weights (all the baseline provider needs)
    GEN/state.safetensors       critic weights, both Adam states and the data RNG (for resuming)
    GEN/validation.csv          one row per checkpoint (see ``training.ValidationRecord``)

Every file is written to a temporary name and renamed, and both safetensors files record the
step they belong to, so a run killed while saving is detected instead of resumed inconsistently.
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from concilium._util import atomic_write, atomic_write_text, read_record
from concilium.ganmex.networks import Critic, Generator
from concilium.models.weights import load_state_dict_file

__all__ = [
    "CARD_FILE",
    "RESUMABLE_OPTIONS",
    "GENERATOR_FILE",
    "STATE_FILE",
    "VALIDATION_FILE",
    "GanmexCard",
    "GanmexOptions",
    "PRESETS",
    "build_networks",
    "card_hash",
    "load_card",
    "load_generator",
    "load_state",
    "save_checkpoint",
]

CARD_FILE = "card.json"
GENERATOR_FILE = "generator.safetensors"
STATE_FILE = "state.safetensors"
VALIDATION_FILE = "validation.csv"
FORMAT_VERSION = 1


class GanmexOptions(BaseModel):
    """Every GANMEX training option.

    The defaults are the ones that find small counterfactuals in a few thousand steps on a CPU
    (an identity-initialised pixel-space residual generator, a bounded hinge target loss, Adam
    at 1e-4 with beta1 0.5, some same-class targets; see ``docs/ganmex.md``). The reference
    implementation's settings are the preset ``GanmexOptions.preset("reference")``.

    Attributes:
        steps: generator updates in total (a resumed run continues up to this number).
        batch_size: images per batch.
        lr_g: generator Adam learning rate (reference 2e-5, tuned for ~1e6 steps).
        lr_d: critic Adam learning rate (reference 1e-4).
        beta1: Adam beta1 for both optimisers (reference 0.9).
        beta2: Adam beta2 for both optimisers (reference 0.999).
        n_critic: critic updates per generator update (reference ``gen_disc_step_ratio`` 1.0,
            i.e. 1; StarGAN uses 5).
        l_cls: weight of the target loss on ``C(G(x, t))`` (reference 1000 with ``"ce"``).
        target_loss: ``"hinge"`` (bounded margin ``relu(max_{j != t} l_j - l_t + kappa)``) or
            ``"ce"`` (the reference's cross-entropy, unbounded below its minimum).
        kappa: margin of the hinge target loss.
        l_sim: weight of the similarity on ``[0, 1]`` images. The reference's 100 on ``[-1, 1]``
            images is 200 here (the L1 of ``[-1, 1]`` images is twice as large).
        similarity: ``"l1"`` (per-pixel) or ``"group"`` (group-sparse over 4x4 patches).
        l_rec: weight of the cycle reconstruction ``|x - G(G(x, t), c_x)|_1`` (reference 0).
        gp_weight: weight of the WGAN-GP gradient penalty (10).
        same_class: share of training targets equal to the image's own class (which teach
            ``G(x, c) = x``), or ``"uniform"``: targets uniform over all ``K`` classes, the
            reference's (a share of ``1/K``).
        base_channels: generator width.
        num_residual: generator residual blocks.
        critic_channels: critic width.
        output: generator output mapping to [0, 1] (``"additive"`` starts at the exact
            identity; the reference's is ``"tanh"``; see
            :class:`~concilium.ganmex.networks.Generator`).
        seed: seeds network initialisation, batches, targets and the penalty's interpolation.
        checkpoint_every: save and validate every this many steps (and at the last step).
        val_size: validation images (at most; fewer if the validation data is smaller).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    n_critic: int = Field(1, ge=1)
    l_cls: float = Field(10.0, ge=0)
    target_loss: Literal["hinge", "ce"] = "hinge"
    kappa: float = Field(2.0, ge=0)
    l_sim: float = Field(200.0, ge=0)
    similarity: Literal["l1", "group"] = "l1"
    l_rec: float = Field(0.0, ge=0)
    gp_weight: float = Field(10.0, ge=0)
    same_class: float | Literal["uniform"] = 0.125
    base_channels: int = Field(32, ge=1)
    num_residual: int = Field(3, ge=0)
    critic_channels: int = Field(32, ge=1)
    output: Literal["additive", "tanh", "sigmoid", "residual"] = "additive"
    seed: int = 0
    checkpoint_every: int = Field(200, ge=1)
    val_size: int = Field(256, ge=1)

    @field_validator("same_class")
    @classmethod
    def _check_same_class(cls, value: float | str) -> float | str:
        if value != "uniform" and not 0.0 <= float(value) < 1.0:
            raise ValueError(f"same_class must be in [0, 1) or 'uniform'; got {value}")
        return value

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GanmexOptions:
        """The options of a named preset (:data:`PRESETS`), with ``overrides`` on top.

        Raises:
            ValueError: on an unknown preset name (listing the valid ones) or a bad override.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown GANMEX preset {name!r}; use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        # pinjutien/GANMEX (stargan_estimator): tanh StarGAN output, CE x 1000, L1 x 100 on
        # [-1, 1] images (200 on [0, 1]), Adam G 2e-5 / D 1e-4 with beta1 0.9, targets
        # uniform over all classes
        "output": "tanh", "target_loss": "ce", "l_cls": 1000.0, "l_sim": 200.0,
        "lr_g": 2e-5, "lr_d": 1e-4, "beta1": 0.9, "same_class": "uniform",
    },
}
"""Named GANMEX option sets: ``default`` (this package's defaults) and ``reference`` (the public
reference implementation's loss, output and optimiser settings)."""


#: Options a resumed run may change: none of them affects the saved training state.
RESUMABLE_OPTIONS = ("steps", "checkpoint_every", "val_size")


class GanmexCard(BaseModel):
    """What a trained generator is for; the provider refuses to use it for anything else.

    Attributes:
        format_version: layout version of ``GEN/``.
        image_size: ``(H, W)`` the generator was trained on.
        in_channels: image channels.
        num_classes: number of classes of the classifier.
        class_names: their names, in the classifier's logit order.
        classifier_card_hash: :func:`card_hash` of the classifier's member card (``None`` when
            the classifier had no card).
        classifier: where the classifier came from (member directory or description).
        data_fingerprint: fingerprint of the training data (``ImageDataset.fingerprint``).
        step: generator updates done.
        seconds: training wall time so far (summed over resumed runs).
        options: the training options.
        concilium_version: version that wrote the card.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    image_size: tuple[int, int]
    in_channels: int
    num_classes: int
    class_names: list[str]
    classifier_card_hash: str | None = None
    classifier: str = ""
    data_fingerprint: str | None = None
    step: int = 0
    seconds: float = 0.0
    options: GanmexOptions
    concilium_version: str = ""


def card_hash(card: object) -> str:
    """A short content hash of a classifier's member card (pydantic model, dict or JSON file).

    The hash is taken over the card's canonical JSON (sorted keys), so a generator remembers
    exactly which classifier it was trained against.
    """
    if isinstance(card, BaseModel):
        data: Any = card.model_dump(mode="json")
    elif isinstance(card, Mapping):
        data = dict(card)
    elif isinstance(card, str | os.PathLike):
        path = Path(card)
        if path.is_dir():
            path = path / "card.json"
        data = json.loads(path.read_text())
    else:
        raise TypeError(
            "card must be a pydantic MemberCard, a dict or a path to card.json; "
            f"got {type(card).__name__}"
        )
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_networks(
    options: GanmexOptions, *, num_classes: int, image_size: tuple[int, int], in_channels: int
) -> tuple[Generator, Critic]:
    """Generator and critic for these options, initialised from ``options.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        gen = Generator(num_classes=num_classes, in_channels=in_channels,
                        base_channels=options.base_channels, num_residual=options.num_residual,
                        output=options.output)
        critic = Critic(image_size=image_size, in_channels=in_channels,
                        base_channels=options.critic_channels)
    return gen, critic


def _atomic_save_tensors(tensors: dict[str, Tensor], path: Path, step: int) -> None:
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata={"step": str(step)}))


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{index}.{key}"] = torch.as_tensor(value)
    return out


def _load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                    device: torch.device) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        _, index, key = name.split(".")
        state.setdefault(int(index), {})[key] = value if key == "step" else value.to(device)
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(
    gen_dir: Path,
    *,
    card: GanmexCard,
    generator_net: nn.Module,
    critic: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    rng: torch.Generator,
) -> None:
    """Write generator, resumable state and card of ``card.step`` into ``gen_dir`` atomically."""
    gen_dir.mkdir(parents=True, exist_ok=True)
    state = {f"critic.{k}": v for k, v in critic.state_dict().items()}
    state |= _optimizer_tensors("opt_g", opt_g) | _optimizer_tensors("opt_d", opt_d)
    state["rng"] = rng.get_state()
    _atomic_save_tensors(state, gen_dir / STATE_FILE, card.step)
    _atomic_save_tensors(dict(generator_net.state_dict()), gen_dir / GENERATOR_FILE, card.step)
    atomic_write_text(gen_dir / CARD_FILE, card.model_dump_json(indent=2))


def load_card(gen_dir: str | os.PathLike) -> GanmexCard:
    """Read ``GEN/card.json``.

    Raises:
        FileNotFoundError: if ``gen_dir`` holds no GANMEX card.
        ValueError: if the card is not a valid GANMEX card.
    """
    return read_record(
        Path(gen_dir) / CARD_FILE,
        GanmexCard,
        what="GANMEX card",
        if_missing=f": {gen_dir} is not a GANMEX generator directory "
        "(train one with `concilium ganmex train DATA --model MEMBER --out GEN`)",
    )


def _checked_tensors(path: Path, step: int) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = int((f.metadata() or {}).get("step", -1))
    except (SafetensorError, ValueError) as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    if saved != step:
        raise ValueError(
            f"{path.name} belongs to step {saved} but card.json to step {step}: the run was killed "
            f"while saving; delete {path.parent} and train again, or restore a backup"
        )
    return load_state_dict_file(path)


def load_generator(
    gen_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[Generator, GanmexCard]:
    """Load a trained generator (eval mode, no gradients) and its card from ``gen_dir``."""
    card = load_card(gen_dir)
    gen, _ = build_networks(card.options, num_classes=card.num_classes,
                            image_size=card.image_size, in_channels=card.in_channels)
    weights = _checked_tensors(Path(gen_dir) / GENERATOR_FILE, card.step)
    gen.load_state_dict(weights)
    gen.to(device).eval().requires_grad_(False)
    return gen, card


def load_state(
    gen_dir: Path,
    card: GanmexCard,
    *,
    generator_net: nn.Module,
    critic: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    rng: torch.Generator,
    device: torch.device,
) -> None:
    """Restore networks, optimisers and the data RNG saved at ``card.step`` (for resuming)."""
    generator_net.load_state_dict(_checked_tensors(gen_dir / GENERATOR_FILE, card.step))
    state = _checked_tensors(gen_dir / STATE_FILE, card.step)
    critic.load_state_dict({k[len("critic."):]: v for k, v in state.items()
                            if k.startswith("critic.")})
    generator_net.to(device)
    critic.to(device)
    _load_optimizer("opt_g", opt_g, state, device)
    _load_optimizer("opt_d", opt_d, state, device)
    rng.set_state(state["rng"])
