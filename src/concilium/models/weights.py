"""Weight files: read a state dict from ``.safetensors`` or ``.pt`` without ever unpickling
arbitrary objects, and load it strictly into a module with a readable error on any mismatch.

Example:
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> load_weights_into(net, net.state_dict(), source="itself")
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from concilium._checks import all_finite

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""File suffixes :func:`load_state_dict_file` reads."""


def _unpickler_reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else type(err).__name__)
    return lines[0] if lines else type(err).__name__


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict without ever unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin`` files with
    ``torch.load(weights_only=True)``, which refuses any pickle that would build objects other
    than tensors and plain containers (such as one that would run code).

    Args:
        path: the weights file.

    Returns:
        The state dict (CPU tensors).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix, a refused pickle (convert the file to safetensors), or
            a file that is not a flat ``name -> tensor`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"unsupported weights file {path.name!r}; use .safetensors (or a .pt/.pth state dict)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise ValueError(
            f"refusing to unpickle {path}: it holds objects other than tensors "
            f"({_unpickler_reason(err)}). "
            "Loading it could run arbitrary code. If you trust its origin, convert it to "
            "safetensors (safetensors.torch.save_file(state_dict, 'model.safetensors'))"
        ) from None
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is not a state dict (a mapping of parameter names to tensors); "
            "save model.state_dict(), not the model"
        )
    return dict(state)


def load_weights_into(module: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state`` strictly into ``module``, with a readable error on any mismatch.

    Args:
        module: the network to fill.
        state: a ``name -> tensor`` state dict (e.g. from :func:`load_state_dict_file`).
        source: where ``state`` came from, named in the error message.

    Raises:
        ValueError: missing or unexpected names, shapes that differ, integer values for
            floating-point ones, or parameters with NaN or infinite values; the message lists up
            to five of each. Float64 values are cast to the model's dtype.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    kind = sorted(k for k in set(own) & set(state)
                  if own[k].is_floating_point() and not state[k].is_floating_point())
    if kind:
        raise ValueError(
            f"weights in {source} hold {', '.join(f'{k}: {state[k].dtype}' for k in kind[:5])} "
            "where the model has floating-point values; the file is not this model's weights"
        )
    parameters = {name for name, _ in module.named_parameters()}
    bad = sorted(k for k in parameters & set(state)
                 if state[k].is_floating_point() and not all_finite(state[k]))
    if bad:
        raise ValueError(
            f"weights in {source}: {', '.join(bad[:5])} {'is' if len(bad) == 1 else 'are'} not "
            "finite (NaN or infinite values): the training diverged or the file is damaged"
        )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]
                )
            )
        raise ValueError(
            f"weights in {source} do not fit {type(module).__name__}: {'; '.join(parts)}. "
            "Check the architecture, number of classes and attributes"
        )
    module.load_state_dict(state, strict=True)
