"""The layer rule of the package, read from the source with :mod:`ast` (nothing is imported).

Layers, lowest first; a module imports only from its own layer or the layers before it::

    _checks _options _registry _util vocabulary -> data -> models -> explain -> ganmex
      -> metrics | ensemble -> store -> jobs -> pipeline | report -> cli

* ``metrics`` and ``ensemble`` share a layer and never import each other; so do ``pipeline`` and
  ``report``, except that ``pipeline`` calls ``concilium.report.write_report`` as its last stage
  (and validates its ``[report]`` section with ``ReportOptions``).
* ``concilium/__init__.py`` is the root: it imports no sub-package, and anything may import it
  (for ``__version__``).
* No import cycle between modules (a module -> the module or package ``__init__`` it imports,
  plus the ``__init__`` of every package that import runs first).
* Outside ``cli/`` no function imports a concilium module: a lazy import hides a cycle until the
  function runs.

A new module or sub-package is checked without editing this file; a new top-level package must be
given a layer in :data:`LAYERS` (the test says so).
"""

from __future__ import annotations

import ast
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import concilium

SRC = Path(concilium.__file__).parent
ROOT = "concilium"

#: Layer of every top-level module or package, lowest first.
LAYERS: dict[str, int] = {
    "_checks": 0, "_options": 0, "_progress": 0, "_registry": 0, "_util": 0, "vocabulary": 0,
    "data": 1,
    "models": 2,
    "explain": 3,
    "ganmex": 4,
    "metrics": 5, "ensemble": 5,
    "store": 6,
    "jobs": 7,
    "pipeline": 8, "report": 8,
    "cli": 9,
}

#: ``(importer package, imported package) -> names it may import`` across siblings of one layer.
SIBLING_EXCEPTIONS: dict[tuple[str, str], frozenset[str]] = {
    # the report is the pipeline's last stage; [report] holds its options
    ("pipeline", "report"): frozenset({"write_report", "ReportOptions"}),
}



def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


class _Import:
    """One ``import`` statement's concilium target, as written."""

    def __init__(self, target: str, names: tuple[str, ...], in_function: bool,
                 type_checking: bool, line: int) -> None:
        self.target, self.names, self.in_function = target, names, in_function
        self.type_checking, self.line = type_checking, line


def _package_of(module: str) -> str:
    """The package a module's relative imports start from."""
    is_pkg = MODULES[module].name == "__init__.py"
    return module if is_pkg else module.rpartition(".")[0]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports_of(module: str) -> tuple[_Import, ...]:
    """Every import of a concilium module in ``module``, with where it stands."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[_Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT:
                    found.append(_Import(alias.name, (), in_function, type_checking, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] == ROOT:
                names = tuple(a.name for a in node.names)
                found.append(_Import(target, names, in_function, type_checking, node.lineno))
        inner_function = in_function or isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        guarded = type_checking or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
        for child in ast.iter_child_nodes(node):
            visit(child, inner_function, guarded)

    visit(tree, False, False)
    return tuple(found)


def _targets(imp: _Import) -> list[str]:
    """The modules one import runs: the named submodules if they are modules, else the target."""
    subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in MODULES]
    out = subs if subs and len(subs) == len(imp.names) else [imp.target]
    if subs and len(subs) != len(imp.names):
        out += subs
    return out


def _package(module: str) -> str:
    """The top-level module or package of ``concilium.<package>....`` (``""`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_module_has_a_layer() -> None:
    packages = {_package(m) for m in MODULES} - {""}
    missing = sorted(packages - set(LAYERS))
    assert not missing, f"give {missing} a layer in LAYERS of tests/test_architecture.py"
    assert not sorted(set(LAYERS) - packages), "LAYERS names a package that is gone"


def _layer_violation(module: str, imp: _Import) -> str | None:
    src, dst = _package(module), _package(imp.target)
    if src == "" or dst == "" or src == dst:
        return None
    if LAYERS[dst] < LAYERS[src]:
        return None
    if LAYERS[dst] == LAYERS[src]:
        if LAYERS[src] == 0:
            return None  # the foundation modules may use each other (the cycle test guards them)
        allowed = SIBLING_EXCEPTIONS.get((src, dst))
        if allowed is not None and imp.target == f"{ROOT}.{dst}" and set(imp.names) <= allowed:
            return None
        return f"{module}:{imp.line} imports {imp.target} ({dst} and {src} never import each other)"
    return f"{module}:{imp.line} imports {imp.target}, a layer above {src}"


def test_imports_go_down_the_layers() -> None:
    bad = [
        why
        for module in MODULES
        for imp in imports_of(module)
        if (why := _layer_violation(module, imp)) is not None
    ]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_root_imports_no_sub_package() -> None:
    assert imports_of(ROOT) == ()


def test_no_function_level_import_of_concilium_outside_cli() -> None:
    bad = [
        f"{module}:{imp.line} imports {imp.target} inside a function"
        for module in MODULES
        if _package(module) != "cli"
        for imp in imports_of(module)
        if imp.in_function
    ]
    assert not bad, "import at module level instead (a lazy import hides a cycle):\n" + "\n".join(
        bad)



def import_graph() -> dict[str, set[str]]:
    """``module -> modules it runs on import`` (module-level imports only; ``TYPE_CHECKING``
    imports do not run). Importing ``a.b.c`` also runs ``a`` and ``a.b`` unless the importer is
    inside them already."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for imp in imports_of(module):
            if imp.in_function or imp.type_checking:
                continue
            for target in _targets(imp):
                if target not in MODULES:
                    continue  # an attribute of the root, e.g. concilium.__version__
                parts = target.split(".")
                for k in range(2, len(parts) + 1):
                    runs = ".".join(parts[:k])
                    if runs in MODULES and runs != module and not module.startswith(runs + "."):
                        graph[module].add(runs)
    return graph


def test_no_import_cycle() -> None:
    try:
        list(TopologicalSorter(import_graph()).static_order())
    except CycleError as err:
        pytest.fail("import cycle: " + " -> ".join(err.args[1]))


def test_weight_files_know_nothing_of_architectures_or_members() -> None:
    graph = import_graph()
    assert not {m for m in graph["concilium.models.weights"] if m.startswith("concilium.models")}
    assert "concilium.models.ensembles" not in graph["concilium.models.fit"]
