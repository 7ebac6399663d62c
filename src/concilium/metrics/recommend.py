"""Which explanation to trust: a ranked short list of explanations from their metric families,
with the Pareto front and how sure each comparison is.

The input is a summary table, one row per (explanation, metric): ``explanation, metric, family,
higher_is_better, mean, ci_low, ci_high`` (the 95% interval of the mean over the images), e.g.
:func:`concilium.metrics.tables.summarise` or the report's per-explanation statistics.

**The rule** (:data:`RULE`, printed by the report and written to ``summary.json``):

1. *Metrics.* Only metrics that inform (:mod:`concilium.metrics.informative`) and have a
   direction and a family among ``families`` count.
2. *Family scores.* Each metric's means are rescaled to [0, 1] over the explanations (0 the
   worst mean, 1 the best, the direction respected) and its interval bounds with the same map; an
   explanation's family score is the mean of its rescaled means over the family's metrics it
   was scored on, its family interval the mean of its rescaled bounds (none when one of those
   metrics has no interval). Averaging the bounds is conservative: the
   half-width of a mean of estimates is at most the mean of their half-widths (for normal-theory
   intervals), whatever their correlation.
3. *Surely better.* A is surely better than B in a family when A's family interval lies wholly
   above B's (the intervals are disjoint).
4. *Dominance.* A dominates B when A is scored in every family B is, A's family score is at
   least B's in each of them, and A is surely better in at least one. This relation has no cycle,
   so the *Pareto front* (the explanations no other dominates) is never empty.
5. *Ranking.* Front first; then by sure wins minus sure losses (over every other explanation and
   family); then by the mean family score; then by name.
6. *How sure.* Two front explanations whose family intervals overlap in every family cannot be
   told apart on this run; an explanation that another beats on every family's score without a
   disjoint interval is "behind on the means only" (kept on the front).

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"explanation": ["a", "b"], "metric": "iou", "family": "localisation",
    ...                   "higher_is_better": True, "mean": [0.8, 0.2], "ci_low": [0.7, 0.1],
    ...                   "ci_high": [0.9, 0.3]})
    >>> r = recommend(t)
    >>> r.ranking[["explanation", "status", "dominated_by"]].values.tolist()
    [['a', 'front', ''], ['b', 'dominated', 'a']]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from concilium.metrics.informative import informative_metrics
from concilium.vocabulary import FAMILIES

RULE = ("Only metrics that separate the explanations count (see the folded metrics). Each "
        "metric's means are rescaled to 0 (worst) .. 1 (best) over the explanations, with its "
        "direction; a family's score is the mean over its metrics, and its interval the mean of "
        "the rescaled 95% interval bounds (conservative). A is surely better than B in a family "
        "when their family intervals are disjoint with A's above. A dominates B when A scores at "
        "least as well in every family B is scored in and surely better in at least one; the "
        "Pareto front is every explanation no other dominates. Ranking: front first, then sure "
        "wins minus sure losses over all explanations and families, then the mean family "
        "score. Front explanations whose intervals overlap in every family cannot be told apart.")
"""The rule of :func:`recommend` in words."""

RANKING_COLUMNS: tuple[str, ...] = (
    "rank", "explanation", "status", "dominated_by", "behind_on_means", "tied_with",
    "sure_wins", "sure_losses", "mean_score", "best_in",
)
"""The leading columns of :attr:`Recommendation.ranking` (then ``<family>``, ``<family>_low``,
``<family>_high`` per family used)."""

TABLE_COLUMNS: tuple[str, ...] = (
    "explanation", "metric", "family", "higher_is_better", "mean", "ci_low", "ci_high",
)


@dataclass
class Recommendation:
    """The result of :func:`recommend`.

    Attributes:
        ranking: one row per explanation, best first (columns :data:`RANKING_COLUMNS`, then the
            family score and interval per family).
        scores: ``explanation, family, score, low, high, n_metrics`` (the family intervals).
        metrics: which metrics count (:func:`~concilium.metrics.informative.informative_metrics`
            plus ``family``, ``direction_known`` and ``used``).
        families: the families with at least one metric used, in report order.
        rule: the rule in words (:data:`RULE`).
    """

    ranking: pd.DataFrame
    scores: pd.DataFrame
    metrics: pd.DataFrame
    families: list[str]
    rule: str = RULE

    @property
    def front(self) -> list[str]:
        """The Pareto front, in ranking order."""
        return self.ranking.loc[self.ranking["status"] == "front", "explanation"].tolist()

    def as_dict(self, top: int | None = None) -> dict[str, object]:
        """The rule and the ranking (the first ``top`` rows) as plain values for JSON (NaN as
        ``None``)."""
        rows = self.ranking if top is None else self.ranking.head(top)
        return {
            "rule": self.rule,
            "families": list(self.families),
            "front": self.front,
            "ranking": [{k: _plain(v) for k, v in r.items()} for r in rows.to_dict("records")],
            "uninformative_metrics": {
                str(r.metric): str(r.reason) for r in self.metrics.itertuples()
                if not r.informative},
        }


def _plain(v: object) -> object:
    if isinstance(v, float | np.floating):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _check(table: pd.DataFrame) -> None:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"a summary table for recommend() needs the columns {list(TABLE_COLUMNS)}"
                         f"; missing {missing}")
    dup = table.duplicated(["explanation", "metric"])
    if dup.any():
        first = table.loc[dup, ["explanation", "metric"]].iloc[0].tolist()
        raise ValueError(f"one row per (explanation, metric) expected; {first} appears twice")


def _mean_or_nan(values: pd.Series) -> float:
    """The mean, NaN when any value is NaN (a metric without an interval leaves the family
    without one)."""
    return float(values.mean(skipna=False))


def family_intervals(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Family score and interval per explanation over ``metrics`` (rule steps 2 of the module).

    Returns:
        ``explanation, family, score, low, high, n_metrics``.
    """
    parts = []
    for metric in metrics:
        g = table[table["metric"] == metric]
        means = g["mean"].to_numpy(np.float64)
        lo, hi = np.nanmin(means), np.nanmax(means)
        span = hi - lo
        hib = bool(g["higher_is_better"].iloc[0])

        def scale(v: np.ndarray, lo: float = lo, span: float = span, hib: bool = hib) -> np.ndarray:
            r = (np.asarray(v, np.float64) - lo) / span
            return r if hib else 1.0 - r

        low, high = scale(g["ci_low"].to_numpy()), scale(g["ci_high"].to_numpy())
        parts.append(pd.DataFrame({
            "explanation": g["explanation"].to_numpy(), "family": str(g["family"].iloc[0]),
            "score": scale(means), "low": np.fmin(low, high), "high": np.fmax(low, high)}))
    if not parts:
        return pd.DataFrame(columns=["explanation", "family", "score", "low", "high",
                                     "n_metrics"])
    long = pd.concat(parts, ignore_index=True).dropna(subset=["score"])
    return (long.groupby(["explanation", "family"], sort=False)
            .agg(score=("score", "mean"), low=("low", _mean_or_nan),
                 high=("high", _mean_or_nan), n_metrics=("score", "size"))
            .reset_index())


def recommend(
    table: pd.DataFrame, *, families: Sequence[str] = FAMILIES, rtol: float = 1e-9
) -> Recommendation:
    """Rank the explanations of a summary table (the rule in the module doc).

    Args:
        table: one row per (explanation, metric), columns :data:`TABLE_COLUMNS`.
        families: the families that count, in report order.
        rtol: equal means within this relative tolerance are no spread.

    Returns:
        A :class:`Recommendation` (an empty ranking when no metric informs).

    Raises:
        ValueError: a column is missing, or an (explanation, metric) appears twice.
    """
    _check(table)
    info = informative_metrics(table, rtol=rtol)
    first = table.drop_duplicates("metric").set_index("metric")
    info["family"] = info["metric"].map(first["family"]).astype(object)
    hib = info["metric"].map(first["higher_is_better"])
    info["direction_known"] = hib.map(lambda h: h is not None and not (
        isinstance(h, float) and math.isnan(h)))
    info["used"] = info["informative"] & info["direction_known"] & info["family"].isin(families)
    used = info.loc[info["used"], "metric"].tolist()
    scores = family_intervals(table[table["metric"].isin(used)], used)
    fams = [f for f in families if f in set(scores["family"])]
    names = list(dict.fromkeys(table["explanation"]))
    if not fams:
        return Recommendation(pd.DataFrame(columns=list(RANKING_COLUMNS)), scores, info, [])
    grid = {k: scores.pivot(index="explanation", columns="family", values=k)
            .reindex(index=names, columns=fams) for k in ("score", "low", "high")}
    s, lo, hi = (grid[k].to_numpy(np.float64) for k in ("score", "low", "high"))
    has = np.isfinite(s)
    # sure[a, b, f]: a's family interval lies wholly above b's
    sure = lo[:, None, :] > hi[None, :, :]
    sure &= has[:, None, :] & has[None, :, :]
    covers = np.all(has[:, None, :] | ~has[None, :, :], axis=-1)
    both = has[:, None, :] & has[None, :, :]
    geq = np.all(~both | (s[:, None, :] >= s[None, :, :]), axis=-1)
    dominates = covers & geq & sure.any(axis=-1)
    strictly = np.any(both & (s[:, None, :] > s[None, :, :]), axis=-1)
    behind = covers & geq & strictly & ~dominates
    np.fill_diagonal(dominates, False)
    np.fill_diagonal(behind, False)
    wins, losses = sure.sum(axis=(1, 2)), sure.sum(axis=(0, 2))
    apart = sure.any(axis=-1) | sure.any(axis=-1).T
    front = ~dominates.any(axis=0)
    mean_score = np.nanmean(np.where(has, s, np.nan), axis=1) if has.any() else np.full(
        len(names), np.nan)
    best_family = {f: names[int(np.nanargmax(s[:, j]))] for j, f in enumerate(fams)
                   if np.isfinite(s[:, j]).any()}
    rows = []
    for i, name in enumerate(names):
        tied = [names[j] for j in range(len(names)) if j != i and front[i] and front[j]
                and not apart[i, j]]
        row = {
            "explanation": name, "status": "front" if front[i] else "dominated",
            "dominated_by": "; ".join(names[j] for j in np.flatnonzero(dominates[:, i])),
            "behind_on_means": "; ".join(names[j] for j in np.flatnonzero(behind[:, i])),
            "tied_with": "; ".join(tied),
            "sure_wins": int(wins[i]), "sure_losses": int(losses[i]),
            "mean_score": float(mean_score[i]),
            "best_in": ", ".join(f for f, who in best_family.items() if who == name),
        }
        for j, f in enumerate(fams):
            row[f], row[f"{f}_low"], row[f"{f}_high"] = s[i, j], lo[i, j], hi[i, j]
        rows.append(row)
    ranking = pd.DataFrame(rows)
    ranking["_front"] = ranking["status"] != "front"
    ranking["_net"] = -(ranking["sure_wins"] - ranking["sure_losses"])
    ranking["_mean"] = -ranking["mean_score"].fillna(-np.inf)
    ranking = (ranking.sort_values(["_front", "_net", "_mean", "explanation"], kind="stable")
               .drop(columns=["_front", "_net", "_mean"]).reset_index(drop=True))
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    return Recommendation(ranking, scores, info, fams)
