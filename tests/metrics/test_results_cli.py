"""The results table, its summary (mean, 95% CI, Exp-Avg, best) and `concilium evaluate`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from concilium.cli.main import app
from concilium.data.dataset import ImageDataset
from concilium.data.folder import write_folder
from concilium.jobs.evaluate import load_metric_params
from concilium.metrics import METRICS
from concilium.report.summary import family_scores
from concilium.store.results import COLUMNS, ResultsTable, group_rows
from concilium.vocabulary import FAMILIES
from tiny_members import save_small_cnn_members


def _table() -> pd.DataFrame:
    parts = []
    values = {
        ("m0", "auc"): [0.6, 0.8, 0.7],
        ("m1", "auc"): [0.4, 0.6, 0.5],
        ("ens-avg", "auc"): [0.9, 0.9, 0.6],
        ("m0", "com_distance"): [0.1, 0.2, 0.3],
        ("m1", "com_distance"): [0.3, 0.3, 0.3],
    }
    for (source, metric), v in values.items():
        parts.append(
            group_rows(
                samples=["a", "b", "c"],
                labels=[0, 1, 0],
                source=source,
                method="saliency",
                entry_hash="h",
                metric=metric,
                mask="masks",
                values=v,
                params_hash="p",
                params="{}",
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_results_table_appends_and_reports_done_groups(tmp_path):
    table = ResultsTable(tmp_path)
    assert table.load().empty and list(table.load().columns) == list(COLUMNS)
    df = _table()
    table.append(df[df.metric == "auc"])
    table.append(df[df.metric == "com_distance"])
    loaded = table.load()
    assert len(loaded) == len(df) and table.csv.exists()
    assert ("m1", "saliency", "h", "com_distance", "p") in table.done_groups()
    with pytest.raises(ValueError, match="lack the columns"):
        table.append(df.drop(columns=["value"]))


def test_metric_params_file_is_checked(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[top_k_intersection]\nk = 5\n[infidelity]\nperturb_patch_sizes = [2, 4]\n")
    params = load_metric_params(good, ["top_k_intersection", "infidelity"])
    assert params == {"top_k_intersection": {"k": 5}, "infidelity": {"perturb_patch_sizes": (2, 4)}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[top_k_intersection]\nkk = 5\n")
    with pytest.raises(ValueError, match="unknown parameter.*kk.*valid parameters"):
        load_metric_params(bad, ["top_k_intersection"])
    with pytest.raises(ValueError, match="not among --metrics"):
        load_metric_params(good, ["top_k_intersection"])


N, HW = 5, 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(N, HW, HW, dtype=torch.bool)
    masks[:, 4:12, 3:10] = True
    data = ImageDataset(
        images=(torch.rand(N, 3, HW, HW, generator=g) * 255).round() / 255,
        labels=torch.arange(N) % 2,
        masks=masks,
        ids=[f"s{i}" for i in range(N)],
        splits=["test"] * N,
        class_names=["a", "b"],
    )
    write_folder(data, root / "data")
    save_small_cnn_members(data, root / "models")
    run = root / "run"
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(root / "data"),
            "--models",
            str(root / "models"),
            "--out",
            str(run),
            "--methods",
            "saliency",
            "--split",
            "test",
        ],
    )
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_cli_evaluate_end_to_end_and_resume(run_dir):
    params = run_dir / "metrics.toml"
    params.write_text("[deletion]\nstep = 25\n[max_sensitivity]\nnr_samples = 2\n")
    args = [
        "evaluate",
        str(run_dir),
        "--metrics",
        "auc,sparseness,deletion,max_sensitivity",
        "--params",
        str(params),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(run_dir / "results" / "metrics.parquet")
    assert {"sample", "label", "source", "method", "metric", "value", "params_hash"} <= set(table)
    assert len(table) == N * 2 * 4
    assert set(table.source) == {"m0", "m1"} and set(table.metric) == {
        "auc",
        "sparseness",
        "deletion",
        "max_sensitivity",
    }
    assert "exp-avg" in result.output and "8 groups computed" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 groups computed, 8 already in the table" in again.output
    assert len(pd.read_parquet(run_dir / "results" / "metrics.parquet")) == len(table)


def test_cli_evaluate_rejects_bad_options(run_dir):
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--metrics", "aucc"])
    assert result.exit_code != 0
    assert "unknown metric or category 'aucc'" in str(result.exception or result.output)
    bad_split = CliRunner().invoke(app, ["evaluate", str(run_dir), "--split", "dev"])
    assert bad_split.exit_code != 0
    assert "split must be one of train, val, test, all; got 'dev'" in str(bad_split.exception)


@pytest.mark.slow
def test_cli_evaluate_a_family_added_late_end_to_end(run_dir):
    """``--metrics axiomatic`` selects the family, writes its rows with their category, and the
    report's family scores give it a column of its own."""
    params = run_dir / "axiomatic.toml"
    params.write_text(f"[non_sensitivity]\nstep = {HW * HW // 4}\n")
    args = ["evaluate", str(run_dir), "--metrics", "axiomatic", "--params", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(run_dir / "results" / "metrics.parquet")  # shared with other tests
    table = table[table.category == "axiomatic"]
    assert set(table.metric) == {"completeness", "non_sensitivity", "input_invariance"}
    stats = (
        table.assign(explanation=table.source + "/" + table.method)
        .groupby(["explanation", "metric"], as_index=False)["value"].mean()
        .rename(columns={"value": "mean"})
    )
    meta = pd.DataFrame(
        [(n, s.category, s.higher_is_better) for n, s in METRICS.items()],
        columns=["metric", "category", "higher_is_better"],
    )
    scores = family_scores(stats, meta)
    assert list(scores.columns) == list(FAMILIES) and scores["axiomatic"].notna().all()
