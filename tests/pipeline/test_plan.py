"""The dry-run plan: every stage listed with its status and estimated cost; cached stages are
recognised from stages.json; nothing is written."""

from __future__ import annotations

from concilium.metrics import METRICS, metrics_in
from concilium.pipeline import demo_config, format_plan, parse_config, plan
from concilium.pipeline.runner import write_state

CONFIG = {
    "data": {"n": 100, "size": 32},
    "models": {"members": 2, "epochs": 1},
    "explain": {"methods": ["saliency", "integrated_gradients"],
                "params": {"integrated_gradients": {"n_steps": 10}}, "limit": 5},
    "evaluate": {"metrics": ["localisation", "deletion"]},
}


def test_plan_lists_stages_costs_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    planned = plan(parse_config(CONFIG), run_dir)
    names = [p.name for p in planned]
    assert names == ["data", "models", "committee", "explain", "ensemble", "evaluate", "audit",
                     "ganmex", "report"]
    by = {p.name: p for p in planned}
    assert by["committee"].status == "skip" and by["ganmex"].status == "skip"
    assert all(p.status == "run" for p in planned if p.name not in ("committee", "ganmex"))
    # saliency 1 pass + IG 10 steps (+1 for its baseline forward at most) per image and member
    assert 2 * 5 * 11 <= by["explain"].passes <= 2 * 5 * 12
    assert by["explain"].seconds > 0 and by["models"].passes > 0
    assert by["evaluate"].passes > 0  # deletion needs the model
    # from MetricSpec.passes: deletion at 5% of 32x32 per step = 51 px, 21 steps + the start
    assert METRICS.get("deletion").model_passes(size=(32, 32)) == 22
    # every selected metric's passes per image (focus, a localisation metric, calls the model)
    per_image = sum(
        METRICS.get(n).model_passes(size=(32, 32)) for n in metrics_in("localisation,deletion")
    )
    assert per_image >= 22 and by["evaluate"].passes % per_image == 0
    text = format_plan(planned)
    assert "explain" in text and "to run: about" in text
    assert not run_dir.exists()


def test_plan_sees_cached_and_resumable_stages(tmp_path):
    from concilium.pipeline.runner import stage_hashes
    from concilium.pipeline.stages import STAGES

    config = parse_config(CONFIG)
    hashes = stage_hashes(STAGES, config)
    write_state(tmp_path, {"data": {"hash": hashes["data"], "status": "done"},
                           "models": {"hash": hashes["models"], "status": "running"},
                           "explain": {"hash": "stale", "status": "done"}})
    by = {p.name: p for p in plan(config, tmp_path)}
    # the data stage always runs (cheap; its fingerprint keys the rest)
    assert (by["data"].status, by["models"].status, by["explain"].status) == (
        "run", "resume", "run")


def test_demo_plans_every_stage():
    planned = {p.name: p for p in plan(demo_config(quick=True), "/nonexistent/run")}
    assert planned["committee"].status == "run"
    assert planned["ensemble"].passes and planned["ensemble"].passes > 0


def test_members_from_libraries_are_not_costed_as_small_cnns(tmp_path):
    config = {**CONFIG, "models": {"sources": ["hf:/m/vit-b16", str(tmp_path / "trained")]}}
    by = {p.name: p for p in plan(parse_config(config), tmp_path / "run")}
    assert by["models"].passes == 0  # nothing to train
    for stage in ("explain", "ensemble", "evaluate"):
        assert by[stage].passes is None and by[stage].seconds is None  # '-': not estimated
    folder = {**CONFIG, "models": {"sources": [str(tmp_path / "trained")]}}
    assert plan(parse_config(folder), tmp_path / "run")[3].passes > 0
