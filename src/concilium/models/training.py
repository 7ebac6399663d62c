"""Training ensemble members: one member, or a whole ensemble made diverse in one of four ways.

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

Optimisation: AdamW with a one-cycle learning-rate schedule (the fastest schedule we measured
on CPU for these small networks), class cross-entropy plus ``attribute_weight`` times the
binary cross-entropy of the attribute head (multitask), on the ``train`` split; accuracy on the
``val`` split goes in each member's card.

Resume: a member whose ``card.json`` exists is skipped (after checking that it belongs to the
same ensemble); weights and card are written atomically, the card last, so a killed run
resumes at the first unfinished member.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn
from torch.nn import functional as F

import concilium
from concilium.data.dataset import ImageDataset
from concilium.models.architectures import ARCHITECTURES, architecture_names, create_model
from concilium.models.base import ConciliumNet
from concilium.models.checkpoint import (
    BACKBONE_ID,
    CARD_FILE,
    Diversity,
    MemberCard,
    load_member,
    read_card,
    save_member,
)

Finetune = Literal["all", "head"]
DIVERSITIES: tuple[str, ...] = ("head", "seed", "bootstrap", "arch")


@dataclass
class TrainResult:
    """What :func:`train_member` reports.

    Attributes:
        val_accuracy: class accuracy on the validation split (``None`` without one).
        val_attribute_accuracy: mean per-attribute accuracy on the validation split
            (``None`` without attributes or validation split).
        seconds: wall time of the training.
        final_loss: mean training loss of the last epoch.
    """

    val_accuracy: float | None
    val_attribute_accuracy: float | None
    seconds: float
    final_loss: float


@dataclass
class _Split:
    images: Tensor
    labels: Tensor
    attributes: Tensor | None


def _split(dataset: ImageDataset, name: str, *, attributes: bool) -> _Split:
    rows = torch.tensor([i for i, s in enumerate(dataset.splits) if s == name], dtype=torch.long)
    attrs = None
    if attributes and dataset.attributes is not None:
        attrs = dataset.attributes[rows].float()
    return _Split(dataset.images[rows], dataset.labels[rows].long(), attrs)


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {str(device)!r}")
    return device


def _check_positive(name: str, value: object, *, kind: type = int, low: float = 1) -> None:
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if kind is float and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not value >= low or (kind is float and not math.isfinite(value)):  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {low}; got {value}")


def _check_training_args(
    *, epochs: int, lr: float, batch_size: int, attribute_weight: float, seed: int
) -> None:
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("seed", seed, low=0)
    _check_positive("lr", lr, kind=float, low=0)
    if lr == 0:
        raise ValueError("lr must be > 0; try 3e-3")
    _check_positive("attribute_weight", attribute_weight, kind=float, low=0)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attributes: Tensor | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[float, float | None]:
    """Class accuracy (and mean per-attribute accuracy) of ``model`` in eval mode.

    Args:
        model: a :class:`ConciliumNet` (any module returning logits when no attributes).
        images: ``(N, C, H, W)``.
        labels: ``(N,)``.
        attributes: ``(N, A)`` 0/1 targets of the attribute head, or ``None``. Default ``None``.
        batch_size: evaluation batch size. Default 256.
        device: where to run. Default ``"cpu"``.

    Returns:
        ``(accuracy, attribute_accuracy or None)``; accuracy is ``nan`` for ``N == 0``.
    """
    was_training = model.training
    model.eval()
    correct, attr_correct, n = 0, 0.0, images.shape[0]
    try:
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            if attributes is not None:
                logits, attr_logits = model.forward_all(x)  # type: ignore[operator]
                a = attributes[start : start + batch_size].to(device)
                attr_correct += ((attr_logits > 0).float() == a).float().mean(1).sum().item()
            else:
                logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    if n == 0:
        return float("nan"), None
    return correct / n, (attr_correct / n if attributes is not None else None)


def multitask_loss(
    logits: Tensor,
    labels: Tensor,
    attribute_logits: Tensor | None = None,
    attributes: Tensor | None = None,
    *,
    attribute_weight: float = 1.0,
) -> Tensor:
    """Class cross-entropy plus ``attribute_weight`` times the mean binary cross-entropy of the
    attribute head (when both ``attribute_logits`` and ``attributes`` are given).

    Args:
        logits: ``(N, C)`` class logits.
        labels: ``(N,)`` class indices.
        attribute_logits: ``(N, A)`` attribute logits, or ``None``.
        attributes: ``(N, A)`` 0/1 attribute targets, or ``None``.
        attribute_weight: weight of the attribute term. Default 1.0.

    Returns:
        The scalar loss.
    """
    loss = F.cross_entropy(logits, labels)
    if attribute_logits is not None and attributes is not None:
        bce = F.binary_cross_entropy_with_logits(attribute_logits, attributes.float())
        loss = loss + attribute_weight * bce
    return loss


def _one_cycle(
    optimizer: torch.optim.Optimizer, max_lr: list[float], *, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle schedule (25% warm-up); a constant rate for schedules too short for its phases
    (OneCycleLR divides by the length of its warm-up phase, which is zero below 8 steps)."""
    if total_steps < 8:
        for group, lr in zip(optimizer.param_groups, max_lr, strict=True):
            group["lr"] = lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.25
    )


def _fit(
    model: ConciliumNet,
    train: _Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    indices: Tensor | None,
    attribute_weight: float,
    trainable: Finetune,
    backbone_lr_scale: float = 1.0,
    weight_decay: float,
    augment: bool,
    device: torch.device,
    progress: Progress | None,
    description: str,
) -> float:
    """Train in place; returns the mean loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(train.images.shape[0]) if indices is None else indices.long()
    n = rows.numel()
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # drop the last partial batch (batch norm needs > 1 sample)
    total = steps_per_epoch * epochs
    heads = [m for m in (model.head, model.attribute_head) if m is not None]
    if trainable == "head":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        groups = [{"params": [p for h in heads for p in h.parameters()], "lr": lr}]
    else:
        head_ids = {id(p) for h in heads for p in h.parameters()}
        groups = [
            {"params": [p for h in heads for p in h.parameters()], "lr": lr},
            {
                "params": [p for p in model.parameters() if id(p) not in head_ids],
                "lr": lr * backbone_lr_scale,
            },
        ]
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # ~1.7x faster convolutions on CPU
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    scheduler = _one_cycle(optimizer, [g["lr"] for g in groups], total_steps=total)
    task = progress.add_task(description, total=total) if progress is not None else None
    use_attrs = train.attributes is not None and model.attribute_head is not None
    model.train()
    if trainable == "head":
        model.backbone.eval()  # frozen batch-norm statistics
    last_loss = float("nan")
    try:
        for _epoch in range(epochs):
            order = rows[torch.randperm(n, generator=generator)]
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * bs : (step + 1) * bs]
                x = train.images[idx]
                if augment:
                    flip = torch.rand(bs, generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                x = x.to(device, non_blocking=True)
                if device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                y = train.labels[idx].to(device, non_blocking=True)
                logits, attr_logits = model.forward_all(x)
                a = None
                if use_attrs:
                    a = train.attributes[idx].to(device, non_blocking=True)  # type: ignore[index]
                loss = multitask_loss(
                    logits,
                    y,
                    attr_logits if use_attrs else None,
                    a,
                    attribute_weight=attribute_weight,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item()
                if task is not None:
                    progress.advance(task)  # type: ignore[union-attr]
            last_loss = running / max(steps_per_epoch, 1)
            if not math.isfinite(last_loss):
                raise ValueError(
                    f"training diverged (loss {last_loss}) in {description or 'training'}; "
                    f"lower the learning rate (lr={lr})"
                )
        if trainable == "all":
            _recalibrate_batchnorm(model, train, rows, batch_size=bs, device=device)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.to(memory_format=torch.contiguous_format)
        model.eval()
        if task is not None:
            progress.remove_task(task)  # type: ignore[union-attr]
    return last_loss


BN_RECALIBRATION_SAMPLES = 1024


@torch.no_grad()
def _recalibrate_batchnorm(
    model: nn.Module, train: _Split, rows: Tensor, *, batch_size: int, device: torch.device
) -> None:
    """Re-estimate batch-norm running statistics with the final weights ("precise BN").

    After a short schedule the exponential running averages lag far behind the weights (we
    measured eval-mode accuracy at chance with train-mode accuracy at 88%); one forward pass
    over up to :data:`BN_RECALIBRATION_SAMPLES` training rows with cumulative averaging fixes it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the recalibration batches
    model.train()
    subset = rows[: min(rows.numel(), BN_RECALIBRATION_SAMPLES)]
    try:
        for start in range(0, subset.numel(), batch_size):
            idx = subset[start : start + batch_size]
            if idx.numel() < 2:
                break
            x = train.images[idx].to(device, non_blocking=True)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def train_member(
    model: ConciliumNet,
    dataset: ImageDataset,
    *,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    indices: Tensor | None = None,
    attributes: bool = False,
    attribute_weight: float = 1.0,
    trainable: Finetune = "all",
    weight_decay: float = 5e-4,
    augment: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> TrainResult:
    """Train one network in place on the ``train`` split and measure it on the ``val`` split.

    Args:
        model: the network (e.g. from :func:`create_model`); left in eval mode on ``device``.
        dataset: the data; only its ``train`` and ``val`` splits are used.
        epochs: passes over the training rows. Default 10.
        lr: peak learning rate of the one-cycle schedule (AdamW). Default 3e-3.
        batch_size: training batch size (the last partial batch of an epoch is dropped).
            Default 64.
        seed: seeds batch order and augmentation. Default 0.
        indices: rows of the train split to train on (e.g. a bootstrap sample, repeats
            allowed); ``None`` for all. Default ``None``.
        attributes: multitask: also train the attribute head on ``dataset.attributes`` with
            binary cross-entropy. Default ``False``.
        attribute_weight: weight of the attribute loss next to the class loss. Default 1.0.
        trainable: ``"all"`` weights, or ``"head"``: the heads only (backbone frozen, its
            batch-norm statistics too). Default ``"all"``.
        weight_decay: AdamW weight decay. Default 5e-4.
        augment: random horizontal flips. Default ``False``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        progress: show a rich progress bar. Default ``False``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad arguments, no training rows, attributes asked for but missing, or a
            diverging loss.
    """
    _check_training_args(
        epochs=epochs, lr=lr, batch_size=batch_size, attribute_weight=attribute_weight, seed=seed
    )
    if not isinstance(model, ConciliumNet):
        raise TypeError(
            f"model must be a ConciliumNet (see concilium.models.create_model); "
            f"got {type(model).__name__}"
        )
    if trainable not in ("all", "head"):
        raise ValueError(f"trainable must be 'all' or 'head'; got {trainable!r}")
    _check_attributes(model, dataset, attributes)
    dev = _check_device(device)
    train = _split(dataset, "train", attributes=attributes)
    val = _split(dataset, "val", attributes=attributes)
    _check_train_rows(train, indices)
    with _progress(progress) as bar:
        return _train_and_measure(
            model,
            train,
            val,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            indices=indices,
            attribute_weight=attribute_weight,
            trainable=trainable,
            weight_decay=weight_decay,
            augment=augment,
            device=dev,
            progress=bar,
            description="training",
        )


def _check_attributes(model: ConciliumNet, dataset: ImageDataset, attributes: bool) -> None:
    if not attributes:
        return
    if dataset.attributes is None or not dataset.attribute_names:
        raise ValueError(
            "attributes=True (multitask) needs a dataset with attributes "
            "(attributes.csv in a folder dataset); train without --attributes"
        )
    if model.attribute_head is None or model.num_attributes != len(dataset.attribute_names):
        raise ValueError(
            f"the model's attribute head has {model.num_attributes} outputs but the dataset has "
            f"{len(dataset.attribute_names)} attributes; create the model with "
            f"num_attributes={len(dataset.attribute_names)}"
        )


def _check_train_rows(train: _Split, indices: Tensor | None) -> None:
    n = train.images.shape[0]
    if n < 2:
        raise ValueError(
            f"the train split has {n} samples; at least 2 are needed (check the dataset splits)"
        )
    if indices is not None and (
        indices.ndim != 1 or indices.numel() < 2 or indices.min() < 0 or indices.max() >= n
    ):
        raise ValueError(f"indices must be a 1-D tensor of >= 2 rows in [0, {n})")


def _train_and_measure(
    model: ConciliumNet, train: _Split, val: _Split, **fit_args: object
) -> TrainResult:
    device = fit_args["device"]
    start = time.perf_counter()
    loss = _fit(model, train, **fit_args)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    acc: float | None
    acc, attr_acc = evaluate_accuracy(
        model,
        val.images,
        val.labels,
        attributes=val.attributes,
        device=device,  # type: ignore[arg-type]
    )
    if val.images.shape[0] == 0:
        acc, attr_acc = None, None
    return TrainResult(acc, attr_acc, seconds, loss)


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(show: bool) -> Progress | _NoProgress:
    if not show:
        return _NoProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def _resolve_archs(
    diversity: str, arch: str | None, archs: Sequence[str] | None, members: int
) -> list[str]:
    if diversity not in DIVERSITIES:
        raise ValueError(f"diversity must be one of {', '.join(DIVERSITIES)}; got {diversity!r}")
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
        chosen = [archs[i % len(archs)] for i in range(members)]
    else:
        if archs:
            raise ValueError(
                f"archs (--archs) is only used with diversity 'arch'; got diversity "
                f"{diversity!r}: use arch (--arch) or diversity 'arch'"
            )
        chosen = [arch or "small-cnn"] * members
    for name in set(chosen):
        if not isinstance(name, str):
            raise TypeError(f"architecture names must be strings; got {type(name).__name__}")
        if ":" not in name and name not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {name!r}; valid names: {', '.join(architecture_names())}"
            )
    return chosen


def _check_existing(card: MemberCard, expected: dict[str, object], directory: Path) -> None:
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
    finetune: Finetune = "all",
    finetune_epochs: int | None = None,
    finetune_lr: float | None = None,
    finetune_backbone_scale: float = 0.1,
    augment: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[MemberCard]:
    """Train (or resume) an ensemble of ``members`` networks into ``out/m0``, ``out/m1``, ...

    Args:
        dataset: the data; trained on its ``train`` split, measured on its ``val`` split.
        out: the models folder (created if needed; finished members in it are kept).
        arch: the architecture of every member (not with ``diversity="arch"``). Default
            ``None``: ``"small-cnn"``.
        members: number of members, >= 1. Default 11 (the ensembles paper).
        diversity: ``"head"``, ``"seed"``, ``"bootstrap"`` or ``"arch"`` (module docstring).
            Default ``"head"``.
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
    _check_positive("members", members)
    _check_training_args(
        epochs=epochs, lr=lr, batch_size=batch_size, attribute_weight=attribute_weight, seed=seed
    )
    if finetune not in ("all", "head"):
        raise ValueError(f"finetune must be 'all' or 'head'; got {finetune!r}")
    if finetune_epochs is not None:
        _check_positive("finetune_epochs", finetune_epochs)
    if finetune_lr is not None:
        _check_positive("finetune_lr", finetune_lr, kind=float, low=0)
    _check_positive("finetune_backbone_scale", finetune_backbone_scale, kind=float, low=0)
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
    chosen = _resolve_archs(diversity, arch, archs, members)
    dev = _check_device(device)
    if attributes and (dataset.attributes is None or not dataset.attribute_names):
        raise ValueError(
            "attributes=True (multitask) needs a dataset with attributes "
            "(attributes.csv in a folder dataset); train without --attributes"
        )
    train = _split(dataset, "train", attributes=attributes)
    val = _split(dataset, "val", attributes=attributes)
    _check_train_rows(train, None)
    ft_epochs = finetune_epochs if finetune_epochs is not None else max(1, epochs // 5)
    ft_lr = finetune_lr if finetune_lr is not None else lr
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    num_attributes = len(dataset.attribute_names) if attributes else 0
    fingerprint = dataset.fingerprint()
    base_card = dict(
        num_classes=dataset.num_classes,
        class_names=list(dataset.class_names),
        num_attributes=num_attributes,
        attribute_names=list(dataset.attribute_names) if attributes else [],
        in_channels=int(dataset.images.shape[1]),
        image_size=tuple(dataset.image_size),
        diversity=diversity,
        data_fingerprint=fingerprint,
        concilium_version=concilium.__version__,
    )
    fit_args = dict(
        lr=lr,
        batch_size=batch_size,
        attribute_weight=attribute_weight,
        weight_decay=5e-4,
        augment=augment,
        device=dev,
    )

    def build(name: str, member_seed: int) -> ConciliumNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(member_seed)
            return create_model(
                name,
                num_classes=dataset.num_classes,
                num_attributes=num_attributes,
                in_channels=int(dataset.images.shape[1]),
            )

    cards: list[MemberCard] = []
    with _progress(progress) as bar:
        overall = bar.add_task("ensemble", total=members) if bar is not None else None
        backbone: ConciliumNet | None = None
        if diversity == "head":
            backbone = _train_backbone(
                out / BACKBONE_ID,
                build=lambda: build(chosen[0], seed),
                train=train,
                val=val,
                card=dict(base_card, arch=chosen[0], seed=seed, epochs=epochs, finetune=finetune),
                epochs=epochs,
                seed=seed,
                fit_args=fit_args,
                bar=bar,
                device=dev,
            )
        for i, name in enumerate(chosen):
            member_id = f"m{i}"
            member_seed = seed + 1 + i
            directory = out / member_id
            expected = dict(base_card, arch=name, seed=member_seed, member_id=member_id)
            member_epochs = ft_epochs if diversity == "head" else epochs
            if (directory / CARD_FILE).is_file():
                card = read_card(directory)
                _check_existing(
                    card,
                    {
                        **{
                            k: expected[k]
                            for k in (
                                "arch",
                                "seed",
                                "diversity",
                                "data_fingerprint",
                                "num_classes",
                                "num_attributes",
                            )
                        },
                        "epochs": member_epochs,
                    },
                    directory,
                )
                cards.append(card)
                if overall is not None:
                    bar.advance(overall)  # type: ignore[union-attr]
                continue
            if backbone is not None:  # head diversity
                model = copy.deepcopy(backbone)
                model.reset_heads(torch.Generator().manual_seed(member_seed))
                result = _train_and_measure(
                    model,
                    train,
                    val,
                    **dict(fit_args, lr=ft_lr),
                    epochs=ft_epochs,
                    seed=member_seed,
                    indices=None,
                    trainable=finetune,
                    backbone_lr_scale=finetune_backbone_scale,
                    progress=bar,
                    description=f"{member_id} fine-tune ({name})",
                )
                extra = dict(epochs=member_epochs, backbone_epochs=epochs, finetune=finetune)
            else:
                model = build(name, member_seed)
                indices = None
                if diversity == "bootstrap":
                    g = torch.Generator().manual_seed(member_seed)
                    n = train.images.shape[0]
                    indices = torch.randint(0, n, (n,), generator=g)
                result = _train_and_measure(
                    model,
                    train,
                    val,
                    **fit_args,
                    epochs=epochs,
                    seed=member_seed,
                    indices=indices,
                    trainable="all",
                    progress=bar,
                    description=f"{member_id} ({name})",
                )
                extra = dict(epochs=member_epochs)
            card = MemberCard(
                **expected,
                **extra,
                val_accuracy=result.val_accuracy,
                val_attribute_accuracy=result.val_attribute_accuracy,
                gradcam_layer=model.gradcam_layer,
                train_seconds=round(result.seconds, 3),
            )
            save_member(model, card, directory)
            cards.append(card)
            if overall is not None:
                bar.advance(overall)  # type: ignore[union-attr]
    return cards


def _train_backbone(
    directory: Path,
    *,
    build: object,
    train: _Split,
    val: _Split,
    card: dict,
    epochs: int,
    seed: int,
    fit_args: dict,
    bar: Progress | None,
    device: torch.device,
) -> ConciliumNet:
    """Train (or reload) the shared backbone of a ``head`` ensemble."""
    if (directory / CARD_FILE).is_file():
        existing = read_card(directory)
        _check_existing(
            existing,
            {
                k: card[k]
                for k in (
                    "arch",
                    "seed",
                    "data_fingerprint",
                    "num_classes",
                    "num_attributes",
                    "epochs",
                )
            },
            directory,
        )
        model, _ = load_member(directory, device="cpu")
        return model
    model = build()  # type: ignore[operator]
    result = _train_and_measure(
        model,
        train,
        val,
        **fit_args,
        epochs=epochs,
        seed=seed,
        indices=None,
        trainable="all",
        progress=bar,
        description=f"backbone ({card['arch']})",
    )
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
    return model.cpu()
