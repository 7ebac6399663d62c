"""Every :class:`~concilium._registry.Registry` of concilium, found by importing every module
(nothing listed by hand: a new registry is found the day it is written)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any

import concilium
from concilium._registry import Registry


@dataclass(frozen=True)
class FoundRegistry:
    """A registry and where it is defined."""

    name: str
    module: str
    registry: Registry[Any]

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


def _defines(module: Any, name: str) -> bool:
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return f"{name}: Registry" in source or f"{name} = Registry(" in source


def all_registries() -> list[FoundRegistry]:
    """Every registry instance, once, with the module that defines it, sorted by name."""
    found: dict[int, FoundRegistry] = {}
    modules = [concilium] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(concilium.__path__, f"{concilium.__name__}.")
    ]
    for module in modules:
        for name, value in vars(module).items():
            if not isinstance(value, Registry):
                continue
            if id(value) not in found or _defines(module, name):
                found[id(value)] = FoundRegistry(name, module.__name__, value)
    return sorted(found.values(), key=lambda r: r.name)
