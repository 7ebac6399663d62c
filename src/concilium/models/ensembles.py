"""Training an ensemble: ``members`` networks made diverse in one of the
:data:`~concilium.models.diversities.DIVERSITIES` (``head``, ``seed``, ``bootstrap``, ``arch``;
see :mod:`concilium.models.diversities`).

Seeds: the backbone uses ``seed``; member ``i`` uses ``seed + 1 + i`` (head initialisation,
weight initialisation, batch order, augmentation, bootstrap sample). On the CPU, the same
arguments give bit-identical weights.

Resume: a member whose ``card.json`` exists is skipped (after checking that it belongs to the
same ensemble); weights and card are written atomically, the card last, so a killed run
resumes at the first unfinished member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

import concilium
from concilium.data.dataset import ImageDataset
from concilium.models.architectures import ARCHITECTURES, architecture_names
from concilium.models.diversities import (
    DIVERSITIES,
    RESUME_KEYS,
    EnsembleJob,
    HeadSettings,
    MemberPlan,
    check_existing,
)
from concilium.models.fit import progress_bar
from concilium.models.members import (
    CARD_FILE,
    MAX_MEMBERS,
    Diversity,
    MemberCard,
    read_card,
    save_member,
)
from concilium.models.settings import (
    Finetune,
    FitSettings,
    SplitTensors,
    check_device,
    check_positive,
    check_train_rows,
)
from concilium.vocabulary import member_id

DEFAULT_ARCH = "small-cnn"


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

    The parameters stay flat (not grouped into a
    :class:`~concilium.models.settings.FitSettings`): configuration files' ``[models]`` keys
    are checked against this signature.

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
    if members > MAX_MEMBERS:
        raise ValueError(f"members must be at most {MAX_MEMBERS:,}; got {members:,}")
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
        overall = bar.add_task("ensemble", total=members, unit="members") if bar is not None else None
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
        keys = {k: expected[k] for k in RESUME_KEYS}
        # plan.card too: a finished head member records its backbone's epochs and fine-tuning
        check_existing(card, {**keys, "epochs": plan.epochs, **plan.card}, directory)
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
