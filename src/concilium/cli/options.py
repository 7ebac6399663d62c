"""Option parsing shared by the commands: comma-separated lists and the ``--device`` check."""

from __future__ import annotations


def split_names(text: str | None, *, option: str, example: str) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` (the option left out) -> ``None``.

    Args:
        text: the option's value.
        option: the option's flag, for the message (``"--archs"``).
        example: a valid value, for the message (``"small-cnn,resnet18"``).

    Raises:
        ValueError: when the value names nothing (``","``, ``""``).
    """
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{option} is empty; give comma-separated names, e.g. {example}")
    return names


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:<k>``, available here.

    Raises:
        ValueError: on another name or CUDA not available.
    """
    import torch

    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"--device must be cpu, cuda or cuda:<index>; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but CUDA is not available here; use --device cpu")
    return device
