"""The stage runner: per-stage hashes in stages.json, skipping finished stages, resuming after a
stage that died mid-way, and redoing only the report after a [report] change."""

from __future__ import annotations

import json

import pytest

from concilium.pipeline import parse_config
from concilium.pipeline.context import Stage
from concilium.pipeline.runner import read_state, run_pipeline, stage_hashes


class Recorder:
    """Stand-in stages: each appends its name to ``calls``; ``fail_once`` raises mid-way (after
    writing half of its output) the first time it runs."""

    def __init__(self, fail_once: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_once = fail_once

    def stage(self, name, section, upstream=()):
        def run(ctx):
            self.calls.append(name)
            part = ctx.out / f"{name}.part"
            if name == self.fail_once:
                part.write_text("half")
                self.fail_once = None
                raise RuntimeError(f"{name} killed mid-way")
            (ctx.out / f"{name}.done").write_text(part.read_text() + "+rest" if part.exists()
                                                  else "all")
            return {"name": name}

        return Stage(name, section, tuple(upstream), run)

    def stages(self):
        return [
            self.stage("data", lambda c: c.data),
            self.stage("explain", lambda c: c.explain, ["data"]),
            self.stage("evaluate", lambda c: c.evaluate, ["explain"]),
            self.stage("report", lambda c: c.report, ["data", "explain", "evaluate"]),
        ]


CONFIG = {"data": {"n": 50, "size": 32}, "explain": {"methods": ["saliency"]}}


def test_second_run_skips_everything(tmp_path):
    rec = Recorder()
    config = parse_config(CONFIG)
    first = run_pipeline(config, tmp_path, stages=rec.stages())
    assert [r.action for r in first] == ["ran"] * 4
    second = run_pipeline(config, tmp_path, stages=rec.stages())
    assert [r.action for r in second] == ["skipped"] * 4
    assert rec.calls == ["data", "explain", "evaluate", "report"]
    state = read_state(tmp_path)
    assert state["report"]["status"] == "done"
    assert state["report"]["hash"] == stage_hashes(rec.stages(), config)["report"]
    assert json.loads((tmp_path / "stages.json").read_text())["stages"]["data"]["summary"] == {
        "name": "data"}


def test_resume_after_a_stage_dies_mid_way(tmp_path):
    rec = Recorder(fail_once="evaluate")
    config = parse_config(CONFIG)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        run_pipeline(config, tmp_path, stages=rec.stages())
    state = read_state(tmp_path)
    assert state["evaluate"]["status"] == "failed" and "killed" in state["evaluate"]["error"]
    assert "report" not in state
    results = run_pipeline(config, tmp_path, stages=rec.stages())
    assert [r.action for r in results] == ["skipped", "skipped", "ran", "ran"]
    assert rec.calls == ["data", "explain", "evaluate", "evaluate", "report"]
    assert (tmp_path / "evaluate.done").read_text() == "half+rest"  # resumed from its output
    assert all(r["status"] == "done" for r in read_state(tmp_path).values())


def test_changing_only_the_report_redoes_only_the_report(tmp_path):
    rec = Recorder()
    run_pipeline(parse_config(CONFIG), tmp_path, stages=rec.stages())
    changed = parse_config({**CONFIG, "report": {"gallery_images": 1}})
    results = run_pipeline(changed, tmp_path, stages=rec.stages())
    assert [r.action for r in results] == ["skipped", "skipped", "skipped", "ran"]


def test_upstream_change_invalidates_downstream(tmp_path):
    rec = Recorder()
    run_pipeline(parse_config(CONFIG), tmp_path, stages=rec.stages())
    changed = parse_config({**CONFIG, "explain": {"methods": ["saliency", "gradcam"]}})
    results = run_pipeline(changed, tmp_path, stages=rec.stages())
    assert [r.action for r in results] == ["skipped", "ran", "ran", "ran"]


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / "stages.json").write_text("{not json")
    with pytest.raises(ValueError, match="delete it"):
        read_state(tmp_path)


def test_new_data_under_the_same_config_invalidates_everything_after_it(tmp_path):
    rec = Recorder()
    fingerprint = {"value": "aaa"}
    stages = rec.stages()
    stages[0] = Stage("data", lambda c: c.data, (), lambda ctx: (
        rec.calls.append("data"), {"fingerprint": fingerprint["value"]})[1], always_run=True)
    config = parse_config(CONFIG)
    run_pipeline(config, tmp_path, stages=stages)
    again = run_pipeline(config, tmp_path, stages=stages)
    assert [r.action for r in again] == ["ran", "skipped", "skipped", "skipped"]
    fingerprint["value"] = "bbb"  # e.g. the generator changed, the config did not
    changed = run_pipeline(config, tmp_path, stages=stages)
    assert [r.action for r in changed] == ["ran", "ran", "ran", "ran"]


def test_cuda_without_cuda_fails_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("hardware: checks the error on a machine WITHOUT CUDA, and this one has CUDA")
    rec = Recorder()
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_pipeline(parse_config({**CONFIG, "device": "cuda"}), tmp_path / "run",
                     stages=rec.stages())
    assert rec.calls == [] and not (tmp_path / "run").exists()
