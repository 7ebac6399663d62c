"""Review D1/D2: an ensemble scored on the rows its ensembler was fitted on prints a warning and
is marked ``in_sample`` in the metrics table, the summary and the report's labels."""

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from concilium.cli.main import app
from concilium.jobs.ensemble import run_ensemble
from concilium.jobs.evaluate import evaluate_run
from concilium.metrics.claims import cnn_claim
from concilium.metrics.tables import summarise
from concilium.report.summary import explanation_stats, findings
from concilium.store import ExplanationStore, ResultsTable, Run
from concilium.vocabulary import IN_SAMPLE_MARK

TINY_CNN = {"base_channels": 4, "depth": 1, "epochs": 2, "patience": 2, "batch_size": 8}


def test_scoring_fit_rows_warns_and_marks_exactly_those_rows(tiny_run):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    fit = set(ExplanationStore(tiny_run, mode="r").get("cnn", "gradcam+saliency").params["fit_ids"])
    assert fit
    with pytest.warns(UserWarning, match=r"cnn(:logit)?/gradcam\+saliency is scored on 24 of 32 rows .*"
                                         r"--split test.*crossfit"):
        report = evaluate_run(tiny_run, ["relevance_mass"], split="all")
    assert len(report.in_sample) == 2  # cnn and cnn:logit
    table = ResultsTable(tiny_run).load()
    expected = table["source"].isin(["cnn", "cnn:logit"]) & table["sample"].isin(fit)
    assert table["in_sample"].dtype == bool
    assert (table["in_sample"] == expected).all()
    summary = summarise(table).set_index("source")
    assert summary.loc["cnn", "in_sample"] and not summary.loc["m0", "in_sample"].any()
    stats = explanation_stats(table)
    marked = set(stats.loc[stats["in_sample"], "source"])
    assert marked == {"cnn", "cnn:logit"}
    assert stats.loc[stats["in_sample"], "explanation"].str.endswith(IN_SAMPLE_MARK).all()


def test_held_out_and_crossfit_scores_are_not_marked(tiny_run, tmp_path):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    run_ensemble(tiny_run, "cnn", {**TINY_CNN, "crossfit": 2, "source": "cnn:cf"})
    every = tmp_path / "every"
    shutil.copytree(tiny_run, every)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_run(tiny_run, ["relevance_mass"], split="test")
    assert not ResultsTable(tiny_run).load()["in_sample"].any()
    # every row: the cross-fitted sources are not warned about nor marked, the plain one is
    with pytest.warns(UserWarning) as caught:
        report = evaluate_run(every, ["relevance_mass"], split="all")
    assert all("cnn:cf" not in str(w.message) for w in caught)
    table = ResultsTable(every).load()
    assert set(table.loc[table["in_sample"], "source"]) == {"cnn", "cnn:logit"}
    assert {m.split(" ")[0] for m in report.in_sample} == {"cnn/gradcam+saliency",
                                                          "cnn:logit/gradcam+saliency"}


def test_tables_written_before_the_column_read_as_not_in_sample(tiny_run):
    (tiny_run / "results").mkdir()
    pd.DataFrame({"sample": ["a"], "label": [0], "source": ["m0"], "method": ["saliency"],
                  "metric": ["relevance_mass"], "value": [0.5]}
                 ).to_parquet(tiny_run / "results" / "metrics.parquet")
    assert ResultsTable(tiny_run).load()["in_sample"].tolist() == [False]


def test_cli_evaluate_scores_the_test_split_by_default(tiny_run):
    """Review D2: ``concilium evaluate`` without ``--split`` scores only the test rows of a run
    that explained several splits."""
    data = Run.open(tiny_run).data
    assert len(set(data.splits)) > 1
    out = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--metrics", "relevance_mass"])
    assert out.exit_code == 0, out.output
    scored = set(ResultsTable(tiny_run).load()["sample"])
    assert scored == {i for i, s in zip(data.ids, data.splits, strict=True) if s == "test"}


def test_claims_leave_out_in_sample_rows():
    """Claim 3 is decided on the held-out E* rows only: in-sample rows scored perfectly do not
    move its estimate."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(12):
        fit = s < 6
        for src in ("m0", "m1", "cnn"):
            for method in (("saliency", "gradcam") if src != "cnn" else ("a+b",)):
                for metric in ("relevance_mass", "iou", "pointing_game", "deletion"):
                    good = src == "cnn" and fit
                    value = (0.0 if metric == "deletion" else 1.0) if good else rng.random()
                    rows.append({"sample": f"s{s}", "label": s % 2, "source": src,
                                 "method": method, "metric": metric, "value": value,
                                 "in_sample": src == "cnn" and fit})
    table = pd.DataFrame(rows)
    got = next(f for f in findings(table, {}) if f.claim.startswith("The CNN ensembler"))
    held = cnn_claim(table[~table["in_sample"]], rng=np.random.default_rng(0))
    every = cnn_claim(table, rng=np.random.default_rng(0))
    assert got.estimate == held.estimate and got.n == held.n
    assert every.estimate != held.estimate


def test_cli_evaluate_prints_the_warning_and_marks_the_source(tiny_run):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    with pytest.warns(UserWarning, match="in-sample"):
        out = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--metrics", "relevance_mass",
                                       "--split", "all"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "warning:" in out.output and "--split test" in out.output
    rows = [line for line in out.output.splitlines() if "relevance_mass ↑" in line]
    marked = {line.split("│")[3].strip() for line in rows if IN_SAMPLE_MARK.strip() in line}
    assert marked == {"cnn" + IN_SAMPLE_MARK, "cnn:logit" + IN_SAMPLE_MARK}, rows
