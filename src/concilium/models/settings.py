"""What training a network takes: its settings, its data as tensors, and the checks of both.

Example:
    >>> FitSettings(epochs=2).weight_decay
    0.0005
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from concilium.data.dataset import ImageDataset
from concilium.models.base import ConciliumNet

Finetune = Literal["all", "head"]
"""What a fit trains: ``"all"`` weights, or the ``"head"``s only (backbone frozen)."""


@dataclass(frozen=True)
class SplitTensors:
    """The tensors of one split, ready for training or measuring.

    Attributes:
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` long.
        attributes: ``(N, A)`` float 0/1 targets of the attribute head, or ``None``.
    """

    images: Tensor
    labels: Tensor
    attributes: Tensor | None

    @classmethod
    def of(cls, dataset: ImageDataset, name: str, *, attributes: bool) -> SplitTensors:
        """The rows of ``dataset`` in split ``name`` (attributes only if ``attributes``)."""
        rows = torch.tensor(
            [i for i, s in enumerate(dataset.splits) if s == name], dtype=torch.long
        )
        attrs = None
        if attributes and dataset.attributes is not None:
            attrs = dataset.attributes[rows].float()
        return cls(dataset.images[rows], dataset.labels[rows].long(), attrs)


@dataclass(frozen=True)
class FitSettings:
    """How a network is optimised (AdamW, one-cycle schedule); checked on creation.

    Attributes:
        epochs: passes over the training rows, >= 1. Default 10.
        lr: peak learning rate of the one-cycle schedule, > 0. Default 3e-3.
        batch_size: training batch size (the last partial batch of an epoch is dropped).
            Default 64.
        attribute_weight: weight of the attribute loss next to the class loss. Default 1.0.
        weight_decay: AdamW weight decay, >= 0. Default 5e-4.
        augment: random horizontal flips. Default ``False``.

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range.
    """

    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    attribute_weight: float = 1.0
    weight_decay: float = 5e-4
    augment: bool = False

    def __post_init__(self) -> None:
        check_positive("epochs", self.epochs)
        check_positive("batch_size", self.batch_size)
        check_positive("lr", self.lr, kind=float, low=0)
        if self.lr == 0:
            raise ValueError("lr must be > 0; try 3e-3")
        check_positive("attribute_weight", self.attribute_weight, kind=float, low=0)
        check_positive("weight_decay", self.weight_decay, kind=float, low=0)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, which must be the CPU or an available GPU.

    Raises:
        ValueError: not ``cpu``/``cuda``, or ``cuda`` without CUDA.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {str(device)!r}")
    return device


def check_positive(name: str, value: object, *, kind: type = int, low: float = 1) -> None:
    """Check that ``value`` is an int (``kind=int``) or a finite number (``kind=float``) >= ``low``.

    Raises:
        TypeError: the wrong type (``bool`` is never a number here).
        ValueError: below ``low``, or not finite.
    """
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if kind is float and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not value >= low or (kind is float and not math.isfinite(value)):  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {low}; got {value}")


def check_attributes(model: ConciliumNet, dataset: ImageDataset, attributes: bool) -> None:
    """With ``attributes``, check the dataset has attributes and the model a head that fits them.

    Raises:
        ValueError: no attributes in the dataset, or an attribute head of another width.
    """
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


def check_train_rows(train: SplitTensors, indices: Tensor | None) -> None:
    """Check there are >= 2 training rows, and that ``indices`` (if given) select >= 2 of them.

    Raises:
        ValueError: too few rows, or indices out of range.
    """
    n = train.images.shape[0]
    if n < 2:
        raise ValueError(
            f"the train split has {n} samples; at least 2 are needed (check the dataset splits)"
        )
    if indices is not None and (
        indices.ndim != 1 or indices.numel() < 2 or indices.min() < 0 or indices.max() >= n
    ):
        raise ValueError(f"indices must be a 1-D tensor of >= 2 rows in [0, {n})")
