"""The models package imports only from the layers below it, at module level, with no cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import concilium.models

PACKAGE = Path(concilium.models.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
BELOW = ("concilium._checks", "concilium._registry", "concilium._util", "concilium.vocabulary",
         "concilium.data")
"""What models may import from concilium besides itself (``concilium.__version__`` too)."""


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """``(module, at_top_level)`` for every ``concilium`` import of a module's syntax tree."""
    found = []
    top = {id(node) for node in getattr(tree, "body", [])}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [(n, id(node) in top) for n in names if n.split(".")[0] == "concilium"]
    return found


def _tree(module: str) -> ast.AST:
    return ast.parse((PACKAGE / f"{module}.py").read_text())


@pytest.mark.parametrize("module", MODULES)
def test_imports_are_at_module_level_and_go_down_the_layers(module: str) -> None:
    for name, at_top in _imports(_tree(module)):
        assert at_top, f"models.{module} imports {name} inside a function"
        assert name == "concilium" or name.startswith(("concilium.models", *BELOW)), (
            f"models.{module} imports {name}, a layer above models"
        )


def test_no_cycle_between_the_modules_and_weight_io_is_a_leaf() -> None:
    graph = {
        module: {
            name.removeprefix("concilium.models.").split(".")[0]
            for name, _ in _imports(_tree(module))
            if name.startswith("concilium.models.")
        }
        & set(MODULES)
        for module in MODULES
    }
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle in concilium.models: {err.args[1]}")
    assert set(order) == set(MODULES)
    assert graph["weights"] == set()  # weight files know nothing of architectures or members
    assert "ensembles" not in graph["fit"]  # one member is trained below the ensembles
