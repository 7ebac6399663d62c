"""The quick demo end to end (the CI smoke test), and the full demo's config matching
examples/benchmark.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from concilium.pipeline import demo_config, load_config
from concilium.pipeline.demo import demo_values
from concilium.report.summary import findings

ROOT = Path(__file__).resolve().parents[2]


def test_full_demo_is_examples_benchmark():
    demo = demo_config().model_dump(exclude={"name"})
    bench = load_config(ROOT / "examples" / "benchmark.toml").model_dump(exclude={"name"})
    assert demo == bench


def test_demo_values_validate_quick_and_full():
    assert demo_config(quick=True).models.option("members") == 3
    assert demo_values()["models"]["members"] == 11


def test_full_demo_committee_is_large_and_mixed():
    """Claim 2b correlates over the committee's members: at least 15 of them, of several
    architectures (issue 12)."""
    committee = demo_config().committee.models
    assert committee.option("members") >= 15
    assert len(set(committee.option("archs"))) >= 3


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from concilium.cli.main import app
    from concilium.report import SECTIONS

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "headline findings" in result.output and "report.html" in result.output
    html = (out / "report.html").read_text()
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in html
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["findings"]) == len(findings(None, {}, card={})) and summary["explanations"]
    assert any(f["verdict"] != "not measured" for f in summary["findings"])
    # it opens with the recommendation, ranked from the metrics that inform (issue 17)
    assert html.index("<section id=") == html.index('<section id="recommendation">')
    assert summary["recommendation"]["ranking"] and summary["recommendation"]["front"]
    # the audit stage wrote the attribute cards (multitask members); the report only read them
    assert (out / "results" / "attributes.npz").is_file()
    assert "attributes" not in summary["missing_sections"]
    state = json.loads((out / "stages.json").read_text())["stages"]
    assert all(r["status"] == "done" for r in state.values())
    assert set(state) == {"data", "models", "committee", "explain", "ensemble", "evaluate",
                          "audit", "report"}
    # every stage cached: a second run does nothing and gives the same summary
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0
    assert json.loads((out / "stages.json").read_text())["stages"]["report"]["finished"] == \
        state["report"]["finished"]
