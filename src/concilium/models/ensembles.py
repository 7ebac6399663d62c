"""Training an ensemble: ``members`` networks made diverse in one of the :data:`DIVERSITIES`.

Diversity (``train_ensemble(..., diversity=...)``):

- ``head`` (the ensembles paper): train one network (saved as ``OUT/backbone/``), then each
  member starts from that backbone with a freshly, randomly initialised head (seeded) and is
  fine-tuned for a short schedule (``finetune="all"``: every weight, the backbone at a tenth of
  the heads' learning rate; ``"head"``: the heads only, backbone and its batch-norm statistics
  frozen).
- ``seed``: every member trained from scratch with its own seed (initialisation and order).
- ``bootstrap``: like ``seed``, each member on a bootstrap resample (with replacement, same
  size) of the training split drawn from its seed.
- ``arch``: a committee; member ``i`` uses ``archs[i % len(archs)]``, trained from scratch.

Seeds: the backbone uses ``seed``; member ``i`` uses ``seed + 1 + i`` (head initialisation,
weight initialisation, batch order, augmentation, bootstrap sample). On the CPU, the same
arguments give bit-identical weights.

Adding a diversity: write a function ``(job: EnsembleJob, index: int) -> MemberPlan``, register
it with ``@DIVERSITIES.register("name")`` and add the name to
:data:`concilium.models.members.Diversity` (the type of the card field and of the
``diversity`` parameter, which configuration files are checked against).

Resume: a member whose ``card.json`` exists is skipped (after checking that it belongs to the
same ensemble); weights and card are written atomically, the card last, so a killed run
resumes at the first unfinished member.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

import concilium
from concilium._registry import Registry
from concilium.data.dataset import ImageDataset
from concilium.models.architectures import ARCHITECTURES, architecture_names, create_model
from concilium.models.base import ConciliumNet
from concilium.models.fit import (
    Finetune,
    FitSettings,
    SplitTensors,
    TrainResult,
    check_device,
    check_positive,
    check_train_rows,
    fit_and_measure,
    progress_bar,
)
from concilium.models.members import (
    BACKBONE_ID,
    CARD_FILE,
    Diversity,
    MemberCard,
    load_member,
    read_card,
    save_member,
)
from concilium.vocabulary import member_id

DEFAULT_ARCH = "small-cnn"


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
    progress: Progress | None
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


_RESUME_KEYS = ("arch", "seed", "diversity", "data_fingerprint", "num_classes", "num_attributes")
"""Card fields a finished member must share with this run to be kept (and ``epochs``)."""


def _shared_backbone(job: EnsembleJob) -> ConciliumNet:
    """Train (or reload) the shared backbone of a ``head`` ensemble, once per job."""
    if BACKBONE_ID in job.shared:
        return job.shared[BACKBONE_ID]
    directory = job.out / BACKBONE_ID
    card = dict(
        job.card, arch=job.arch, seed=job.seed, epochs=job.fit.epochs, finetune=job.head.finetune
    )
    if (directory / CARD_FILE).is_file():
        keys = [k for k in _RESUME_KEYS if k != "diversity"] + ["epochs"]
        _check_existing(read_card(directory), {k: card[k] for k in keys}, directory)
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


def _check_archs(
    diversity: str, arch: str | None, archs: Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """``(arch, committee)`` after checking that they suit ``diversity``."""
    if diversity not in DIVERSITIES:
        raise ValueError(
            f"diversity must be one of {', '.join(DIVERSITIES.names())}; got {diversity!r}"
        )
    if diversity == "arch":
        if not archs:
            raise ValueError(
                "diversity 'arch' (a committee) needs the architectures to cycle through: "
                "archs=['small-cnn', 'resnet18-small', ...] (--archs small-cnn,resnet18-small)"
            )
        if arch is not None:
            raise ValueError(
                "with diversity 'arch', give the committee in archs (--archs) and leave arch "
                "(--arch) unset"
            )
    elif archs:
        raise ValueError(
            f"archs (--archs) is only used with diversity 'arch'; got diversity "
            f"{diversity!r}: use arch (--arch) or diversity 'arch'"
        )
    chosen = arch if arch is not None else DEFAULT_ARCH
    committee = tuple(archs or ())
    for name in (chosen, *committee):
        if not isinstance(name, str):
            raise TypeError(f"architecture names must be strings; got {type(name).__name__}")
        if ":" not in name and name not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {name!r}; valid names: {', '.join(architecture_names())}"
            )
    return chosen, committee


def _check_existing(card: MemberCard, expected: Mapping[str, object], directory: Path) -> None:
    for key, value in expected.items():
        have = getattr(card, key)
        if have != value:
            raise ValueError(
                f"{directory} already holds a member with {key}={have!r}, but this run asks for "
                f"{key}={value!r}; resume with the same settings, or choose another --out folder"
            )


def train_ensemble(
    dataset: ImageDataset,
    *,
    out: str | Path,
    arch: str | None = None,
    members: int = 11,
    diversity: Diversity = "head",
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    archs: Sequence[str] | None = None,
    attributes: bool = False,
    attribute_weight: float = 1.0,
    weight_decay: float = 5e-4,
    finetune: Finetune = "all",
    finetune_epochs: int | None = None,
    finetune_lr: float | None = None,
    finetune_backbone_scale: float = 0.1,
    augment: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[MemberCard]:
    """Train (or resume) an ensemble of ``members`` networks into ``out/m0``, ``out/m1``, ...

    The parameters stay flat (not grouped into :class:`FitSettings`): configuration files'
    ``[models]`` keys are checked against this signature.

    Args:
        dataset: the data; trained on its ``train`` split, measured on its ``val`` split.
        out: the models folder (created if needed; finished members in it are kept).
        arch: the architecture of every member (not with ``diversity="arch"``). Default
            ``None``: ``"small-cnn"``.
        members: number of members, >= 1. Default 11 (the ensembles paper).
        diversity: a name of :data:`DIVERSITIES`: ``"head"``, ``"seed"``, ``"bootstrap"`` or
            ``"arch"`` (module docstring). Default ``"head"``.
        epochs: training epochs from scratch (of the backbone, for ``head``). Default 10.
        lr: peak one-cycle learning rate (AdamW). Default 3e-3.
        batch_size: training batch size. Default 64.
        seed: base seed; the backbone uses ``seed``, member ``i`` uses ``seed + 1 + i``.
            Default 0.
        archs: the committee for ``diversity="arch"`` (member ``i`` gets
            ``archs[i % len(archs)]``). Default ``None``.
        attributes: multitask: add an attribute head trained with binary cross-entropy.
            Default ``False``.
        attribute_weight: weight of the attribute loss. Default 1.0.
        weight_decay: AdamW weight decay of every network trained. Default 5e-4.
        finetune: ``head`` diversity: fine-tune ``"all"`` weights or only the ``"head"``s.
            Default ``"all"``.
        finetune_epochs: ``head`` diversity: epochs of each member's fine-tuning. Default
            ``None``: ``max(1, epochs // 5)``.
        finetune_lr: ``head`` diversity: peak learning rate of the new heads. Default
            ``None``: ``lr``.
        finetune_backbone_scale: ``head`` diversity with ``finetune="all"``: the backbone's
            peak learning rate is ``finetune_lr * finetune_backbone_scale``, so that the
            gradients of a random head do not wreck the trained features. Default 0.1.
        augment: random horizontal flips. Default ``False``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        progress: rich progress bars. Default ``True``.

    Returns:
        The cards of all ``members`` members, in member order (finished ones read from disk).

    Raises:
        ValueError: bad arguments (unknown architecture, ``members < 1``, ``diversity="arch"``
            without ``archs``, attributes missing), or ``out`` holding members of another
            ensemble.
    """
    check_positive("members", members)
    settings = FitSettings(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        attribute_weight=attribute_weight,
        weight_decay=weight_decay,
        augment=augment,
    )
    check_positive("seed", seed, low=0)
    if finetune not in ("all", "head"):
        raise ValueError(f"finetune must be 'all' or 'head'; got {finetune!r}")
    if finetune_epochs is not None:
        check_positive("finetune_epochs", finetune_epochs)
    if finetune_lr is not None:
        check_positive("finetune_lr", finetune_lr, kind=float, low=0)
    check_positive("finetune_backbone_scale", finetune_backbone_scale, kind=float, low=0)
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
    member_arch, committee = _check_archs(diversity, arch, archs)
    make = DIVERSITIES.get(diversity)
    dev = check_device(device)
    if attributes and (dataset.attributes is None or not dataset.attribute_names):
        raise ValueError(
            "attributes=True (multitask) needs a dataset with attributes "
            "(attributes.csv in a folder dataset); train without --attributes"
        )
    train = SplitTensors.of(dataset, "train", attributes=attributes)
    check_train_rows(train, None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_card = dict(
        num_classes=dataset.num_classes,
        class_names=list(dataset.class_names),
        num_attributes=len(dataset.attribute_names) if attributes else 0,
        attribute_names=list(dataset.attribute_names) if attributes else [],
        in_channels=int(dataset.images.shape[1]),
        image_size=tuple(dataset.image_size),
        diversity=diversity,
        data_fingerprint=dataset.fingerprint(),
        concilium_version=concilium.__version__,
    )
    head = HeadSettings(
        finetune=finetune,
        epochs=finetune_epochs if finetune_epochs is not None else max(1, epochs // 5),
        lr=finetune_lr if finetune_lr is not None else lr,
        backbone_scale=finetune_backbone_scale,
    )
    cards: list[MemberCard] = []
    with progress_bar(progress) as bar:
        job = EnsembleJob(
            out=out,
            arch=member_arch,
            committee=committee,
            seed=seed,
            fit=settings,
            head=head,
            train=train,
            val=SplitTensors.of(dataset, "val", attributes=attributes),
            card=base_card,
            device=dev,
            progress=bar,
        )
        overall = bar.add_task("ensemble", total=members) if bar is not None else None
        for index in range(members):
            cards.append(_member(job, index, make(job, index)))
            if overall is not None:
                bar.advance(overall)  # type: ignore[union-attr]
    return cards


def _member(job: EnsembleJob, index: int, plan: MemberPlan) -> MemberCard:
    """The card of member ``index``: read from disk if finished, else trained and saved."""
    name = member_id(index)
    directory = job.out / name
    expected = dict(job.card, arch=plan.arch, seed=job.member_seed(index), member_id=name)
    if (directory / CARD_FILE).is_file():
        card = read_card(directory)
        keys = {k: expected[k] for k in _RESUME_KEYS}
        _check_existing(card, {**keys, "epochs": plan.epochs}, directory)
        return card
    model, result = plan.train()
    card = MemberCard(
        **expected,
        **plan.card,
        epochs=plan.epochs,
        val_accuracy=result.val_accuracy,
        val_attribute_accuracy=result.val_attribute_accuracy,
        gradcam_layer=model.gradcam_layer,
        train_seconds=round(result.seconds, 3),
    )
    save_member(model, card, directory)
    return card
