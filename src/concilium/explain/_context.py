"""Context managers that leave a model exactly as they found it: eval mode, no in-place
activations while attributing, and no hook surviving the block (Captum's own hooks included),
even when the block raises."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

#: The per-module hook dictionaries that Captum (and we) may add to.
HOOK_DICTS: tuple[str, ...] = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of registered hooks per submodule name (only modules that have any).

    Example:
        >>> hook_counts(nn.Linear(2, 2))
        {}
    """
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        n = sum(len(getattr(module, d, {})) for d in HOOK_DICTS[:4])
        if n:
            counts[name] = n
    return counts


@contextmanager
def no_new_hooks(model: nn.Module) -> Iterator[None]:
    """Remove, on exit, every hook added to any submodule of ``model`` inside the block.

    Hooks that existed before the block are kept untouched. This also cleans up after Captum
    methods that raise half-way, before their own clean-up ran.
    """
    modules = list(model.modules())
    before = [
        {d: set(getattr(m, d, {}).keys()) for d in HOOK_DICTS if hasattr(m, d)} for m in modules
    ]
    try:
        yield
    finally:
        for module, snapshot in zip(modules, before, strict=True):
            for d, keys in snapshot.items():
                hooks = getattr(module, d)
                for key in [k for k in hooks if k not in keys]:
                    del hooks[key]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def no_inplace_activations(model: nn.Module) -> Iterator[None]:
    """Turn ``inplace=True`` activations off inside the block (backward hooks of DeepLift and
    guided backpropagation cannot see in-place results) and restore them afterwards."""
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


#: Captum warnings about things concilium does on purpose (it sets requires_grad, hooks ReLUs
#: and removes the hooks itself, attributes one example at a time).
_EXPECTED_WARNINGS: tuple[str, ...] = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting backward hooks on ReLU activations",
    r"Setting forward, backward hooks and attributes on non-linear",
    r"You are providing multiple inputs for Lime",
)


@contextmanager
def attribution_context(model: nn.Module, *, inplace_off: bool = True) -> Iterator[None]:
    """Eval mode, no hooks left behind and (``inplace_off``, for methods that hook the
    activations' backward) no in-place activations: the state every attribution runs in.
    Captum's warnings about what concilium does on purpose are silenced; every other warning
    passes through. In-place activations stay on for the other methods: switching them off
    costs a fresh output buffer per activation (~10-20% on a ResNet-50 on the CPU)."""
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        with eval_mode(model), no_new_hooks(model):
            if inplace_off:
                with no_inplace_activations(model):
                    yield
            else:
                yield
