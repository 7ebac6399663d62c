"""The statistics defined once in concilium.metrics.tables: mean_ci, Exp-Avg, summary, paper table.

Hand values on tiny tables (layer a), and one check that every consumer (the `evaluate` summary
and the report's explanation statistics) gives the same Exp-Avg for the same table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from concilium.metrics.tables import exp_avg_per_sample, mean_ci, paper_table, summarise
from concilium.report.summary import explanation_stats


def _rows(values: dict[tuple[str, str], list[float]], method: str = "saliency") -> pd.DataFrame:
    rows = []
    for (source, metric), vs in values.items():
        for i, v in enumerate(vs):
            rows.append({"sample": f"s{i}", "label": i % 2, "source": source, "method": method,
                         "metric": metric, "value": v})
    return pd.DataFrame(rows)


TABLE = _rows({
    ("m0", "relevance_mass"): [0.6, 0.8, 0.7],
    ("m1", "relevance_mass"): [0.4, 0.6, 0.5],
    ("ens-avg", "relevance_mass"): [0.9, 0.9, 0.6],
    ("m0", "com_distance"): [0.1, 0.2, 0.3],
    ("m1", "com_distance"): [0.3, 0.3, 0.3],
    ("ens-avg", "com_distance"): [0.1, 0.1, 0.1],
})


def test_mean_ci_is_the_student_t_interval():
    mean, low, high, n = mean_ci(np.array([1.0, 2.0, 4.0, np.nan]))
    half = stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert (low, high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))


def test_mean_ci_of_one_value_has_no_interval_and_of_none_no_mean():
    mean, low, high, n = mean_ci(np.array([5.0, np.nan]))
    assert (mean, n) == (5.0, 1) and math.isnan(low) and math.isnan(high)
    assert math.isnan(mean_ci(np.array([np.nan]))[0]) and mean_ci(np.array([]))[3] == 0


def test_exp_avg_is_nan_where_any_member_is_nan_or_missing():
    t = TABLE.copy()
    t.loc[(t.source == "m1") & (t.metric == "relevance_mass") & (t["sample"] == "s0"),
          "value"] = np.nan
    t = t[~((t.source == "m1") & (t.metric == "relevance_mass") & (t["sample"] == "s1"))]
    exp = exp_avg_per_sample(t).set_index(["metric", "sample"])["value"]
    assert math.isnan(exp[("relevance_mass", "s0")]) and math.isnan(exp[("relevance_mass", "s1")])
    assert exp[("relevance_mass", "s2")] == pytest.approx(0.6)
    assert exp[("com_distance", "s0")] == pytest.approx(0.2)


def test_summary_exp_avg_rows_and_best_follow_direction():
    summary = summarise(TABLE).set_index(["source", "metric"])
    assert summary.loc[("exp-avg", "relevance_mass"), "mean"] == pytest.approx(0.6)
    assert summary.loc[("m0", "relevance_mass"), "n"] == 3
    best = summary[summary["best"]]
    # relevance_mass is higher-better (ens-avg 0.8); com_distance lower-better (ens-avg 0.1)
    assert set(best.index) == {("ens-avg", "relevance_mass"), ("ens-avg", "com_distance")}


def test_every_consumer_prints_the_same_exp_avg():
    t = TABLE.copy()
    t.loc[(t.source == "m1") & (t["sample"] == "s0"), "value"] = np.nan
    from_summary = summarise(t).set_index(["source", "metric"])["mean"]
    report = explanation_stats(t).set_index(["source", "metric"])["mean"]
    for metric in ("relevance_mass", "com_distance"):
        assert report[("exp-avg", metric)] == pytest.approx(from_summary[("exp-avg", metric)])


def test_paper_table_pairs_images_and_signs_the_gain():
    t = TABLE.copy()
    t.loc[(t.source == "ens-avg") & (t["sample"] == "s2"), "value"] = np.nan
    paper = paper_table(t).set_index("metric")
    row = paper.loc["relevance_mass"]
    # images s0, s1 only: Exp-Avg (0.5 + 0.7) / 2, Ens-Avg 0.9
    assert row.n_images == 2 and row.exp_avg == pytest.approx(0.6) and row.ens_avg == 0.9
    assert row.gain == pytest.approx(0.3) and row.ens_avg_better
    assert row.member_min == pytest.approx(0.5) and row.member_max == pytest.approx(0.7)
    row = paper.loc["com_distance"]
    assert row.gain == pytest.approx((0.2 + 0.25) / 2 - 0.1) and row.ens_avg_better
    assert math.isnan(row.ens_logit) and row.n_members == 2


def test_paper_table_is_empty_without_the_ensemble_source():
    assert paper_table(TABLE[TABLE.source != "ens-avg"]).empty
