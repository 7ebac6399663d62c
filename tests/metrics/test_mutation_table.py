"""The mutation table of ``experiments/metric_mutations.py`` cannot rot silently: every registered
metric has a mutation, and every mutation's ``old`` text occurs exactly once in its module (so a
rewrite of a metric that removes the mutated line fails here, not only when the slow mutation
run is repeated)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from concilium.metrics import METRICS

_PATH = Path(__file__).resolve().parents[2] / "experiments" / "metric_mutations.py"


def _load():
    """The script as a module; under a mutation run it is already loaded as a pytest plugin."""
    if "metric_mutations" in sys.modules:
        return sys.modules["metric_mutations"]
    spec = importlib.util.spec_from_file_location("metric_mutations", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["metric_mutations"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mutations = _load()
LABELS = mutations.labels()


def test_every_registered_metric_has_a_mutation():
    assert mutations.unmutated(METRICS.names()) == []


def test_every_mutation_names_a_registered_metric():
    known = set(METRICS.names()) | mutations.PSEUDO_METRICS
    assert {m.metric for m in mutations.MUTATIONS} <= known


@pytest.mark.parametrize("label", list(LABELS))
def test_mutation_applies_once_and_compiles(label):
    m = LABELS[label]
    source = m.path.read_text(encoding="utf-8")
    assert source.count(m.old) == 1, f"{label}: old text occurs {source.count(m.old)} times"
    assert m.new != m.old
    ast.parse(source.replace(m.old, m.new))  # the mutant is valid Python
    for test in m.tests:
        assert (_PATH.parents[1] / test).exists(), test


def test_unmutated_lists_the_missing_names():
    assert mutations.unmutated(["auc", "not_a_metric"]) == ["not_a_metric"]
