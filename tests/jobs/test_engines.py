"""The engine registry and the unit decomposition, without Ray: an engine that runs the units in
reverse order writes the same bytes as the default loop (the units are independent and seeded
per chunk), and asking for Ray without it installed names the extra."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import concilium.jobs.ray_engine
from concilium.data.dataset import ImageDataset
from concilium.jobs.engine import InProcessEngine
from concilium.jobs.engines import ENGINES, make_engine
from concilium.jobs.explain import ExplainUnit, explain_to_store, explain_units
from concilium.jobs.explain_plan import plan_members
from concilium.store import ExplanationStore
from tiny_members import chunk_files, small_cnn_members

N, HW = 7, 16


class ReversedEngine:
    """A real engine: every unit in this process, last unit first (ray finishes in any order)."""

    name = "reversed"

    def run(self, work, units, on_result):
        state = work.setup()
        for unit in reversed(units):
            on_result(unit, work.step(state, unit))


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(images=torch.rand(N, 3, HW, HW, generator=g), labels=torch.arange(N) % 2,
                        masks=torch.rand(N, HW, HW, generator=g) > 0.5,
                        ids=[f"s{i}" for i in range(N)], splits=["test"] * N,
                        class_names=["a", "b"])
    return data, small_cnn_members(data)


KW = {"seed": 5, "chunk_size": 3, "batch_size": 4, "meta": {"dataset_fingerprint": "x"}}
METHODS = ["saliency", "input_x_gradient", "gradient_shap"]


def test_units_in_any_order_write_the_default_loops_bytes(tiny, tmp_path):
    data, members = tiny
    explain_to_store(ExplanationStore(tmp_path / "loop"), data, members, METHODS, **KW)
    events = []
    reports = explain_to_store(ExplanationStore(tmp_path / "units"), data, members, METHODS,
                               engine=ReversedEngine(), on_chunk=events.append, **KW)
    assert chunk_files(tmp_path / "loop") == chunk_files(tmp_path / "units")
    assert len(chunk_files(tmp_path / "loop")) == 2 * 3 * (3 + 1)  # members x methods x (chunks + done)
    assert all(r.status == "computed" and r.chunks_computed == 3 for r in reports)
    assert events[-1].images_done == events[-1].images_total == 2 * 3 * N
    again = explain_to_store(ExplanationStore(tmp_path / "units"), data, members, METHODS,
                             engine=ReversedEngine(), **KW)
    assert all(r.status == "reused" for r in again)


def test_shared_pass_methods_of_a_chunk_are_one_unit(tiny, tmp_path):
    data, members = tiny
    plans = plan_members(ExplanationStore(tmp_path), data, members[:1], METHODS,
                         method_options={}, target="label", reduction="sum", baseline="zero",
                         seed=0, dtype="float32", chunk_size=4, batch_size=4,
                         device=torch.device("cpu"), meta={})
    assert explain_units(plans) == [
        ExplainUnit("m0", ("saliency", "input_x_gradient"), 0, 4),
        ExplainUnit("m0", ("gradient_shap",), 0, 4),
        ExplainUnit("m0", ("saliency", "input_x_gradient"), 4, 7),
        ExplainUnit("m0", ("gradient_shap",), 4, 7),
    ]


def test_a_worker_writes_maps_the_driver_marks_them(tiny, tmp_path):
    """``write(mark=False)`` leaves the chunk unfinished until ``mark_done``: a driver killed in
    between recomputes it, never reads half a chunk."""
    store = ExplanationStore(tmp_path)
    entry = store.entry("m0", "saliency", {"a": 1}, [f"s{i}" for i in range(5)], shape=(2, 2),
                        chunk_size=2)
    entry.write(2, torch.ones(2, 2, 2), mark=False)
    assert entry.missing_chunks() == [(0, 2), (2, 4), (4, 5)]
    entry.mark_done(2, 4)
    assert entry.missing_chunks() == [(0, 2), (4, 5)]
    assert entry.read([2, 3]).eq(1).all()
    with pytest.raises(ValueError, match="whole chunks"):
        entry.mark_done(1, 3)


def test_registry_and_errors(monkeypatch):
    assert {"inprocess", "ray"} <= set(ENGINES.names())
    assert isinstance(make_engine(), InProcessEngine)
    with pytest.raises(ValueError, match="valid names: inprocess, ray"):
        make_engine("dask")
    with pytest.raises(ValueError, match="--address are not options of the inprocess engine"):
        make_engine("inprocess", address="auto")
    monkeypatch.setattr(concilium.jobs.ray_engine, "ray", None)
    with pytest.raises(ImportError, match=r"pip install concilium\[ray\]"):
        make_engine("ray")


def test_cli_names_the_extra_when_ray_is_missing(monkeypatch, tmp_path, capsys):
    import sys

    from concilium.cli.main import main

    monkeypatch.setattr(concilium.jobs.ray_engine, "ray", None)
    monkeypatch.setattr(sys, "argv", ["concilium", "evaluate", str(tmp_path), "--engine", "ray"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "pip install concilium[ray]" in capsys.readouterr().err


def test_the_experiment_file_names_the_engine():
    from concilium.pipeline.config import parse_config
    from concilium.pipeline.context import Context

    config = parse_config({"engine": "ray", "address": "auto", "workers": 2})
    assert (config.engine, config.address, config.workers) == ("ray", "auto", 2)
    assert parse_config({}).engine == "inprocess"
    assert isinstance(Context(config=parse_config({}), out=Path(".")).engine, InProcessEngine)
    with pytest.raises(ValueError, match="engine"):
        parse_config({"engine": "dask"})


def test_run_with_engine_ray_and_no_ray_stops_before_any_work(monkeypatch, tmp_path, capsys):
    import sys

    from concilium.cli.main import main

    experiment = tmp_path / "exp.toml"
    experiment.write_text('name = "x"\n')
    monkeypatch.setattr(concilium.jobs.ray_engine, "ray", None)
    monkeypatch.setattr(sys, "argv", ["concilium", "run", str(experiment), "--out",
                                      str(tmp_path / "run"), "--engine", "ray"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "pip install concilium[ray]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
