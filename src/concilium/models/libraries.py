"""The ``timm:NAME@WEIGHTS`` and ``torchvision:NAME@WEIGHTS`` member sources.

The network is built by the library with random initialisation (``pretrained=False`` /
``weights=None``; nothing is downloaded) and as many classes as the weights' classifier has,
then the state dict in the local safetensors file ``WEIGHTS`` is loaded strictly. The file is
the library's own state dict for ``NAME`` (``safetensors.torch.save_file(model.state_dict(),
...)``; timm's Hugging Face ``model.safetensors`` files are such).

Preprocessing (inside the wrapper): timm's ``pretrained_cfg`` (``input_size``, ``mean``,
``std``) and torchvision's weights meta (``get_model_weights(NAME).DEFAULT.transforms()``:
``crop_size``, ``mean``, ``std``), both read from the installed package.

Class names: a safetensors file may carry them in its metadata under ``class_names`` (a JSON
list, ``save_file(state, path, metadata={"class_names": json.dumps(names)})``); they are then
matched by name to the data's classes, else only their number must agree.
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from concilium.models.sources import (
    SOURCE_KINDS,
    Loaded,
    Source,
    SourceKind,
    default_layer,
    read_safetensors,
    split_weights,
    wrap_classifier,
)
from concilium.models.weights import load_weights_into
from concilium.models.wrapper import Preprocessing


def _library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"source {name}:NAME needs the {name!r} package, which is not "
                         f"installed; pip install {name}") from None


def _unknown(kind: str, name: str, valid: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.6)
    return ValueError(f"source {kind}:{name}: {kind} has no model {name!r}"
                      + (f"; close: {', '.join(close)}" if close else ""))


def file_class_names(path: str) -> list[str] | None:
    """The ``class_names`` list stored in a safetensors file's metadata, or ``None``.

    Raises:
        ValueError: metadata ``class_names`` that is not a JSON list of strings.
    """
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    raw = meta.get("class_names")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: metadata class_names must be a JSON list of strings")
    return names


def _classes(state: dict[str, torch.Tensor], key: str, source: Source) -> int:
    weight = state.get(f"{key}.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError(
            f"source {source.text}: the weights have no classifier {key}.weight; a member needs "
            "its trained classification head (save the whole model's state_dict())"
        )
    return int(weight.shape[0])


def _finish(net: nn.Module, state: dict[str, torch.Tensor], source: Source, *, arch: str,
            num_classes: int, class_names: Sequence[str] | None,
            preprocessing: Preprocessing) -> Loaded:
    load_weights_into(net, state, source=str(source.weights))
    return wrap_classifier(
        net, source, arch=arch, num_classes=num_classes,
        model_class_names=file_class_names(str(source.weights)), class_names=class_names,
        preprocessing=preprocessing, gradcam_layer=default_layer(net))


# ----------------------------------------------------------------------------- timm


def _parse_timm(rest: str) -> Source:
    name, weights = split_weights(rest, kind="timm", required=True)
    return Source("timm", name, weights)


def timm_preprocessing(cfg: dict[str, Any]) -> Preprocessing:
    """Input size and normalisation from a timm ``pretrained_cfg``."""
    size = cfg.get("input_size")
    return Preprocessing(
        mean=tuple(cfg["mean"]) if cfg.get("mean") is not None else None,
        std=tuple(cfg["std"]) if cfg.get("std") is not None else None,
        input_size=(int(size[-2]), int(size[-1])) if size is not None else None,
        origin="timm pretrained_cfg")


def _load_timm(source: Source, class_names: Sequence[str] | None) -> list[Loaded]:
    timm = _library("timm")
    if not timm.is_model(source.target):
        raise _unknown("timm", source.target, timm.list_models())
    state = read_safetensors(str(source.weights), what=source.text)
    cfg = dict(timm.models.get_pretrained_cfg(source.target).to_dict())
    classifier = cfg.get("classifier") or "head"
    key = classifier[0] if isinstance(classifier, list | tuple) else classifier
    num_classes = _classes(state, key, source)
    net = timm.create_model(source.target, pretrained=False, num_classes=num_classes)
    return [_finish(net, state, source, arch=f"timm:{source.target}", num_classes=num_classes,
                    class_names=class_names,
                    preprocessing=timm_preprocessing(dict(net.pretrained_cfg or cfg)))]


SOURCE_KINDS.add("timm", SourceKind(
    syntax="timm:NAME@WEIGHTS.safetensors", example="timm:resnet50@/w/resnet50.safetensors",
    description="a timm model with its state dict in a local safetensors file",
    parse=_parse_timm, count=lambda s: 1,
    load=_load_timm, describe=lambda s: [{"arch": f"timm:{s.target}"}]))


# ----------------------------------------------------------------------------- torchvision


def _parse_torchvision(rest: str) -> Source:
    name, weights = split_weights(rest, kind="torchvision", required=True)
    return Source("torchvision", name, weights)


def torchvision_preprocessing(tv: Any, name: str) -> Preprocessing:
    """Input size and normalisation from torchvision's weights meta for ``name`` (the default
    weights' transforms; ``none`` when the model has no weights enum)."""
    try:
        transforms = tv.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return Preprocessing(origin="none: torchvision has no weights meta for this model")
    crop = getattr(transforms, "crop_size", None)
    size = (int(crop[0]), int(crop[-1])) if crop else None
    return Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std),
                         input_size=size, origin="torchvision weights meta")


def _last_linear(net: nn.Module) -> str:
    last = None
    for name, sub in net.named_modules():
        if isinstance(sub, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier")
    return last


def _load_torchvision(source: Source, class_names: Sequence[str] | None) -> list[Loaded]:
    tv = _library("torchvision")
    valid = tv.models.list_models(module=tv.models)
    if source.target not in valid:
        raise _unknown("torchvision", source.target, valid)
    state = read_safetensors(str(source.weights), what=source.text)
    with torch.device("meta"):  # the classifier's name, without allocating the network
        key = _last_linear(tv.models.get_model(source.target, weights=None))
    num_classes = _classes(state, key, source)
    net = tv.models.get_model(source.target, weights=None, num_classes=num_classes)
    return [_finish(net, state, source, arch=f"torchvision:{source.target}",
                    num_classes=num_classes, class_names=class_names,
                    preprocessing=torchvision_preprocessing(tv, source.target))]


SOURCE_KINDS.add("torchvision", SourceKind(
    syntax="torchvision:NAME@WEIGHTS.safetensors",
    description="a torchvision classifier with its state dict in a local safetensors file",
    example="torchvision:vit_b_16@/w/vit_b_16.safetensors", parse=_parse_torchvision,
    count=lambda s: 1,
    load=_load_torchvision, describe=lambda s: [{"arch": f"torchvision:{s.target}"}]))

__all__ = ["file_class_names", "timm_preprocessing", "torchvision_preprocessing"]
