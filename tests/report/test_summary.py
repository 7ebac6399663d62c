"""Numbers of the report: hand values on tiny tables, direction handling, findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_helpers import make_metrics

from concilium.report.summary import (
    best_per_metric,
    consensus_points,
    explanation_stats,
    family_scores,
    findings,
    is_member,
)


def _table(rows):
    return pd.DataFrame(rows, columns=["sample", "label", "source", "method", "metric", "value"])


def test_is_member():
    assert is_member("m0") and is_member("m12")
    assert not is_member("ens-avg") and not is_member("members") and not is_member("cnn")


def test_pooled_members_average_per_sample_first():
    t = _table([
        ("a", 0, "m0", "sal", "rm", 0.0), ("a", 0, "m1", "sal", "rm", 1.0),
        ("b", 0, "m0", "sal", "rm", 1.0), ("b", 0, "m1", "sal", "rm", 1.0),
        ("a", 0, "ens-avg", "sal", "rm", 0.9), ("b", 0, "ens-avg", "sal", "rm", 0.7),
    ])
    stats = explanation_stats(t).set_index("source")
    assert stats.loc["exp-avg", "mean"] == pytest.approx(0.75)
    assert stats.loc["exp-avg", "n"] == 2  # per-sample pooled, not 4 member rows
    assert stats.loc["ens-avg", "mean"] == pytest.approx(0.8)
    assert set(explanation_stats(t, members="each")["source"]) == {"m0", "m1", "ens-avg"}
    assert len(explanation_stats(t, members="both")) == 4


def test_missing_columns_named():
    with pytest.raises(ValueError, match=r"lacks columns \['value'\]"):
        explanation_stats(pd.DataFrame(columns=["sample", "label", "source", "method", "metric"]))


def test_best_respects_direction():
    stats = pd.DataFrame({
        "explanation": ["x", "y", "x", "y"], "metric": ["rm", "rm", "del", "del"],
        "mean": [0.2, 0.5, 0.2, 0.5],
    })
    meta = pd.DataFrame({"metric": ["rm", "del"], "category": ["localisation", "faithfulness"],
                         "higher_is_better": [True, False]})
    assert best_per_metric(stats, meta) == {"rm": "y", "del": "x"}


def test_family_scores_flip_lower_is_better_and_average_family():
    stats = pd.DataFrame({
        "explanation": ["x", "y", "z"] * 2, "metric": ["rm"] * 3 + ["del"] * 3,
        "mean": [0.0, 0.5, 1.0, 0.0, 0.5, 1.0],
    })
    meta = pd.DataFrame({"metric": ["rm", "del"], "category": ["localisation", "faithfulness"],
                         "higher_is_better": [True, False]})
    scores = family_scores(stats, meta)
    assert scores.loc[["x", "y", "z"], "localisation"].tolist() == [0.0, 0.5, 1.0]
    assert scores.loc[["x", "y", "z"], "faithfulness"].tolist() == [1.0, 0.5, 0.0]
    assert scores["robustness"].isna().all()


def test_findings_report_numbers_and_verdicts(report_data):
    found = {f.claim.split(" (")[0]: f for f in findings(
        report_data.metrics, report_data.tables, card=report_data.dataset)}
    consensus = found["Consensus score correlates positively with member accuracy"]
    # three members: r > 0 but no interval below four members
    assert consensus.verdict == "inconclusive" and "Pearson r = +" in consensus.detail
    rare = found["The rare class is flagged by the per-class quality audit"]
    assert rare.verdict == "held" and rare.estimate == pytest.approx(0.2)
    water = found["The watermark class is flagged by the bias audit"]
    assert water.verdict == "inconclusive" and "flagged by 1/1" in water.detail  # one explanation


def test_findings_not_measured_without_inputs():
    found = findings(None, {}, card={})
    assert len(found) == 7 and all(f.verdict == "not measured" for f in found)


def test_averaging_claim_fails_when_members_better():
    t = _table([r for s in "abc" for r in (
        (s, 0, "m0", "sal", "mask_correlation", 0.9),
        (s, 0, "ens-avg", "sal", "mask_correlation", 0.1 + 0.01 * "abc".index(s)))])
    f = findings(t, {})[0]
    assert f.verdict == "not held" and "-0.790" in f.detail


def test_consensus_points_average_rows_per_member():
    table = pd.DataFrame({"source": ["m0", "m0", "m1"], "consensus_score": [0.2, 0.4, 0.5],
                          "accuracy": [0.8, 0.8, 0.9]})
    p = consensus_points(table).set_index("member")
    assert p.loc["m0", "consensus_score"] == pytest.approx(0.3)
    assert consensus_points(pd.DataFrame({"x": [1]})) is None


def test_stats_on_generated_table_have_finite_ci():
    stats = explanation_stats(make_metrics())
    assert np.isfinite(stats[["mean", "ci_low", "ci_high"]].to_numpy()).all()
    assert (stats["ci_low"] <= stats["mean"]).all() and (stats["mean"] <= stats["ci_high"]).all()


def test_consensus_alignment_uses_the_committee_table():
    committee = _table([
        (s, 0, src, "smoothgrad", "auc", v + 0.01 * i)
        for i, s in enumerate("abcd")
        for src, v in (("m0", 0.6), ("m1", 0.7), ("m2", 0.8), ("consensus", 0.75))
    ])
    found = findings(None, {"committee_metrics": committee})[1]
    assert found.verdict == "inconclusive"  # auc only: average precision, mask correlation missing
    assert "auc/smoothgrad 0.765 vs 0.715" in found.detail
    assert found.estimate == pytest.approx(0.05)
    committee.loc[committee["source"] == "consensus", "value"] -= 0.1
    assert findings(None, {"committee_metrics": committee})[1].verdict == "not held"


def test_long_method_ensemble_names_are_shortened():
    from concilium.report.summary import explanation_label

    assert explanation_label("m0", "saliency") == "m0 · saliency"
    assert explanation_label("cnn", "gradcam+saliency") == "cnn · gradcam+saliency"
    long = "gradcam+gradient_shap+input_x_gradient+integrated_gradients+saliency"
    assert explanation_label("cnn", long) == "cnn · 5 methods"
