"""Numbers behind the report, computed from the tidy results tables: per-explanation means with
95% confidence intervals, the best explanation per metric, family scores for the radar charts,
the paper-style Ens-Avg / Exp-Avg / Ens-Logit table, and the headline findings (the claims of
the ensembling issue, decided by :mod:`concilium.metrics.claims`).

Everything here is a pure function of pandas DataFrames with the documented column names, so it
is shared by the HTML report, ``RUN/summary.json`` and ``concilium demo``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from concilium.metrics.claims import (
    Finding,
    averaging_claim,
    averaging_deciding_claim,
    cnn_claim,
    consensus_accuracy_claim,
    consensus_alignment_claim,
    consensus_localisation_claim,
    rare_class_claim,
    watermark_claim,
)
from concilium.metrics.tables import exp_avg_per_sample, mean_ci
from concilium.report.options import MembersView
from concilium.vocabulary import EXP_AVG, FAMILIES, IN_SAMPLE_MARK, is_member

METRIC_COLUMNS = ("sample", "label", "source", "method", "metric", "value")


def explanation_label(source: str, method: str) -> str:
    """How an explanation is named in the report: ``"<source> · <method>"``; a long
    multi-method name (``a+b+c+...``, the method ensembles) is shown as ``"<k> methods"``."""
    if "+" in method and len(method) > 28:
        method = f"{method.count('+') + 1} methods"
    return f"{source} · {method}"


def check_metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Check the metrics table has the documented columns.

    Raises:
        ValueError: naming the missing columns.
    """
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"the metrics table lacks columns {missing}; expected {list(METRIC_COLUMNS)} as "
            "written by `concilium evaluate` (RUN/results/metrics.parquet)"
        )
    return metrics


def explanation_stats(
    metrics: pd.DataFrame, *, members: MembersView = "pooled"
) -> pd.DataFrame:
    """Mean and 95% CI per explanation and metric.

    Args:
        metrics: the tidy metrics table (``sample, label, source, method, metric, value``).
        members: ``"pooled"`` replaces the member rows of a method by one row, source
            ``"exp-avg"``, whose per-sample value is Exp-Avg (:mod:`concilium.metrics.tables`:
            NaN for an image where any member's score is NaN); ``"each"`` keeps one row per member; ``"both"`` both.

    Returns:
        Columns ``explanation, source, method, metric, mean, ci_low, ci_high, n, in_sample``;
        an explanation scored on rows its ensembler was fitted on (the metrics table's
        ``in_sample``) is named with :data:`~concilium.vocabulary.IN_SAMPLE_MARK`.
    """
    check_metrics_table(metrics)
    frames = []
    member_rows = metrics["source"].map(is_member)
    if members in ("each", "both"):
        frames.append(metrics)
    else:
        frames.append(metrics[~member_rows])
    if members in ("pooled", "both") and member_rows.any():
        pooled = exp_avg_per_sample(metrics).drop(columns="n_members")
        pooled["source"] = EXP_AVG
        frames.append(pooled)
    rows = []
    fitted_pairs = set()  # one label per explanation, whichever of its metrics had fit rows
    if "in_sample" in metrics.columns:
        flagged = metrics[metrics["in_sample"].fillna(False).astype(bool)]
        fitted_pairs = set(zip(flagged["source"], flagged["method"], strict=True))
    for (source, method, metric), group in pd.concat(frames, ignore_index=True).groupby(
        ["source", "method", "metric"], sort=False
    ):
        mean, low, high, n = mean_ci(group["value"].to_numpy())
        fitted = (source, method) in fitted_pairs
        rows.append(
            {
                "explanation": explanation_label(source, method) + (IN_SAMPLE_MARK if fitted else ""),
                "source": source, "method": method, "metric": metric,
                "mean": mean, "ci_low": low, "ci_high": high, "n": n, "in_sample": fitted,
            }
        )
    out = pd.DataFrame(
        rows, columns=["explanation", "source", "method", "metric", "mean", "ci_low", "ci_high", "n",
                       "in_sample"]
    )
    order = {s: (0 if s == EXP_AVG else 1 if not is_member(s) else 2) for s in out["source"]}
    return out.sort_values(
        ["method", "source"], key=lambda col: col.map(order) if col.name == "source" else col
    ).reset_index(drop=True)


def best_per_metric(stats: pd.DataFrame, meta: pd.DataFrame) -> dict[str, str]:
    """The explanation with the best mean per metric, direction from ``higher_is_better``.

    Metrics without a known direction are left out.
    """
    direction = _directions(meta)
    best: dict[str, str] = {}
    for metric, group in stats.groupby("metric"):
        hib = direction.get(metric)
        g = group.dropna(subset=["mean"])
        if hib is None or g.empty:
            continue
        row = g.loc[g["mean"].idxmax() if hib else g["mean"].idxmin()]
        best[str(metric)] = str(row["explanation"])
    return best


def family_scores(stats: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Scores in [0, 1] per explanation and metric family (1 = best of the explanations shown).

    Each metric's means are min-max rescaled over the explanations and flipped when lower is
    better; a family's score is the mean over its metrics. A metric whose means are all equal
    scores 0.5 for everyone; a family with no metric is NaN.

    Returns:
        index = explanation, columns = the families (:data:`~concilium.vocabulary.FAMILIES`).
    """
    direction = _directions(meta)
    category = dict(zip(meta["metric"], meta["category"], strict=True)) if len(meta) else {}
    table = stats.pivot_table(index="explanation", columns="metric", values="mean", sort=False)
    scaled = {}
    for metric in table.columns:
        hib = direction.get(metric)
        if hib is None or category.get(metric) not in FAMILIES:
            continue
        col = table[metric].astype(float)
        lo, hi = col.min(), col.max()
        if not np.isfinite(lo) or not np.isfinite(hi):
            continue
        s = (col - lo) / (hi - lo) if hi > lo else col * 0 + 0.5
        scaled[metric] = s if hib else 1 - s
    out = pd.DataFrame(index=table.index, columns=list(FAMILIES), dtype=float)
    for family in FAMILIES:
        cols = [m for m in scaled if category.get(m) == family]
        if cols:
            out[family] = pd.concat([scaled[m] for m in cols], axis=1).mean(axis=1)
    return out


def findings(
    metrics: pd.DataFrame | None,
    tables: Mapping[str, pd.DataFrame],
    *,
    card: Mapping[str, object] | None = None,
    seed: int = 0,
) -> list[Finding]:
    """The claims of the ensembling issue, decided on this run's tables by
    :mod:`concilium.metrics.claims` (the one definition of each verdict rule).

    1. Ens-Avg beats Exp-Avg for every method (mask correlation, the paper's metric; algebraic:
       it cannot fail, so it is shown with what algebra expects), and the deciding form: Ens-Avg
       beats the best member, and Exp-Avg on IoU and centre-of-mass distance.
    2. The consensus aligns with the masks better than the median member (from the committee's
       ``committee_metrics`` table when there is one), and the consensus score correlates
       positively with accuracy.
    3. The CNN ensembler's E* beats the best single method on relevance mass, IoU and pointing
       game, and the median method on deletion.
    4. The rare class and the watermark class are flagged by the audits.

    A claim whose inputs are missing is ``"not measured"`` and says what is missing. Rows marked
    ``in_sample`` (an ensembler's E* of its own fit rows) are left out of every claim.

    Args:
        metrics: the tidy metrics table (``None``: not evaluated).
        tables: the run's other results tables by logical name.
        card: the dataset card (names the rare and watermark classes).
        seed: seeds each claim's bootstrap (a fresh generator per claim).
    """
    card = card or {}
    committee = tables.get("committee_metrics")
    if metrics is not None and "in_sample" in metrics.columns:
        # a verdict never rests on E* scored on the rows its ensembler was fitted on
        metrics = metrics[~metrics["in_sample"].fillna(False).astype(bool)]
    return [
        averaging_claim(metrics, rng=np.random.default_rng(seed),
                        expectation=tables.get("averaging_expectation")),
        averaging_deciding_claim(metrics, rng=np.random.default_rng(seed)),
        consensus_alignment_claim(committee if committee is not None else metrics,
                                  rng=np.random.default_rng(seed)),
        consensus_accuracy_claim(consensus_points(tables.get("consensus"))),
        consensus_localisation_claim(consensus_points(tables.get("consensus"))),
        cnn_claim(metrics, rng=np.random.default_rng(seed)),
        rare_class_claim(tables.get("per_class"), target=_special_class(card, "rare")),
        watermark_claim(tables.get("bias"), target=_special_class(card, "watermark"),
                        rng=np.random.default_rng(seed)),
    ]


def consensus_points(consensus: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per member: ``consensus_score`` and, where the table has them, ``accuracy`` and the
    member's own ``localisation`` (each averaged over the member's rows when there are several,
    e.g. one per method), or ``None`` if the table lacks a member, a score, or both of the
    others."""
    if consensus is None or consensus.empty:
        return None
    member = _first_column(consensus, ("member", "source", "member_id"))
    columns = {name: _first_column(consensus, names) for name, names in (
        ("consensus_score", ("consensus_score", "score")),
        ("accuracy", ("accuracy", "val_accuracy", "test_accuracy")),
        ("localisation", ("localisation",)))}
    found = {name: col for name, col in columns.items() if col is not None}
    if member is None or "consensus_score" not in found or len(found) < 2:
        return None
    return (
        consensus.groupby(member)[list(found.values())].mean()
        .rename(columns={col: name for name, col in found.items()})
        .reset_index().rename(columns={member: "member"})
    )


def _special_class(card: Mapping[str, object], kind: str) -> str | None:
    for key in (f"{kind}_class_name", f"{kind}_class"):
        value = card.get(key)
        if value is not None and value != -1:
            names = card.get("class_names")
            if isinstance(value, int) and isinstance(names, list) and 0 <= value < len(names):
                return str(names[value])
            return str(value)
    return None


def _first_column(table: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in table.columns), None)


def _directions(meta: pd.DataFrame) -> dict[str, bool]:
    if meta is None or meta.empty:
        return {}
    return {
        str(m): bool(h) for m, h in zip(meta["metric"], meta["higher_is_better"], strict=True)
        if h is not None and not (isinstance(h, float) and math.isnan(h))
    }


def metric_ranks(
    stats: pd.DataFrame, meta: pd.DataFrame, metrics: list[str] | None = None
) -> pd.DataFrame:
    """Per metric, each explanation's rank by its mean (1 = best, direction from
    ``higher_is_better``; ties share the smallest rank; NaN where not scored).

    Args:
        stats: :func:`explanation_stats`.
        meta: ``metric, higher_is_better``.
        metrics: the columns, in order (default: every metric with a known direction).

    Returns:
        index = explanation (in ``stats`` order), columns = metrics.
    """
    direction = _directions(meta)
    metrics = [m for m in (metrics if metrics is not None else sorted(stats["metric"].unique()))
               if m in direction]
    means = stats.pivot_table(index="explanation", columns="metric", values="mean", sort=False)
    out = pd.DataFrame(index=list(dict.fromkeys(stats["explanation"])), columns=metrics,
                       dtype=float)
    for m in metrics:
        if m in means.columns:
            col = means[m].reindex(out.index)
            out[m] = col.rank(ascending=not direction[m], method="min")
    return out
