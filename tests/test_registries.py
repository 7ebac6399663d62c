"""Generic checks over every registry of concilium and every entry of each (found by importing
every module, see ``registry_helpers``): a new registry or entry is checked without editing this
file. The behaviour of each kind's entries is tested beside the kind, parametrised over the
registry; the last test here makes sure such a test exists."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from registry_helpers import all_registries

REGISTRIES = all_registries()
ENTRIES = [(reg, name) for reg in REGISTRIES for name in reg.registry.names()]
TESTS = Path(__file__).parent

def test_the_known_registries_are_found():
    # a regression check (removing a registry is one), not a frozen set: more may come
    known = {"METHODS", "METRICS", "BASELINES", "ARCHITECTURES", "DIVERSITIES", "DATASETS",
             "NORMALISATIONS", "REDUCERS", "SIMILARITIES", "ENSEMBLERS", "LEARNED_BASELINES"}
    assert known <= {r.name for r in REGISTRIES}


@pytest.mark.parametrize("reg", REGISTRIES, ids=str)
def test_registry_is_filled_with_well_formed_unique_names(reg):
    names = reg.registry.names()
    assert len(names) >= 1, f"{reg} has no entry"
    for name in names:
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", name), (
            f"{reg} entry {name!r}: lower-case letters, digits, '_' or '-' only")
    assert len({n.replace("-", "_") for n in names}) == len(names), f"{reg}: names differ by - / _"
    entries = [reg.registry.get(n) for n in names]
    assert len({id(e) for e in entries}) == len(entries), f"{reg}: one object under two names"


@pytest.mark.parametrize("reg", REGISTRIES, ids=str)
def test_an_unknown_name_raises_listing_the_valid_ones(reg):
    with pytest.raises(ValueError, match="valid names") as err:
        reg.registry.get("no-such-entry")
    assert all(n in str(err.value) for n in reg.registry.names())
    with pytest.raises(ValueError, match="already registered"):
        name = reg.registry.names()[0]
        reg.registry.add(name, reg.registry.get(name))


def _documented_object(entry):
    """The function or class that does an entry's work (a spec's ``fn`` or ``run``, or the entry
    itself)."""
    if inspect.isclass(entry) or inspect.isfunction(entry):
        return entry
    for attr in ("fn", "run"):
        fn = getattr(entry, attr, None)
        if callable(fn):
            return fn
    return None


@pytest.mark.parametrize(("reg", "name"), ENTRIES, ids=lambda x: str(x))
def test_every_entry_is_callable_and_documented(reg, name):
    entry = reg.registry.get(name)
    if hasattr(entry, "name") and not inspect.isclass(entry) and not inspect.isfunction(entry):
        assert entry.name == name, f"{reg}: entry {name!r} calls itself {entry.name!r}"
    obj = _documented_object(entry)
    description = getattr(entry, "description", None)
    if obj is None:
        assert isinstance(description, str) and description.strip(), (
            f"{reg} entry {name!r} ({type(entry).__name__}) is neither a function nor a class, "
            "has no callable .fn or .run and no .description")
        return
    assert callable(obj)
    own_doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert (own_doc or description or "").strip(), (
        f"{reg} entry {name!r}: {obj.__qualname__} has no docstring of its own")


@pytest.mark.parametrize("reg", REGISTRIES, ids=str)
def test_every_registry_has_a_behaviour_test_parametrised_over_it(reg):
    here = {Path(__file__).name, "registry_helpers.py", "test_vocabulary_sync.py"}
    pattern = re.compile(rf"parametrize\([^)]*\b{reg.name}\b", re.S)
    users = [p for p in sorted(TESTS.rglob("*.py")) if p.name not in here
             and (pattern.search(text := p.read_text())
                  or _parametrised_over_alias(text, reg.name))]
    assert users, (f"no test in tests/ is parametrised over {reg}: add one beside the kind's "
                   "tests (shape, determinism, a slow reference, ...) over its .names()")


def _parametrised_over_alias(text: str, registry: str) -> bool:
    """``ALL = METHODS.names()`` ... ``@pytest.mark.parametrize("method", ALL)``."""
    for alias in re.findall(rf"^(\w+) = .*\b{registry}\b", text, re.M):
        if re.search(rf"parametrize\([^)]*\b{alias}\b", text, re.S):
            return True
    return False
