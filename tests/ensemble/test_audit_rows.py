"""The audits read held-out rows only (review D1): the test split of a run of several splits."""

import pandas as pd
import pytest

from concilium.jobs.audit import audited_rows, run_audit
from concilium.store import Run


def test_audited_rows_keep_the_test_split():
    idx, name = audited_rows(["train", "test", "val", "test"], "test")
    assert idx.tolist() == [1, 3] and name == "test"
    idx, name = audited_rows(["test", "test"], "test")  # one split: nothing is held out
    assert idx.tolist() == [0, 1] and name == "all (test)"
    idx, name = audited_rows(["train", "test"], "all")
    assert idx.tolist() == [0, 1] and name == "all (test+train)"


def test_audit_tables_hold_test_rows_only(tiny_run):
    splits = Run.open(tiny_run).data.splits
    n_test = splits.count("test")
    assert 0 < n_test < len(splits)
    (tiny_run / "results").mkdir(exist_ok=True)
    ids = Run.open(tiny_run).data.ids
    labels = Run.open(tiny_run).data.labels.tolist()
    pd.DataFrame({"sample": ids, "label": labels, "source": "m0", "method": "saliency",
                  "metric": "relevance_mass", "value": 0.5, "params_hash": "x"}
                 ).to_parquet(tiny_run / "results" / "metrics.parquet")
    tables = run_audit(tiny_run, {"region": "outside", "bias_sources": ["m0"]})
    bias, means = tables["bias"], tables["per_class_metrics"]
    assert set(bias.rows) == {"test"} and set(means.rows) == {"test"}
    assert bias.groupby("method").n.sum().tolist() == [n_test, n_test]
    assert means.n.sum() == n_test
    tables = run_audit(tiny_run, {"region": "outside", "bias_sources": ["m0"], "rows": "all"})
    assert tables["per_class_metrics"].n.sum() == len(splits)
    assert tables["bias"].rows.iloc[0].startswith("all")


@pytest.mark.parametrize("rows", ["held", "train"])
def test_audit_rows_option_is_checked(tiny_run, rows):
    with pytest.raises(ValueError, match="rows"):
        run_audit(tiny_run, {"rows": rows})
