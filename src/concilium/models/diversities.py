"""The ways of making an ensemble diverse: the :data:`DIVERSITIES` registry and its entries.

A diversity is a function ``(job: EnsembleJob, index: int) -> MemberPlan``: given what the
ensemble is trained with (:class:`EnsembleJob`), it says which architecture and epochs member
``index`` has and how to train it; :func:`concilium.models.ensembles.train_ensemble` handles
resume, cards and saving. The entries:

- ``head`` (the ensembles paper): train one network (saved as ``OUT/backbone/``), then each
  member starts from that backbone with a freshly, randomly initialised head (seeded) and is
  fine-tuned for a short schedule (``finetune="all"``: every weight, the backbone at a tenth of
  the heads' learning rate; ``"head"``: the heads only, backbone and its batch-norm statistics
  frozen).
- ``seed``: every member trained from scratch with its own seed (initialisation and order).
- ``bootstrap``: like ``seed``, each member on a bootstrap resample (with replacement, same
  size) of the training split drawn from its seed.
- ``arch``: a committee; member ``i`` uses ``archs[i % len(archs)]``, trained from scratch.

Adding a diversity: write the function, register it with ``@DIVERSITIES.register("name")`` and
add the name to :data:`concilium.models.members.Diversity` (the type of the card field and of
``train_ensemble(diversity=...)``, which configuration files are checked against; a test keeps
the two in step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from concilium._progress import ProgressDisplay
from concilium._registry import Registry
from concilium.models.architectures import create_model
from concilium.models.base import ConciliumNet
from concilium.models.fit import TrainResult, fit_and_measure
from concilium.models.members import (
    BACKBONE_ID,
    CARD_FILE,
    MemberCard,
    load_member,
    read_card,
    save_member,
)
from concilium.models.settings import Finetune, FitSettings, SplitTensors
from concilium.vocabulary import member_id


@dataclass(frozen=True)
class HeadSettings:
    """How ``head`` diversity fine-tunes each member from the shared backbone.

    Attributes:
        finetune: ``"all"`` weights or the ``"head"``s only.
        epochs: epochs of each member's fine-tuning.
        lr: peak learning rate of the new heads.
        backbone_scale: with ``finetune="all"``, the backbone's peak rate is
            ``lr * backbone_scale``.
    """

    finetune: Finetune
    epochs: int
    lr: float
    backbone_scale: float


@dataclass
class EnsembleJob:
    """What a diversity gets: the data, the settings and a seeded network factory.

    Attributes:
        out: the models folder.
        arch: the architecture of every member (all diversities but ``arch``).
        committee: the architectures ``arch`` diversity cycles through (else empty).
        seed: the base seed (the shared backbone's; member ``i`` uses :meth:`member_seed`).
        fit: how networks are trained from scratch.
        head: how ``head`` diversity fine-tunes members.
        train: the training rows.
        val: the validation rows.
        card: the card fields every network of this ensemble shares.
        device: where to train.
        progress: the rich progress display, or ``None``.
        shared: networks shared between members (``head`` diversity keeps its backbone here).
    """

    out: Path
    arch: str
    committee: tuple[str, ...]
    seed: int
    fit: FitSettings
    head: HeadSettings
    train: SplitTensors
    val: SplitTensors
    card: Mapping[str, Any]
    device: torch.device
    progress: ProgressDisplay | None
    shared: dict[str, ConciliumNet] = field(default_factory=dict)

    def member_seed(self, index: int) -> int:
        """The seed of member ``index``: ``seed + 1 + index``."""
        return self.seed + 1 + index

    def build(self, arch: str, seed: int) -> ConciliumNet:
        """A freshly initialised ``arch`` network, its weights drawn from ``seed``.

        The global RNG is seeded inside ``torch.random.fork_rng``, so the caller's RNG state is
        left as it was: layer constructors (ours, timm's, torchvision's) draw their initial
        weights from the global RNG and take no generator.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(
                arch,
                num_classes=self.card["num_classes"],
                num_attributes=self.card["num_attributes"],
                in_channels=self.card["in_channels"],
            )

    def fit_member(
        self,
        model: ConciliumNet,
        *,
        seed: int,
        description: str,
        settings: FitSettings | None = None,
        indices: torch.Tensor | None = None,
        trainable: Finetune = "all",
        backbone_lr_scale: float = 1.0,
    ) -> TrainResult:
        """Train ``model`` in place on the training rows and measure it on the validation rows.

        Args:
            model: the network.
            seed: seeds batch order and augmentation.
            description: the progress bar's label.
            settings: how to optimise. Default ``None``: :attr:`fit`.
            indices: rows to train on (repeats allowed); ``None`` for all. Default ``None``.
            trainable: ``"all"`` weights, or the ``"head"``s only. Default ``"all"``.
            backbone_lr_scale: the backbone's share of the learning rate. Default 1.0.
        """
        return fit_and_measure(
            model,
            self.train,
            self.val,
            settings=self.fit if settings is None else settings,
            seed=seed,
            indices=indices,
            trainable=trainable,
            backbone_lr_scale=backbone_lr_scale,
            device=self.device,
            progress=self.progress,
            description=description,
        )


@dataclass(frozen=True)
class MemberPlan:
    """What a diversity makes of one member: the card fields known before training, and how to
    train it (called only when the member is not on disk yet).

    Attributes:
        arch: the member's architecture.
        epochs: the epochs its card records (checked when resuming).
        train: trains the member; returns the network and its :class:`TrainResult`.
        card: further card fields (e.g. ``backbone_epochs``, ``finetune``).
    """

    arch: str
    epochs: int
    train: Callable[[], tuple[ConciliumNet, TrainResult]]
    card: Mapping[str, object] = field(default_factory=dict)


DiversityFunction = Callable[[EnsembleJob, int], MemberPlan]
"""``(job, index) -> MemberPlan``: how member ``index`` of an ensemble is made."""

DIVERSITIES: Registry[DiversityFunction] = Registry("diversity")
"""The ways of making an ensemble diverse, by name (``train_ensemble(diversity=...)``)."""


def _from_scratch(
    job: EnsembleJob, index: int, arch: str, *, bootstrap: bool = False
) -> MemberPlan:
    seed = job.member_seed(index)

    def train() -> tuple[ConciliumNet, TrainResult]:
        model = job.build(arch, seed)
        indices = None
        if bootstrap:
            n = job.train.images.shape[0]
            indices = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(seed))
        description = f"{member_id(index)} ({arch})"
        return model, job.fit_member(model, seed=seed, indices=indices, description=description)

    return MemberPlan(arch=arch, epochs=job.fit.epochs, train=train)


@DIVERSITIES.register("seed")
def seed_diversity(job: EnsembleJob, index: int) -> MemberPlan:
    """Member ``index`` trained from scratch with its own seed (initialisation and order)."""
    return _from_scratch(job, index, job.arch)


@DIVERSITIES.register("bootstrap")
def bootstrap_diversity(job: EnsembleJob, index: int) -> MemberPlan:
    """Like ``seed``, on a bootstrap resample (with replacement, same size) of the training
    rows drawn from the member's seed."""
    return _from_scratch(job, index, job.arch, bootstrap=True)


@DIVERSITIES.register("arch")
def arch_diversity(job: EnsembleJob, index: int) -> MemberPlan:
    """A committee: member ``index`` is ``committee[index % len(committee)]``, from scratch."""
    return _from_scratch(job, index, job.committee[index % len(job.committee)])


@DIVERSITIES.register("head")
def head_diversity(job: EnsembleJob, index: int) -> MemberPlan:
    """The shared backbone (trained once, with ``job.seed``) with a new head drawn from the
    member's seed, fine-tuned as ``job.head`` says."""
    seed = job.member_seed(index)
    settings = replace(job.fit, epochs=job.head.epochs, lr=job.head.lr)

    def train() -> tuple[ConciliumNet, TrainResult]:
        model = copy.deepcopy(_shared_backbone(job))
        model.reset_heads(torch.Generator().manual_seed(seed))
        result = job.fit_member(
            model,
            seed=seed,
            settings=settings,
            trainable=job.head.finetune,
            backbone_lr_scale=job.head.backbone_scale,
            description=f"{member_id(index)} fine-tune ({job.arch})",
        )
        return model, result

    extra = {"backbone_epochs": job.fit.epochs, "finetune": job.head.finetune}
    return MemberPlan(arch=job.arch, epochs=job.head.epochs, train=train, card=extra)


RESUME_KEYS = ("arch", "seed", "diversity", "data_fingerprint", "num_classes", "num_attributes")
"""Card fields a finished member must share with this run to be kept (and ``epochs``)."""


def _shared_backbone(job: EnsembleJob) -> ConciliumNet:
    """Train (or reload) the shared backbone of a ``head`` ensemble, once per job, when the
    first unfinished member needs it."""
    if BACKBONE_ID in job.shared:
        return job.shared[BACKBONE_ID]
    directory = job.out / BACKBONE_ID
    card = dict(
        job.card, arch=job.arch, seed=job.seed, epochs=job.fit.epochs, finetune=job.head.finetune
    )
    if (directory / CARD_FILE).is_file():
        keys = [k for k in RESUME_KEYS if k != "diversity"] + ["epochs"]
        check_existing(read_card(directory), {k: card[k] for k in keys}, directory)
        model, _ = load_member(directory, device="cpu")
    else:
        model = job.build(job.arch, job.seed)
        result = job.fit_member(model, seed=job.seed, description=f"backbone ({job.arch})")
        save_member(
            model,
            MemberCard(
                **card,
                member_id=BACKBONE_ID,
                val_accuracy=result.val_accuracy,
                val_attribute_accuracy=result.val_attribute_accuracy,
                gradcam_layer=model.gradcam_layer,
                train_seconds=round(result.seconds, 3),
            ),
            directory,
        )
        model = model.cpu()
    job.shared[BACKBONE_ID] = model
    return model


def check_existing(card: MemberCard, expected: Mapping[str, object], directory: Path) -> None:
    """Check that a finished member (or backbone) was made with the settings of this run.

    Raises:
        ValueError: a field differs; the message names it and says how to resume.
    """
    for key, value in expected.items():
        have = getattr(card, key)
        if have != value:
            raise ValueError(
                f"{directory} already holds a member with {key}={have!r}, but this run asks for "
                f"{key}={value!r}; resume with the same settings, or choose another --out folder"
            )
