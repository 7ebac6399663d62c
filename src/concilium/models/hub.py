"""The ``hf:DIR`` member source: a transformers image classifier saved with ``save_pretrained``.

``DIR`` holds ``config.json`` and the weights as safetensors (``model.safetensors``, or shards
with ``model.safetensors.index.json``); ``preprocessor_config.json`` (the image processor's
``save_pretrained``) when present gives the input size and normalisation. The model is loaded
with local files only, never runs remote code and is never unpickled: a folder with only
``pytorch_model.bin`` is refused with the conversion to make.

Preprocessing (inside the wrapper, see :class:`~concilium.models.wrapper.SourceModel`):

- normalisation: ``image_mean``/``image_std`` of ``preprocessor_config.json`` when
  ``do_normalize`` (default true); none without that file;
- input size: ``crop_size`` when the processor centre-crops, else ``size``
  (``height``/``width``, or ``shortest_edge`` as a square), else ``config.image_size``. Images
  are resized to it without cropping, so every pixel the user sees is explained.

Class names: ``config.id2label``, unless it holds transformers' placeholders ``LABEL_0, ...``;
matched by name to the data's classes.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from concilium.models.sources import (
    SOURCE_KINDS,
    Loaded,
    Source,
    SourceKind,
    default_layer,
    wrap_classifier,
)
from concilium.models.wrapper import Preprocessing

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth",
           "model.ckpt")
_PLACEHOLDER = re.compile(r"^LABEL_(\d+)$")


def _parse(rest: str) -> Source:
    rest = rest.strip()
    if not rest or "@" in rest:
        raise ValueError(f"source 'hf:{rest}' must read hf:DIR, a folder written by "
                         "save_pretrained (its weights are inside)")
    return Source("hf", str(Path(rest).expanduser().resolve()))


def _folder(source: Source) -> Path:
    path = Path(source.target)
    if not path.is_dir():
        raise FileNotFoundError(f"source hf:{path}: folder not found; hf:DIR takes a folder "
                                "written by model.save_pretrained(DIR)")
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"source hf:{path}: no {CONFIG_FILE}; hf:DIR takes a folder "
                                "written by model.save_pretrained(DIR)")
    return path


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"source hf:{path}: {CONFIG_FILE} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"source hf:{path}: {CONFIG_FILE} is not a JSON object")
    return config


def _check_classifier(path: Path, config: dict[str, Any]) -> None:
    """The config describes an image classifier transformers knows (no remote code)."""
    names = importlib.import_module("transformers.models.auto.modeling_auto")
    mapping = names.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    model_type = config.get("model_type")
    architectures = list(config.get("architectures") or [])
    if model_type not in mapping:
        raise ValueError(
            f"source hf:{path}: {CONFIG_FILE} describes a {model_type!r} model "
            f"({', '.join(architectures) or 'no architectures'}), not an image classifier; "
            f"hf:DIR takes an AutoModelForImageClassification model (model types: "
            f"{', '.join(sorted(mapping)[:12])}, ...)"
        )
    if architectures and not any("ImageClassification" in a for a in architectures):
        raise ValueError(
            f"source hf:{path}: the saved model is {', '.join(architectures)}, which has no "
            f"classification head; save the {mapping[model_type]} (with its trained head)"
        )


def _check_weights(path: Path) -> None:
    if any((path / f).is_file() for f in SAFE_WEIGHTS):
        return
    pickled = [f for f in PICKLED if (path / f).is_file()]
    if pickled:
        raise ValueError(
            f"source hf:{path}: the weights are a pickled checkpoint ({pickled[0]}), which "
            "concilium never loads (unpickling can run code). If you trust its origin, resave "
            "it as safetensors: model = AutoModelForImageClassification.from_pretrained(DIR); "
            "model.save_pretrained(DIR, safe_serialization=True)"
        )
    raise FileNotFoundError(f"source hf:{path}: no weights ({' or '.join(SAFE_WEIGHTS)}); "
                            "save the model with model.save_pretrained(DIR)")


def class_names_of(config: dict[str, Any]) -> list[str] | None:
    """The model's class names (``id2label`` in output order), or ``None`` for transformers'
    placeholders (``LABEL_0``, ...) or none."""
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    names = [by_index[i] for i in range(len(by_index))]
    if all(_PLACEHOLDER.match(n) and int(_PLACEHOLDER.match(n).group(1)) == i  # type: ignore[union-attr]
           for i, n in enumerate(names)):
        return None
    return names


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return (int(value["shortest_edge"]),) * 2
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def preprocessing_of(path: Path, config: dict[str, Any]) -> Preprocessing:
    """The model's preprocessing from ``preprocessor_config.json`` (or ``config.json``)."""
    processor_file = path / PROCESSOR_FILE
    if not processor_file.is_file():
        return Preprocessing(input_size=_size(config.get("image_size")),
                             origin=f"{CONFIG_FILE}; no {PROCESSOR_FILE}, so no normalisation")
    try:
        proc = json.loads(processor_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"source hf:{path}: {PROCESSOR_FILE} is not valid JSON ({err})") from None
    mean = std = None
    if proc.get("do_normalize", True) and proc.get("image_mean") is not None:
        mean = tuple(float(v) for v in proc["image_mean"])
        std = tuple(float(v) for v in proc["image_std"])
    size = None
    if proc.get("do_center_crop") and proc.get("crop_size") is not None:
        size = _size(proc["crop_size"])
    if size is None and proc.get("do_resize", True):
        size = _size(proc.get("size"))
    if size is None:
        size = _size(config.get("image_size"))
    return Preprocessing(mean=mean, std=std, input_size=size, origin=PROCESSOR_FILE)


def _load(source: Source, class_names: Sequence[str] | None) -> list[Loaded]:
    path = _folder(source)
    config = _config(path)
    _check_classifier(path, config)
    _check_weights(path)
    auto = importlib.import_module("transformers").AutoModelForImageClassification
    bars = importlib.import_module("transformers.utils.logging")
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # its tqdm bar would tear concilium's progress display
    try:
        net, info = auto.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                         trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"source hf:{path}: transformers could not load it: {err}") from None
    finally:
        if shown:
            bars.enable_progress_bar()
    bad = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise ValueError(f"source hf:{path}: the weights do not fit the config ({bad or info}); "
                         "save model and config together with model.save_pretrained(DIR)")
    return [wrap_classifier(
        net, source, arch=f"hf:{type(net).__name__}", num_classes=int(net.config.num_labels),
        model_class_names=class_names_of(config), class_names=class_names,
        preprocessing=preprocessing_of(path, config), gradcam_layer=default_layer(net))]


def _describe(source: Source) -> list[dict[str, Any]]:
    config = _config(_folder(source))
    arch = (config.get("architectures") or [config.get("model_type")])[0]
    return [{"arch": f"hf:{arch}", "class_names": class_names_of(config)}]


SOURCE_KINDS.add("hf", SourceKind(syntax="hf:DIR", example="hf:/models/vit-b16",
                                  description="a transformers image classifier saved with "
                                              "save_pretrained (safetensors)",
                                  parse=_parse, count=lambda s: 1,
                                  load=_load, describe=_describe))
