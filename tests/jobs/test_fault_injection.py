"""A handful of the kills of ``benchmarks/fault_injection.py`` (which runs 50): SIGKILL
``concilium explain``, ``ensemble`` and ``evaluate`` at seeded random points, resume, and the
results equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fault_injection.py"


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fault_injection", None)


@pytest.mark.slow
def test_killed_and_resumed_runs_equal_an_uninterrupted_run(faults, tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "METHODS", "saliency,gradcam")
    monkeypatch.setattr(faults, "METRICS", "localisation,deletion")
    trials, _ = faults.run_trials(3, seed=1, n=12, work=tmp_path, echo=lambda line: None)
    assert [t.command for t in trials] == ["explain", "ensemble", "evaluate"]
    assert all(t.equal for t in trials), [t.detail for t in trials]


def test_the_comparison_sees_a_changed_map(faults, tmp_path, monkeypatch):
    """The check can fail: one changed value in a stored map is reported."""
    import torch

    from concilium.store import ExplanationStore

    for name in ("a", "b"):
        store = ExplanationStore(tmp_path / name)
        entry = store.entry("m0", "saliency", {}, ["x", "y"], shape=(2, 2), chunk_size=1)
        maps = torch.zeros(2, 2, 2)
        if name == "b":
            maps[1, 0, 0] = 1e-6
        entry.write(0, maps)
    assert faults.same(tmp_path / "a", tmp_path / "a") is None
    assert "maps of m0/saliency" in faults.same(tmp_path / "a", tmp_path / "b")
