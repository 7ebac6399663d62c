"""Paired differences of the forest plot: hand-computed values, orientation, pairing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from concilium.metrics.differences import paired_differences


def _table(values: dict[str, list[float]], metric: str = "iou",
           method: str = "saliency") -> pd.DataFrame:
    return pd.DataFrame([{"sample": f"s{i}", "source": src, "method": method, "metric": metric,
                          "value": v} for src, vs in values.items() for i, v in enumerate(vs)])


def test_hand_computed_difference_and_interval():
    t = _table({"m0": [0.1, 0.2, 0.3, 0.4], "m1": [0.3, 0.2, 0.5, 0.2],
                "ens-avg": [0.5, 0.4, 0.3, 0.6]})
    d = paired_differences(t, rng=np.random.default_rng(0), comparisons=[("ens-avg", "exp-avg")])
    exp_avg = np.array([0.2, 0.2, 0.4, 0.3])
    diff = np.array([0.5, 0.4, 0.3, 0.6]) - exp_avg
    (row,) = d.itertuples()
    assert row.estimate == pytest.approx(diff.mean())
    assert diff.min() <= row.ci_low <= row.estimate <= row.ci_high <= diff.max()
    assert row.n == 4 and row.comparison == "ens-avg - exp-avg"


def test_lower_is_better_is_oriented():
    t = _table({"ens-avg": [1.0, 1.0, 1.0], "ens-logit": [2.0, 2.5, 3.0]}, metric="com_distance")
    d = paired_differences(t, rng=np.random.default_rng(0),
                           comparisons=[("ens-avg", "ens-logit")])
    assert d["estimate"].iloc[0] == pytest.approx(1.5)  # ens-avg is closer: positive


def test_nan_drops_the_image_and_absent_pairs_are_left_out():
    t = _table({"ens-avg": [1.0, np.nan, 3.0], "ens-logit": [0.0, 0.0, 0.0]})
    d = paired_differences(t, rng=np.random.default_rng(0))
    assert d["comparison"].tolist() == ["ens-avg - ens-logit"]  # no members: no Exp-Avg
    assert d["n"].iloc[0] == 2 and d["estimate"].iloc[0] == pytest.approx(2.0)


def test_missing_columns_raise():
    with pytest.raises(ValueError, match="value"):
        paired_differences(pd.DataFrame({"sample": []}), rng=np.random.default_rng(0))
