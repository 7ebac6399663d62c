"""Member sources: where the classifiers of an ensemble or committee come from.

A source is a string, usable wherever members are (``concilium explain --models``, the
``[models] sources`` key of an experiment, :func:`load_sources`):

=================================  ==========================================================
``MODELS`` or ``folder:MODELS``    a members folder (``MODELS/m0``, ``m1``, ... as trained by
                                   ``concilium train``): one member per folder
``hf:DIR``                         a transformers image classifier saved with
                                   ``save_pretrained`` (``config.json`` + safetensors, and
                                   ``preprocessor_config.json`` when saved)
``timm:NAME@WEIGHTS``              ``timm.create_model(NAME)`` with the state dict in the
                                   local safetensors file ``WEIGHTS``
``torchvision:NAME@WEIGHTS``       ``torchvision.models.get_model(NAME)``, likewise
``python:MODULE:FACTORY[@WEIGHTS]`` any ``nn.Module``: ``MODULE.FACTORY()`` (imported, called
                                   without arguments), then the optional safetensors weights
=================================  ==========================================================

Several sources together form one ensemble (or committee). Members are numbered ``m0, m1, ...``
in source order; a single members folder keeps its own ids. Nothing is ever downloaded, and no
checkpoint is ever unpickled: weights are safetensors files.

Every member that is not a trained concilium member is a
:class:`~concilium.models.wrapper.SourceModel` (its preprocessing inside, class logits in the
data's class order) with a :class:`SourceCard`. The kinds are the registry
:data:`SOURCE_KINDS`; adding one is a :class:`SourceKind` registered under its prefix.
In Python, :func:`as_member` makes any ``nn.Module`` a member without a source string.

Example:
    >>> parse_source("timm:resnet18@/w/r18.safetensors").kind
    'timm'
    >>> parse_source("hf:/models/vit").target
    '/models/vit'
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from concilium._registry import Registry
from concilium.models.members import MemberCard, load_member, member_dirs, read_card
from concilium.models.weights import load_state_dict_file, load_weights_into
from concilium.models.wrapper import Preprocessing, SourceModel, class_order
from concilium.vocabulary import member_id

Member = tuple[nn.Module, Any]
"""A member: the model (eval mode) and its card (:class:`MemberCard` or :class:`SourceCard`)."""


class SourceCard(BaseModel):
    """What a member loaded from a source is (the counterpart of a trained member's
    :class:`~concilium.models.members.MemberCard`).

    Attributes:
        member_id: ``m0``, ``m1``, ...
        source: the source string it was loaded from (paths absolute).
        arch: the library and class or name (``hf:ViTForImageClassification``,
            ``timm:resnet50``, ...).
        num_classes: number of class logits.
        class_names: the class names in logit order (the data's order once matched).
        model_class_names: the names the model itself gives its outputs (``None``: none).
        in_channels: image channels.
        num_attributes: always 0 (no attribute head).
        attribute_names: always empty.
        input_size: ``(H, W)`` images are resized to inside the model (``None``: any size).
        mean: normalisation mean applied inside the model (``None``: none).
        std: normalisation standard deviation (``None``: none).
        preprocessing: where the preprocessing came from, in words.
        gradcam_layer: the default layer of layer methods (``None``: the model documents none).
        val_accuracy: always ``None`` (not measured by concilium).
    """

    model_config = ConfigDict(extra="forbid")

    member_id: str
    source: str
    arch: str
    num_classes: int = Field(ge=1)
    class_names: list[str]
    model_class_names: list[str] | None = None
    in_channels: int = Field(default=3, ge=1)
    num_attributes: int = 0
    attribute_names: list[str] = Field(default_factory=list)
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    preprocessing: str = ""
    gradcam_layer: str | None = None
    val_accuracy: float | None = None


@dataclass(frozen=True)
class Source:
    """A parsed source string.

    Attributes:
        kind: a name of :data:`SOURCE_KINDS`.
        target: the folder, model name or import path.
        weights: the local weights file (``None``: none given).
    """

    kind: str
    target: str
    weights: str | None = None

    @property
    def text(self) -> str:
        """The canonical source string (a members folder is its bare path)."""
        if self.kind == "folder":
            return self.target
        return f"{self.kind}:{self.target}" + (f"@{self.weights}" if self.weights else "")


@dataclass(frozen=True)
class Loaded:
    """One member a source kind built, before it is numbered.

    Attributes:
        model: the classifier (a :class:`SourceModel` or a trained concilium member).
        card: its card (``member_id`` is replaced when the members are numbered).
    """

    model: nn.Module
    card: Any


@dataclass(frozen=True)
class SourceKind:
    """One kind of member source.

    Attributes:
        syntax: how its source string reads (shown in errors and help).
        description: what such a source is, in one sentence.
        example: a valid source string of this kind (registry tests parse it).
        parse: ``rest`` (the string after ``kind:``) to a :class:`Source`, paths absolute.
        count: how many members the source holds, without loading them.
        load: the members, loaded on the CPU in eval mode; ``class_names`` are the data's
            classes (``None``: not known), which a model's own class names are matched to.
        describe: cheap card fields of each member (no model built), for reports.
    """

    syntax: str
    description: str
    example: str
    parse: Callable[[str], Source]
    count: Callable[[Source], int]
    load: Callable[[Source, Sequence[str] | None], list[Loaded]]
    describe: Callable[[Source], list[dict[str, Any]]]


_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
"""What a source kind's prefix looks like (``tim:`` is a typo, not a folder)."""

SOURCE_KINDS: Registry[SourceKind] = Registry("member source kind")
"""The kinds of member source, by prefix (``hf``, ``timm``, ``torchvision``, ``python``,
``folder``)."""


def source_syntax() -> str:
    """Every kind's syntax, one per kind, for errors and help."""
    return ", ".join(SOURCE_KINDS.get(k).syntax for k in SOURCE_KINDS.names())


def parse_source(text: str | Path) -> Source:
    """Parse one source string (see the module docstring).

    A string without a known ``kind:`` prefix is a members folder.

    Raises:
        ValueError: an empty string, or a malformed string of a known kind (naming the syntax).
    """
    if isinstance(text, Path):
        return SOURCE_KINDS.get("folder").parse(str(text))
    if not isinstance(text, str):
        raise TypeError(f"a member source is a string; got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError(f"a member source is empty; valid: {source_syntax()}")
    prefix, colon, rest = text.partition(":")
    if colon and prefix in SOURCE_KINDS:
        return SOURCE_KINDS.get(prefix).parse(rest)
    if colon and _KIND.match(prefix) and not Path(text).expanduser().exists():
        raise ValueError(f"unknown member source kind {prefix!r} in {text!r}; a source is a "
                         f"members folder or one of: {source_syntax()}")
    return SOURCE_KINDS.get("folder").parse(text)


def split_weights(rest: str, *, kind: str, required: bool) -> tuple[str, str | None]:
    """``NAME@WEIGHTS`` to ``(NAME, absolute WEIGHTS)``.

    Raises:
        ValueError: no name, or no weights where ``required``.
    """
    name, at, weights = rest.partition("@")
    name, weights = name.strip(), weights.strip()
    syntax = SOURCE_KINDS.get(kind).syntax
    if not name:
        raise ValueError(f"source '{kind}:{rest}' names no model; write {syntax}")
    if at and not weights:
        raise ValueError(f"source '{kind}:{rest}' has '@' but no weights file; write {syntax}")
    if required and not weights:
        raise ValueError(
            f"source '{kind}:{rest}' needs a local weights file (nothing is downloaded): write "
            f"{syntax}, e.g. {kind}:{name}@/path/to/model.safetensors"
        )
    return name, str(Path(weights).expanduser().resolve()) if weights else None


def read_safetensors(path: str, *, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors file; pickled checkpoints are refused.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ``.safetensors`` file (a pickle: how to convert), or not readable.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} of {what} not found; give the path of a "
                                "local .safetensors file")
    if p.suffix.lower() != ".safetensors":
        raise ValueError(
            f"weights file {p} of {what} is not a .safetensors file; concilium never unpickles "
            "checkpoints (.pt/.pth/.bin/.ckpt can run code when loaded). If you trust its "
            "origin, convert it once: safetensors.torch.save_file(torch.load(path, "
            "weights_only=True), 'model.safetensors')"
        )
    return load_state_dict_file(p)


# ----------------------------------------------------------------------------- ids and loading


def _count(source: Source) -> int:
    return SOURCE_KINDS.get(source.kind).count(source)


def member_ids_of(sources: Sequence[Source]) -> list[list[str]]:
    """The member ids of each source: ``m0, m1, ...`` in source order, or, for a single members
    folder, its own ids."""
    if len(sources) == 1 and sources[0].kind == "folder":
        return [[d.name for d in _folder_dirs(sources[0])]]
    out, k = [], 0
    for s in sources:
        n = _count(s)
        out.append([member_id(i) for i in range(k, k + n)])
        k += n
    return out


def parse_sources(specs: str | Path | Sequence[str | Path]) -> list[Source]:
    """Parse one source or several (a sequence, or one string of comma-separated sources).

    Raises:
        ValueError: no source, a malformed one, or the same source twice.
    """
    if isinstance(specs, str | Path):
        specs = [s for s in str(specs).split(",") if s.strip()] if isinstance(specs, str) \
            else [specs]
    sources = [parse_source(s) for s in specs]
    if not sources:
        raise ValueError(f"no member source given; valid: {source_syntax()}")
    texts = [s.text for s in sources]
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise ValueError(f"member sources {repeated} are given more than once")
    return sources


def load_sources(specs: str | Path | Sequence[str | Path], *,
                 class_names: Sequence[str] | None = None,
                 device: str | torch.device = "cpu") -> list[Member]:
    """Every member of ``specs`` as ``(model, card)``, in eval mode on ``device``.

    Args:
        specs: source strings (see the module docstring), or one comma-separated string.
        class_names: the data's classes; a model that names its classes (``id2label``) has
            its logits put in this order, and any mismatch is an error. ``None``: not checked.
        device: where to put the models.

    Raises:
        FileNotFoundError: a folder, config or weights file that does not exist.
        ValueError: a bad source string, a pickled checkpoint, a config that is not an image
            classifier, weights that do not fit, or classes that do not match the data.
    """
    sources = parse_sources(specs)
    members: list[Member] = []
    for source, ids in zip(sources, member_ids_of(sources), strict=True):
        loaded = SOURCE_KINDS.get(source.kind).load(source, class_names)
        if len(loaded) != len(ids):
            raise ValueError(f"source {source.text} changed while loading ({len(ids)} members "
                             f"listed, {len(loaded)} loaded)")
        for item, mid in zip(loaded, ids, strict=True):
            card = item.card.model_copy(update={"member_id": mid})
            members.append((item.model.to(device).eval(), card))
    return members


def describe_sources(specs: Sequence[str]) -> list[dict[str, Any]]:
    """Card fields of every member of ``specs`` without building any model (for reports);
    a source that cannot be read gives one row saying why."""
    sources = parse_sources(list(specs))
    rows: list[dict[str, Any]] = []
    try:
        all_ids = member_ids_of(sources)
    except (OSError, ValueError) as err:
        return [{"source": ", ".join(s.text for s in sources), "error": str(err)}]
    for source, ids in zip(sources, all_ids, strict=True):
        try:
            described = SOURCE_KINDS.get(source.kind).describe(source)
        except (OSError, ValueError) as err:
            described = [{"error": str(err)}] * len(ids)
        for row, mid in zip(described, ids, strict=True):
            rows.append({**row, "member_id": mid, "source": source.text})
    return rows


def as_member(model: nn.Module, *, class_names: Sequence[str],
              model_class_names: Sequence[str] | None = None,
              preprocessing: Preprocessing | None = None, gradcam_layer: str | None = None,
              member: str = "m0", source: str = "python") -> Member:
    """Any classifier ``nn.Module`` as a member ``(SourceModel, SourceCard)``.

    Args:
        model: returns logits, a ``ModelOutput``, a tuple or a dict with ``"logits"``.
        class_names: the data's classes, in label order.
        model_class_names: the model's own class names in output order (``None``: the outputs
            are the data's classes in order).
        preprocessing: resize and normalisation to run inside the model (default: none).
        gradcam_layer: dotted name of the default layer of layer methods within ``model``.
        member: the member id.
        source: what to record as its source.

    Raises:
        ValueError: classes that do not match, or a layer that is not a module of ``model``.
    """
    num_classes = len(model_class_names) if model_class_names is not None else len(class_names)
    order = class_order(model_class_names, class_names, num_classes=num_classes,
                        what=f"model {source}")
    wrapped = SourceModel(model, preprocessing, order=None if order == sorted(order) else order,
                          gradcam_layer=f"net.{gradcam_layer}" if gradcam_layer else None)
    return wrapped.eval(), source_card(wrapped, source=source, arch=type(model).__name__,
                                       class_names=class_names,
                                       model_class_names=model_class_names, member=member)


def source_card(model: SourceModel, *, source: str, arch: str, class_names: Sequence[str],
                model_class_names: Sequence[str] | None, member: str = "m0",
                in_channels: int = 3) -> SourceCard:
    """The card of a wrapped model."""
    p = model.preprocessing
    return SourceCard(
        member_id=member, source=source, arch=arch, num_classes=len(class_names),
        class_names=list(class_names),
        model_class_names=list(model_class_names) if model_class_names is not None else None,
        in_channels=in_channels, input_size=p.input_size,
        mean=list(p.mean) if p.mean is not None else None,
        std=list(p.std) if p.std is not None else None,
        preprocessing=p.describe(), gradcam_layer=model.gradcam_layer,
    )


def wrap_classifier(net: nn.Module, source: Source, *, arch: str, num_classes: int,
                    model_class_names: Sequence[str] | None,
                    class_names: Sequence[str] | None, preprocessing: Preprocessing,
                    gradcam_layer: str | None) -> Loaded:
    """A library classifier as a :class:`Loaded` member: classes matched to the data's."""
    what = f"model {source.text}"
    if class_names is None:
        names = list(model_class_names) if model_class_names is not None else \
            [str(i) for i in range(num_classes)]
        order = None
    else:
        order = class_order(model_class_names, class_names, num_classes=num_classes, what=what)
        names = list(class_names)
    wrapped = SourceModel(net, preprocessing,
                          order=None if order is None or order == sorted(order) else order,
                          gradcam_layer=f"net.{gradcam_layer}" if gradcam_layer else None)
    card = source_card(wrapped, source=source.text, arch=arch, class_names=names,
                       model_class_names=model_class_names)
    return Loaded(wrapped.eval(), card)


def default_layer(net: nn.Module) -> str | None:
    """The last ``Conv2d`` of a convolutional network (its last stage); ``None`` for a network
    with attention blocks (a ViT's only convolution is its patch embedding) or without
    convolutions."""
    last = None
    for name, sub in net.named_modules():
        if isinstance(sub, nn.MultiheadAttention) or "Attention" in type(sub).__name__:
            return None
        if isinstance(sub, nn.Conv2d):
            last = name
    return last


# ----------------------------------------------------------------------------- folder


def _parse_folder(rest: str) -> Source:
    if not rest.strip():
        raise ValueError(f"a members folder source names no folder; valid: {source_syntax()}")
    return Source("folder", str(Path(rest.strip()).expanduser().resolve()))


def _folder_dirs(source: Source) -> list[Path]:
    path = Path(source.target)
    if not path.is_dir():
        raise FileNotFoundError(
            f"models folder {path} not found; a member source is a members folder "
            f"(train one with `concilium train`) or one of: {source_syntax()}"
        )
    dirs = member_dirs(path)
    if not dirs:
        raise ValueError(f"{path} holds no member folders (m0/, m1/, ... with card.json); "
                         "train an ensemble with `concilium train DATA --out MODELS`")
    return dirs


def _load_folder(source: Source, class_names: Sequence[str] | None) -> list[Loaded]:
    return [Loaded(*load_member(d, device="cpu")) for d in _folder_dirs(source)]


def _describe_folder(source: Source) -> list[dict[str, Any]]:
    return [read_card(d).model_dump(mode="json") for d in _folder_dirs(source)]


SOURCE_KINDS.add("folder", SourceKind(
    syntax="MODELS (a members folder, or folder:MODELS)",
    description="the trained members of a members folder (m0, m1, ... with card.json)",
    example="folder:/models/birds",
    parse=_parse_folder,
    count=lambda s: len(_folder_dirs(s)), load=_load_folder, describe=_describe_folder))


# ----------------------------------------------------------------------------- python


def _parse_python(rest: str) -> Source:
    target, weights = split_weights(rest, kind="python", required=False)
    module, colon, factory = target.rpartition(":")
    if not colon or not module or not factory:
        raise ValueError(f"source 'python:{rest}' must read python:MODULE:FACTORY[@WEIGHTS], "
                         "e.g. python:mypackage.nets:build@/path/model.safetensors")
    return Source("python", target, weights)


def _python_net(source: Source) -> nn.Module:
    module_name, _, factory_name = source.target.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"source python:{source.target}: cannot import {module_name!r} ({err}); "
                         "make it importable (PYTHONPATH or pip install)") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"source python:{source.target}: {module_name} has no callable "
                         f"{factory_name!r}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise TypeError(f"source python:{source.target}: {factory_name}() returned a "
                        f"{type(net).__name__}, not an nn.Module")
    if source.weights is not None:
        inner = net.net if isinstance(net, SourceModel) else net
        load_weights_into(inner, read_safetensors(source.weights, what=source.text),
                          source=source.weights)
    return net


def _load_python(source: Source, class_names: Sequence[str] | None) -> list[Loaded]:
    net = _python_net(source).eval()
    if isinstance(net, SourceModel):  # preprocessing given by the factory
        inner, pre, layer = net.net, net.preprocessing, net.gradcam_layer
        layer = layer.removeprefix("net.") if layer else None
    else:
        inner, pre, layer = net, Preprocessing(), default_layer(net)
    names = getattr(inner, "class_names", None)
    num_classes = getattr(inner, "num_classes", None)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        with torch.no_grad():  # one forward pass tells the number of outputs
            probe = torch.zeros(1, 3, *(pre.input_size or (224, 224)))
            num_classes = int(SourceModel(inner, pre)(probe).shape[1])
    return [wrap_classifier(inner, source, arch=f"python:{type(inner).__name__}",
                            num_classes=num_classes,
                            model_class_names=list(names) if names is not None else None,
                            class_names=class_names, preprocessing=pre, gradcam_layer=layer)]


SOURCE_KINDS.add("python", SourceKind(
    syntax="python:MODULE:FACTORY[@WEIGHTS.safetensors]",
    description="any nn.Module made by an importable factory, with optional safetensors weights",
    example="python:mypackage.nets:build@/w/net.safetensors", parse=_parse_python,
    count=lambda s: 1, load=_load_python,
    describe=lambda s: [{"arch": f"python:{s.target}"}]))


__all__ = ["SOURCE_KINDS", "Loaded", "Member", "MemberCard", "Source", "SourceCard",
           "SourceKind", "as_member", "default_layer", "describe_sources", "load_sources",
           "parse_source", "parse_sources", "read_safetensors", "source_card", "split_weights",
           "wrap_classifier"]
