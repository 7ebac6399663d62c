"""Which metrics inform: a metric that does not separate the explanations it scores is marked,
with the reason, so that a report can fold it away.

A summary table has one row per (explanation, metric) with ``mean``, ``ci_low`` and ``ci_high``
(the 95% interval of the mean; NaN bounds when it could not be estimated, e.g. one image).

**The rule.** Per metric, over the explanations with a finite mean:

1. fewer than two explanations: ``"fewer than two explanations scored"``;
2. *no spread*: every mean equals the first one (within ``rtol`` of the largest magnitude):
   ``"no spread: every explanation scores <value>"``;
3. *all intervals overlap*: no two explanations' intervals are disjoint. On a line, intervals
   overlap pairwise exactly when they share a point, i.e. when the largest lower bound is at most
   the smallest upper bound; an explanation without an interval (NaN bounds) separates from none
   and is left out of this test (if fewer than two have one, the metric cannot separate anything);
   ``"all 95% intervals overlap (each contains <low> to <high>)"``.

Otherwise the metric informs (``reason`` ``""``): at least two explanations are told apart.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"explanation": ["a", "b", "a", "b"], "metric": ["x", "x", "y", "y"],
    ...                   "mean": [0.0, 0.0, 0.1, 0.9], "ci_low": [0.0, 0.0, 0.0, 0.8],
    ...                   "ci_high": [0.0, 0.0, 0.2, 1.0]})
    >>> informative_metrics(t)[["metric", "informative", "reason"]].values.tolist()
    [['x', False, 'no spread: every explanation scores 0'], ['y', True, '']]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INFORMATIVE_COLUMNS: tuple[str, ...] = (
    "metric", "informative", "reason", "n_explanations", "spread",
)
"""The columns of :func:`informative_metrics`."""

RULE = ("a metric is folded away as uninformative when fewer than two explanations have a "
        "finite mean, when every mean is the same (no spread), or when no two explanations' "
        "95% intervals are disjoint (all intervals overlap: the largest lower bound is at most "
        "the smallest upper bound)")
"""The rule of :func:`informative_metrics` in words (the report and ``summary.json`` print it)."""


def _check(table: pd.DataFrame) -> None:
    need = {"explanation", "metric", "mean", "ci_low", "ci_high"}
    if not need <= set(table.columns):
        raise ValueError(f"a summary table needs the columns {sorted(need)} (one row per "
                         f"explanation and metric); got {list(table.columns)}")


def metric_informs(
    means: np.ndarray, lows: np.ndarray, highs: np.ndarray, *, rtol: float = 1e-9
) -> str:
    """Why one metric does not inform, or ``""`` when it does (the rule in the module doc).

    Args:
        means: per explanation, the mean (NaN: not scored).
        lows: per explanation, the lower bound of the interval (NaN: none).
        highs: per explanation, the upper bound.
        rtol: two means closer than ``rtol`` times the largest magnitude are equal.
    """
    means = np.asarray(means, dtype=np.float64)
    lows = np.asarray(lows, dtype=np.float64)
    highs = np.asarray(highs, dtype=np.float64)
    if not means.shape == lows.shape == highs.shape:
        raise ValueError(f"means, lows and highs must have one value per explanation; got "
                         f"shapes {means.shape}, {lows.shape}, {highs.shape}")
    ok = np.isfinite(means)
    if ok.sum() < 2:
        return "fewer than two explanations scored"
    m = means[ok]
    scale = max(1.0, float(np.abs(m).max()))
    if float(m.max() - m.min()) <= rtol * scale:
        return f"no spread: every explanation scores {float(m[0]):.3g}"
    has = ok & np.isfinite(lows) & np.isfinite(highs)
    if has.sum() < 2:
        return "fewer than two explanations have an interval"
    top_low, bottom_high = float(lows[has].max()), float(highs[has].min())
    if top_low <= bottom_high:
        return f"all 95% intervals overlap (each contains {top_low:.3g} to {bottom_high:.3g})"
    return ""


def informative_metrics(table: pd.DataFrame, *, rtol: float = 1e-9) -> pd.DataFrame:
    """Per metric of a summary table, whether it informs and, if not, why.

    Args:
        table: one row per (explanation, metric): ``explanation, metric, mean, ci_low, ci_high``.
        rtol: see :func:`metric_informs`.

    Returns:
        Columns :data:`INFORMATIVE_COLUMNS`, one row per metric, sorted by metric;
        ``spread`` is the largest minus the smallest finite mean (NaN with fewer than two).

    Raises:
        ValueError: a column is missing (naming it).
    """
    _check(table)
    rows = []
    for metric, grp in table.groupby("metric", sort=True):
        means = grp["mean"].to_numpy(np.float64)
        finite = means[np.isfinite(means)]
        reason = metric_informs(means, grp["ci_low"].to_numpy(np.float64),
                                grp["ci_high"].to_numpy(np.float64), rtol=rtol)
        rows.append({"metric": str(metric), "informative": reason == "", "reason": reason,
                     "n_explanations": int(finite.size),
                     "spread": float(np.ptp(finite)) if finite.size >= 2 else float("nan")})
    return pd.DataFrame(rows, columns=list(INFORMATIVE_COLUMNS))
