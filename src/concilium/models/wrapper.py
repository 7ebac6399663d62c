"""A trained classifier from elsewhere as a concilium member: logits out, the user's pixels in.

:class:`SourceModel` wraps any classifier ``nn.Module`` (a transformers, timm or torchvision
model, or the user's own) so that it follows the member contract:

- it takes images ``(N, C, H, W)`` in [0, 1] in the user's pixel grid; the model's own
  preprocessing (resize to its input size, then ``(x - mean) / std``) runs *inside* ``forward``,
  so every attribution is a map over the pixels the user sees and every Captum method, baseline
  and perturbation works on unnormalised images;
- it returns class logits ``(N, K)`` whatever the model returns (a transformers ``ModelOutput``,
  a tuple, a dict with ``"logits"``), columns in the order of the data's classes (matched by
  name when the model knows its class names, see :func:`class_order`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    >>> model = SourceModel(net, Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3))
    >>> model(torch.rand(5, 3, 4, 4)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input, applied inside :class:`SourceModel`.

    Attributes:
        mean: per-channel mean subtracted from [0, 1] images (``None``: no normalisation).
        std: per-channel standard deviation divided by (``None``: no normalisation).
        input_size: ``(H, W)`` the model was made for; images of another size are resized to
            it (bilinear, antialiased, differentiable) before the model, so maps stay in the
            user's pixel grid (``None``: any size as given).
        origin: where these values came from (``"preprocessor_config.json"``, ``"timm
            pretrained_cfg"``, ...), shown to the user.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    origin: str = "none"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std must be > 0; got {self.std}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ValueError(f"input_size must be (H, W) > 0; got {self.input_size}")

    def describe(self) -> str:
        """One line for the user: what runs inside the wrapper."""
        parts = []
        if self.input_size is not None:
            parts.append(f"resize to {self.input_size[0]}x{self.input_size[1]}")
        if self.mean is not None:
            parts.append(f"normalise mean {_fmt(self.mean)} std {_fmt(self.std or ())}")
        what = ", ".join(parts) or "no resize, no normalisation"
        return f"{what} (from {self.origin})"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def to_logits(output: Any) -> Tensor:
    """The class logits in a model's output: a tensor as it is, ``output.logits`` (transformers'
    ``ModelOutput``), ``output["logits"]`` (a dict), or the first element of a tuple/list.

    Raises:
        TypeError: an output with none of those, naming what it holds.
    """
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(output, Mapping) and "logits" in output:
        logits = output["logits"]
    elif hasattr(output, "logits") and isinstance(output.logits, Tensor):
        logits = output.logits
    elif isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        logits = output[0]
    else:
        held = list(output) if isinstance(output, Mapping) else type(output).__name__
        raise TypeError(
            f"cannot find class logits in the model's output ({held}); a member must return a "
            "logits tensor, a tuple whose first element is the logits, or an object or dict "
            "with 'logits'"
        )
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"the model's logits must be (N, classes); got {shape}")
    return logits


def class_order(model_names: Sequence[str] | None, data_names: Sequence[str], *,
                num_classes: int, what: str) -> list[int]:
    """For each class of the data, the model's output index of the class of that name.

    Args:
        model_names: the model's class names in output order (``None``: it has none; then the
            data's classes are taken in order and only the count must agree).
        data_names: the data's class names, in label order.
        num_classes: the model's number of outputs.
        what: the model, as named in errors.

    Returns:
        ``order`` with ``logits[:, order]`` in the data's class order.

    Raises:
        ValueError: the counts differ, or the names differ (naming both lists).
    """
    data_names = list(data_names)
    if model_names is None:
        if num_classes != len(data_names):
            raise ValueError(
                f"{what} has {num_classes} classes, the data has {len(data_names)} "
                f"({_short(data_names)}); use a model trained for the data's classes"
            )
        return list(range(num_classes))
    model_names = list(model_names)
    if len(model_names) != num_classes:
        raise ValueError(f"{what} names {len(model_names)} classes but has {num_classes} outputs")
    if sorted(model_names) != sorted(data_names):
        only_model = [n for n in model_names if n not in data_names]
        only_data = [n for n in data_names if n not in model_names]
        raise ValueError(
            f"{what} was trained on other classes than the data: the model has "
            f"{len(model_names)} classes {_short(model_names)}, the data has "
            f"{len(data_names)} {_short(data_names)} (only in the model: {_short(only_model)}; "
            f"only in the data: {_short(only_data)}); rename the data's label folders to the "
            "model's class names or use a model trained for these classes"
        )
    if len(set(model_names)) != len(model_names):
        raise ValueError(f"{what} has repeated class names {_short(model_names)}")
    index = {n: i for i, n in enumerate(model_names)}
    return [index[n] for n in data_names]


def _short(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(map(str, names[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


class SourceModel(nn.Module):
    """A classifier with its preprocessing inside and logits in the data's class order.

    Args:
        net: the classifier (its parameters are this module's ``net.*``).
        preprocessing: resize and normalisation applied inside ``forward``.
        order: ``logits[:, order]`` puts the outputs in the data's class order (``None``: as
            the model gives them).
        gradcam_layer: dotted name, within this module (``net.<...>``), of the default layer
            of layer methods (``None``: the model documents none).
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing | None = None, *,
                 order: Sequence[int] | None = None, gradcam_layer: str | None = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module; got {type(net).__name__}")
        self.net = net
        self.preprocessing = preprocessing or Preprocessing()
        p = self.preprocessing
        stats = (p.mean, p.std) if p.mean is not None and p.std is not None else ((), ())
        self.register_buffer("mean", torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("order", torch.tensor(list(order) if order is not None else [],
                                                   dtype=torch.long))
        if gradcam_layer is not None and gradcam_layer not in dict(self.named_modules()):
            raise ValueError(f"gradcam_layer {gradcam_layer!r} is not a module of this model")
        self.gradcam_layer = gradcam_layer

    def preprocess(self, x: Tensor) -> Tensor:
        """Resize to the model's input size and normalise (differentiable)."""
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got {tuple(x.shape)}")
        size = self.preprocessing.input_size
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.mean.numel():
            if x.shape[1] != self.mean.shape[1]:
                raise ValueError(f"the model normalises {self.mean.shape[1]} channels; the "
                                 f"images have {x.shape[1]}")
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, K)`` of images in [0, 1], in the data's class order."""
        logits = to_logits(self.net(self.preprocess(x)))
        if self.order.numel():
            logits = logits[:, self.order]
        return logits

    def gradcam_module(self) -> nn.Module:
        """The module named by ``gradcam_layer``.

        Raises:
            ValueError: the model documents no layer.
        """
        if self.gradcam_layer is None:
            raise ValueError("this model documents no gradcam_layer; pass layer=<name>")
        return self.get_submodule(self.gradcam_layer)
