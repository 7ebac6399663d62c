"""The recommendation rule and the informative-metric rule on small hand-built summary tables
whose answers are known: dominance, ties, overlapping intervals, no spread, directions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concilium.metrics.informative import informative_metrics, metric_informs
from concilium.metrics.recommend import RULE, family_intervals, recommend


def table(rows: list[tuple[str, str, str, bool, float, float]]) -> pd.DataFrame:
    """``(explanation, metric, family, higher_is_better, mean, half_width)`` rows."""
    return pd.DataFrame([
        {"explanation": e, "metric": m, "family": f, "higher_is_better": h, "mean": v,
         "ci_low": v - w, "ci_high": v + w} for e, m, f, h, v, w in rows])


# --------------------------------------------------------------------------- informative


def test_no_spread_is_uninformative():
    assert metric_informs([0.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3) == \
        "no spread: every explanation scores 0"


def test_all_intervals_overlap_is_uninformative():
    # [0, 2], [1, 3], [1.5, 4]: pairwise overlapping, common point 1.5..2
    reason = metric_informs([1.0, 2.0, 2.75], [0.0, 1.0, 1.5], [2.0, 3.0, 4.0])
    assert reason.startswith("all 95% intervals overlap")
    assert "1.5 to 2" in reason


def test_one_disjoint_pair_informs():
    # a and c are disjoint even though b overlaps both
    assert metric_informs([1.0, 2.0, 3.0], [0.5, 1.0, 2.6], [1.5, 3.0, 3.4]) == ""


def test_touching_intervals_overlap():
    assert metric_informs([0.0, 2.0], [-1.0, 1.0], [1.0, 3.0]) != ""


def test_nan_intervals_separate_nothing():
    assert metric_informs([0.0, 5.0], [np.nan, 4.9], [np.nan, 5.1]) == \
        "fewer than two explanations have an interval"
    assert metric_informs([0.0, np.nan], [0.0, 1.0], [0.0, 1.0]) == \
        "fewer than two explanations scored"


def test_informative_metrics_table():
    t = table([("a", "x", "localisation", True, 0.5, 0.0), ("b", "x", "localisation", True, 0.5, 0.0),
               ("a", "y", "localisation", True, 0.1, 0.05), ("b", "y", "localisation", True, 0.9, 0.05),
               ("a", "z", "faithfulness", True, 0.4, 0.3), ("b", "z", "faithfulness", True, 0.6, 0.3)])
    out = informative_metrics(t).set_index("metric")
    assert out["informative"].to_dict() == {"x": False, "y": True, "z": False}
    assert out.loc["x", "reason"].startswith("no spread")
    assert out.loc["z", "reason"].startswith("all 95% intervals overlap")
    assert out.loc["y", "spread"] == pytest.approx(0.8)


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="ci_high"):
        informative_metrics(pd.DataFrame({"explanation": ["a"], "metric": ["x"], "mean": [1.0],
                                          "ci_low": [0.0]}))


# --------------------------------------------------------------------------- recommend


def test_dominance_and_front():
    # a beats b surely on localisation and ties it on faithfulness; c trades off with a
    t = table([
        ("a", "iou", "localisation", True, 0.9, 0.05), ("b", "iou", "localisation", True, 0.5, 0.05),
        ("c", "iou", "localisation", True, 0.3, 0.05),
        ("a", "del", "faithfulness", False, 0.30, 0.02), ("b", "del", "faithfulness", False, 0.31, 0.02),
        ("c", "del", "faithfulness", False, 0.10, 0.02),
    ])
    r = recommend(t)
    rank = r.ranking.set_index("explanation")
    assert rank.loc["b", "status"] == "dominated"
    assert rank.loc["b", "dominated_by"] == "a"  # c is worse than b on localisation
    assert set(r.front) == {"a", "c"}
    assert rank.loc["a", "best_in"] == "localisation"
    assert rank.loc["c", "best_in"] == "faithfulness"
    assert rank.loc["a", "tied_with"] == ""  # a and c are told apart (a trade-off)
    assert list(r.ranking["explanation"])[-1] == "b"
    assert r.families == ["localisation", "faithfulness"]


def test_lower_is_better_direction_flips():
    t = table([("a", "del", "faithfulness", False, 0.1, 0.01),
               ("b", "del", "faithfulness", False, 0.9, 0.01)])
    assert recommend(t).front == ["a"]


def test_identical_explanations_tie_on_the_front():
    t = table([(e, "iou", "localisation", True, 0.5 + d, 0.1) for e, d in
               (("a", 0.0), ("b", 0.01))] + [("c", "iou", "localisation", True, 0.1, 0.01)])
    r = recommend(t)
    rank = r.ranking.set_index("explanation")
    assert set(r.front) == {"a", "b"}
    assert rank.loc["a", "tied_with"] == "b"
    assert rank.loc["b", "tied_with"] == "a"
    # b leads on the means, a overlaps: behind on the means only, still on the front
    assert rank.loc["a", "behind_on_means"] == "b"
    assert rank.loc["c", "dominated_by"] == "a; b"


def test_overlapping_intervals_dominate_nobody():
    # a is ahead of b on the means, but their intervals overlap: b stays on the front (behind
    # on the means only); c is told apart from both, so the metric informs
    t = table([("a", "iou", "localisation", True, 0.6, 0.2),
               ("b", "iou", "localisation", True, 0.5, 0.2),
               ("c", "iou", "localisation", True, 0.0, 0.01),
               ("a", "sp", "complexity", True, 0.6, 0.2),  # all overlap: does not count
               ("b", "sp", "complexity", True, 0.5, 0.2),
               ("c", "sp", "complexity", True, 0.7, 0.2)])
    r = recommend(t)
    assert r.families == ["localisation"]
    assert r.front == ["a", "b"]
    rank = r.ranking.set_index("explanation")
    assert rank.loc["b", "behind_on_means"] == "a"
    assert rank.loc["a", "tied_with"] == "b"
    assert rank.loc["c", "dominated_by"] == "a; b"
    assert not r.metrics.set_index("metric").loc["sp", "used"]


def test_uninformative_metrics_are_left_out():
    t = table([("a", "mono", "faithfulness", True, 0.0, 0.0),
               ("b", "mono", "faithfulness", True, 0.0, 0.0)])
    r = recommend(t)
    assert r.ranking.empty and r.families == []
    assert r.as_dict()["uninformative_metrics"] == {"mono": "no spread: every explanation "
                                                            "scores 0"}


def test_family_interval_is_the_mean_of_rescaled_bounds():
    t = table([("a", "m1", "localisation", True, 0.0, 0.1), ("b", "m1", "localisation", True, 1.0, 0.1),
               ("a", "m2", "localisation", False, 10.0, 1.0), ("b", "m2", "localisation", False, 0.0, 1.0)])
    f = family_intervals(t, ["m1", "m2"]).set_index("explanation")
    # m1 rescaled: a 0 [-0.1, 0.1], b 1 [0.9, 1.1]; m2 (lower better, span 10): a 0 [-0.1, 0.1]
    assert f.loc["a", ["score", "low", "high"]].tolist() == pytest.approx([0.0, -0.1, 0.1])
    assert f.loc["b", ["score", "low", "high"]].tolist() == pytest.approx([1.0, 0.9, 1.1])
    assert f.loc["a", "n_metrics"] == 2


def test_a_metric_without_interval_leaves_the_family_without_one():
    t = table([("a", "m1", "localisation", True, 0.0, 0.1), ("b", "m1", "localisation", True, 1.0, 0.1),
               ("a", "m2", "localisation", True, 0.0, 0.1), ("b", "m2", "localisation", True, 1.0, 0.1)])
    t.loc[(t["explanation"] == "a") & (t["metric"] == "m2"), ["ci_low", "ci_high"]] = np.nan
    f = family_intervals(t, ["m1", "m2"]).set_index("explanation")
    assert math.isnan(f.loc["a", "low"]) and f.loc["a", "score"] == pytest.approx(0.0)


def test_duplicate_rows_and_missing_columns_raise():
    t = table([("a", "m", "localisation", True, 0.0, 0.1)] * 2)
    with pytest.raises(ValueError, match="appears twice"):
        recommend(t)
    with pytest.raises(ValueError, match="family"):
        recommend(t.drop(columns="family"))


def test_rule_and_json():
    t = table([("a", "iou", "localisation", True, 0.9, 0.05),
               ("b", "iou", "localisation", True, 0.1, 0.05)])
    d = recommend(t).as_dict(top=1)
    assert d["rule"] == RULE and d["front"] == ["a"]
    assert [r["explanation"] for r in d["ranking"]] == ["a"]
    assert d["ranking"][0]["localisation_low"] == pytest.approx(0.9375)


values = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(values, values, values, st.floats(0.0, 0.3)), min_size=2, max_size=6))
def test_front_is_never_empty_and_nobody_on_it_is_dominated(points):
    rows = []
    for i, (x, y, z, w) in enumerate(points):
        for metric, fam, v in (("m1", "localisation", x), ("m2", "faithfulness", y),
                               ("m3", "complexity", z)):
            rows.append((f"e{i}", metric, fam, True, v, w))
    r = recommend(table(rows))
    if r.ranking.empty:
        return
    assert r.front
    rank = r.ranking.set_index("explanation")
    for name in r.front:
        assert rank.loc[name, "dominated_by"] == ""
    # the dominated ones are dominated by someone, and dominance respects every family mean
    for a, b in itertools.permutations(rank.index, 2):
        if a in rank.loc[b, "dominated_by"].split("; "):
            assert all(rank.loc[a, f] >= rank.loc[b, f] for f in r.families)
