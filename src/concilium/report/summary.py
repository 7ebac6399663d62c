"""Numbers behind the report, computed from the tidy results tables: per-explanation means with
95% confidence intervals, the best explanation per metric, family scores for the radar charts,
the paper-style Ens-Avg / Exp-Avg / Ens-Logit table, and the headline findings (the claims of
the ensembling issue, each with its number and whether it held).

Everything here is a pure function of pandas DataFrames with the documented column names, so it
is shared by the HTML report, ``RUN/summary.json`` and ``concilium demo``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from concilium.metrics.tables import exp_avg_per_sample, mean_ci, paper_table
from concilium.vocabulary import EXP_AVG, FAMILIES, is_member

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
    metrics: pd.DataFrame, *, members: Literal["pooled", "each", "both"] = "pooled"
) -> pd.DataFrame:
    """Mean and 95% CI per explanation and metric.

    Args:
        metrics: the tidy metrics table (``sample, label, source, method, metric, value``).
        members: ``"pooled"`` replaces the member rows of a method by one row, source
            ``"exp-avg"``, whose per-sample value is Exp-Avg (:mod:`concilium.metrics.tables`:
            NaN for an image where any member's score is NaN); ``"each"`` keeps one row per member; ``"both"`` both.

    Returns:
        Columns ``explanation, source, method, metric, mean, ci_low, ci_high, n``.
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
    for (source, method, metric), group in pd.concat(frames, ignore_index=True).groupby(
        ["source", "method", "metric"], sort=False
    ):
        mean, low, high, n = mean_ci(group["value"].to_numpy())
        rows.append(
            {
                "explanation": explanation_label(source, method),
                "source": source, "method": method, "metric": metric,
                "mean": mean, "ci_low": low, "ci_high": high, "n": n,
            }
        )
    out = pd.DataFrame(
        rows, columns=["explanation", "source", "method", "metric", "mean", "ci_low", "ci_high", "n"]
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
        index = explanation, columns = the five families.
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


@dataclass
class Finding:
    """One headline claim, with its number and whether it held (``None``: not measured)."""

    claim: str
    detail: str
    held: bool | None

    def as_dict(self) -> dict:
        return asdict(self)


def findings(
    metrics: pd.DataFrame | None,
    meta: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    *,
    card: Mapping[str, object] | None = None,
) -> list[Finding]:
    """The claims of the ensembling issue, checked on this run's tables.

    1. Ens-Avg above Exp-Avg for every method (mask correlation, the paper's metric).
    2. The consensus aligns with the masks better than the median member (AUC, average precision,
       mask correlation; from the committee's ``committee_metrics`` table when there is one),
       and the consensus score correlates positively with accuracy.
    3. The CNN ensembler's E* beats the best single method on relevance mass, IoU and pointing
       game, and is at least as faithful (deletion) as the median method.
    4. The rare class and the watermark class are flagged by the audits.

    A claim whose inputs are missing is reported with ``held=None`` and says what is missing.
    """
    direction = _directions(meta)
    out: list[Finding] = []
    out.append(_claim_averaging(metrics, direction))
    committee = tables.get("committee_metrics")
    out.append(_claim_consensus_alignment(committee if committee is not None else metrics,
                                          direction))
    out.append(_claim_consensus_accuracy(tables.get("consensus")))
    out.append(_claim_cnn(metrics, direction))
    out.extend(_claim_audits(tables, card or {}))
    return out


def _claim_averaging(metrics: pd.DataFrame | None, direction: Mapping[str, bool]) -> Finding:
    claim = "Ens-Avg beats Exp-Avg (mean over members) for every method"
    if metrics is None:
        return Finding(claim, "no metrics table", None)
    table = paper_table(metrics).dropna(subset=["ens_avg", "exp_avg"])
    metric = next((m for m in ("mask_correlation", "relevance_mass") if m in set(table["metric"])),
                  None)
    if metric is None:
        return Finding(claim, "no Ens-Avg rows with mask_correlation or relevance_mass", None)
    t = table[table["metric"] == metric]
    sign = 1.0 if direction.get(metric, True) else -1.0
    gains = {str(r.method): sign * (r.ens_avg - r.exp_avg) for r in t.itertuples()}
    detail = f"{metric}: " + ", ".join(f"{m} {g:+.3f}" for m, g in gains.items())
    return Finding(claim + f" ({metric})", detail, all(g > 0 for g in gains.values()))


def _claim_consensus_alignment(
    metrics: pd.DataFrame | None, direction: Mapping[str, bool]
) -> Finding:
    claim = "The consensus aligns with the masks better than the median member"
    if metrics is None or not (metrics["source"] == "consensus").any():
        return Finding(claim, "no consensus rows in the metrics table", None)
    parts, held = [], []
    for metric in ("auc", "average_precision", "mask_correlation"):
        sel = metrics[metrics["metric"] == metric]
        for method in sorted(set(sel[sel["source"] == "consensus"]["method"])):
            s = sel[sel["method"] == method]
            cons = _mean(s[s["source"] == "consensus"]["value"])
            members = s[s["source"].map(is_member)].groupby("source")["value"].mean()
            if members.empty or not np.isfinite(cons):
                continue
            median = float(members.median())
            ok = cons > median if direction.get(metric, True) else cons < median
            held.append(bool(ok))
            parts.append(f"{metric}/{method} {cons:.3f} vs {median:.3f}")
    if not held:
        return Finding(claim, "no member rows to compare the consensus with", None)
    return Finding(claim, "; ".join(parts), all(held))


def _claim_consensus_accuracy(consensus: pd.DataFrame | None) -> Finding:
    claim = "Consensus score correlates positively with member accuracy"
    pair = _consensus_columns(consensus)
    if pair is None:
        return Finding(claim, "no consensus table with consensus score and accuracy", None)
    x, y = pair
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Finding(claim, f"too few or constant values ({len(x)} members)", None)
    r = float(sps.pearsonr(x, y)[0])
    rho = float(sps.spearmanr(x, y)[0])
    return Finding(claim, f"Pearson r = {r:+.3f}, Spearman rho = {rho:+.3f} over {len(x)} members",
                   r > 0)


def consensus_points(consensus: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per member: consensus score and accuracy (averaged over methods/similarities if several
    rows per member), or ``None`` if the table lacks those columns."""
    if consensus is None or consensus.empty:
        return None
    score = _first_column(consensus, ("consensus_score", "score"))
    acc = _first_column(consensus, ("accuracy", "val_accuracy", "test_accuracy"))
    member = _first_column(consensus, ("member", "source", "member_id"))
    if score is None or acc is None or member is None:
        return None
    return (
        consensus.groupby(member)[[score, acc]].mean()
        .rename(columns={score: "consensus_score", acc: "accuracy"})
        .reset_index().rename(columns={member: "member"})
    )


def _consensus_columns(consensus: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray] | None:
    points = consensus_points(consensus)
    if points is None:
        return None
    p = points.dropna()
    return p["consensus_score"].to_numpy(float), p["accuracy"].to_numpy(float)


def _claim_cnn(metrics: pd.DataFrame | None, direction: Mapping[str, bool]) -> Finding:
    claim = "The CNN ensembler's E* beats the best single method (relevance mass, IoU, pointing game)"
    if metrics is None or not (metrics["source"] == "cnn").any():
        return Finding(claim, "no cnn rows in the metrics table", None)
    members = metrics[metrics["source"].map(is_member)]
    parts, held = [], []
    for metric in ("relevance_mass", "iou", "pointing_game", "deletion"):
        cnn = _mean(metrics[(metrics["source"] == "cnn") & (metrics["metric"] == metric)]["value"])
        per_method = members[members["metric"] == metric].groupby("method")["value"].mean()
        if per_method.empty or not np.isfinite(cnn):
            continue
        hib = direction.get(metric, metric != "deletion")
        if metric == "deletion":
            ref, what = float(per_method.median()), "median method"
        else:
            ref = float(per_method.max() if hib else per_method.min())
            what = f"best method {per_method.idxmax() if hib else per_method.idxmin()}"
        ok = cnn >= ref if hib else cnn <= ref
        held.append(bool(ok))
        parts.append(f"{metric} {cnn:.3f} vs {what} {ref:.3f}")
    if not held:
        return Finding(claim, "no member rows for relevance_mass, iou or pointing_game", None)
    return Finding(claim + ", and is at least as faithful as the median method",
                   "; ".join(parts), all(held))


def _claim_audits(tables: Mapping[str, pd.DataFrame], card: Mapping[str, object]) -> list[Finding]:
    out = []
    for kind, table_name, label in (
        ("rare", "per_class", "The rare class is flagged by the per-class quality audit"),
        ("watermark", "bias", "The watermark class is flagged by the bias audit"),
    ):
        target = _special_class(card, kind)
        table = tables.get(table_name)
        if target is None:
            out.append(Finding(label, f"the dataset has no {kind} class", None))
            continue
        if table is None or table.empty:
            out.append(Finding(label, f"no {table_name} table", None))
            continue
        cls = _first_column(table, ("class_name", "class", "label"))
        flag = _first_column(table, ("flagged", "flag"))
        if cls is None or flag is None:
            out.append(Finding(label, f"the {table_name} table has no class/flagged columns", None))
            continue
        flagged = sorted({str(c) for c in table.loc[table[flag].astype(bool), cls]})
        held = str(target) in flagged
        out.append(Finding(label, f"{kind} class {target!s}; flagged: {flagged or 'none'}", held))
    return out


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


def _mean(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _directions(meta: pd.DataFrame) -> dict[str, bool]:
    if meta is None or meta.empty:
        return {}
    return {
        str(m): bool(h) for m, h in zip(meta["metric"], meta["higher_is_better"], strict=True)
        if h is not None and not (isinstance(h, float) and math.isnan(h))
    }
