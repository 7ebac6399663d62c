"""Statistics over a tidy metrics table, each defined once: mean and interval, Exp-Avg, the
paper's Ens-Avg vs Exp-Avg vs Ens-Logit table, and the per-explanation summary.

A metrics table has one row per (sample, source, method, metric) with a ``value`` column, as
written to ``RUN/results/metrics.parquet``.

**The Exp-Avg rule** (Ahamed et al.'s "expected explanation quality" of one member): for a
(method, metric), the members are the member sources (``m0``, ``m1``, ...) scored on it. Per image,
Exp-Avg is the mean of the members' scores, and NaN when any member's score is NaN or missing
(never a partial mean over the members that happened to score). Over images, NaN images are left
out. Every comparison of sources is *paired*: it uses only the images on which every compared
source has a finite value.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"sample": ["a", "a", "b", "b"], "source": ["m0", "m1", "m0", "m1"],
    ...                   "method": "saliency", "metric": "auc", "value": [1.0, 3.0, 2.0, None]})
    >>> exp_avg_per_sample(t)["value"].tolist()
    [2.0, nan]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from concilium.metrics.registry import METRICS
from concilium.vocabulary import EXP_AVG, is_member

SUMMARY_COLUMNS: tuple[str, ...] = (
    "source", "method", "metric", "category", "higher_is_better", "mean", "ci_low", "ci_high",
    "n", "n_nan", "best", "in_sample",
)
PAPER_COLUMNS: tuple[str, ...] = (
    "method", "metric", "ens_avg", "exp_avg", "ens_logit", "member_min", "member_max",
    "n_members", "n_images", "higher_is_better", "gain", "ens_avg_better",
)


def mean_ci(values: np.ndarray, *, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of the finite values: ``(mean, low, high, n)``.

    Fewer than two finite values give NaN bounds (an interval cannot be estimated from one
    value); none gives NaN for all three.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def higher_is_better_of(metric: str) -> bool:
    """The direction of ``metric`` from the registry (``ValueError`` for an unknown name)."""
    return bool(METRICS.get(metric).higher_is_better)


def _check(table: pd.DataFrame) -> None:
    need = {"sample", "source", "method", "metric", "value"}
    if not need <= set(table.columns):
        raise ValueError(f"a metrics table needs the columns {sorted(need)}; got "
                         f"{list(table.columns)}")


def exp_avg_per_sample(table: pd.DataFrame) -> pd.DataFrame:
    """Exp-Avg per image (the rule in the module docstring).

    Returns:
        Columns ``method, metric, sample, value, n_members`` (plus ``label`` when the table has
        it); one row per (method, metric, sample) scored for some member.
    """
    _check(table)
    members = table[table["source"].astype(str).map(is_member)]
    cols = ["method", "metric", "sample", "value", "n_members"]
    if "label" in table.columns:
        cols.insert(3, "label")
    if members.empty:
        return pd.DataFrame(columns=cols)
    frames = []
    for (method, metric), grp in members.groupby(["method", "metric"], sort=True):
        wide = grp.pivot_table(index="sample", columns="source", values="value",
                               aggfunc="mean", dropna=False)
        k = int(grp["source"].nunique())
        complete = wide.notna().sum(axis=1) == k
        value = wide.mean(axis=1).where(complete & np.isfinite(wide).all(axis=1))
        out = pd.DataFrame({"method": method, "metric": metric, "sample": wide.index,
                            "value": value.to_numpy(dtype=np.float64), "n_members": k})
        if "label" in table.columns:
            labels = grp.drop_duplicates("sample").set_index("sample")["label"]
            out["label"] = labels.reindex(wide.index).to_numpy()
        frames.append(out)
    return pd.concat(frames, ignore_index=True)[cols]


def with_exp_avg(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus Exp-Avg rows (source :data:`~concilium.vocabulary.EXP_AVG`) for every
    (method, metric) scored on two or more members."""
    exp = exp_avg_per_sample(table)
    exp = exp[exp["n_members"] >= 2].drop(columns="n_members").assign(source=EXP_AVG)
    if exp.empty:
        return table
    return pd.concat([table, exp], ignore_index=True)


def summarise(table: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Mean and confidence interval per (source, method, metric), Exp-Avg rows included.

    ``best`` marks, per metric, the row with the best mean in the metric's direction;
    ``in_sample``, the rows whose mean includes samples the source's ensembler was fitted on
    (the table's ``in_sample`` column, when it has one).

    Returns:
        Columns :data:`SUMMARY_COLUMNS`.
    """
    if table.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    rows = []
    full = with_exp_avg(table)
    for (source, method, metric), grp in full.groupby(["source", "method", "metric"], sort=True):
        values = grp["value"].to_numpy(dtype=np.float64)
        mean, low, high, n = mean_ci(values, level=level)
        spec = METRICS.get(metric)
        rows.append({"source": source, "method": method, "metric": metric,
                     "category": spec.category, "higher_is_better": spec.higher_is_better,
                     "mean": mean, "ci_low": low, "ci_high": high, "n": n,
                     "n_nan": int(np.sum(~np.isfinite(values))), "best": False,
                     "in_sample": bool(grp["in_sample"].fillna(False).astype(bool).any())
                     if "in_sample" in grp else False})
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for metric, grp in out.groupby("metric"):
        means = grp["mean"]
        if means.notna().any():
            best = means.idxmax() if higher_is_better_of(metric) else means.idxmin()
            out.loc[best, "best"] = True
    return out


def paper_table(
    table: pd.DataFrame, *, ens_source: str = "ens-avg", logit_source: str | None = "ens-logit"
) -> pd.DataFrame:
    """The ensembles paper's table: per method and metric, metric(Ens-Avg), Exp-Avg and
    metric(Ens-Logit), paired on the images where Ens-Avg and Exp-Avg (and Ens-Logit, where it
    was scored for that method and metric) are all finite.

    Returns:
        Columns :data:`PAPER_COLUMNS`; ``member_min``/``member_max`` are the extreme member means
        over the same images; ``gain`` is Ens-Avg minus Exp-Avg, sign flipped for lower-is-better
        metrics so that a positive gain always means Ens-Avg is better. Empty without member rows
        or without the Ens-Avg source.
    """
    _check(table)
    exp = exp_avg_per_sample(table)
    rows = []
    for (method, metric), e in exp.groupby(["method", "metric"], sort=True):
        sel = table[(table["method"] == method) & (table["metric"] == metric)]
        wide = pd.DataFrame({"exp_avg": e.set_index("sample")["value"]})
        ens = sel[sel["source"] == ens_source].groupby("sample")["value"].mean()
        if ens.empty:
            continue
        wide["ens_avg"] = ens
        logit = (sel[sel["source"] == logit_source].groupby("sample")["value"].mean()
                 if logit_source else pd.Series(dtype=float))
        if not logit.empty:
            wide["ens_logit"] = logit
        wide = wide[np.isfinite(wide.astype(float)).all(axis=1)]
        if wide.empty:
            continue
        members = sel[sel["source"].astype(str).map(is_member) & sel["sample"].isin(wide.index)]
        member_means = members.groupby("source")["value"].mean()
        hib = higher_is_better_of(metric)
        ens_mean, exp_mean = float(wide["ens_avg"].mean()), float(wide["exp_avg"].mean())
        gain = (ens_mean - exp_mean) if hib else (exp_mean - ens_mean)
        rows.append({
            "method": method, "metric": metric, "ens_avg": ens_mean, "exp_avg": exp_mean,
            "ens_logit": float(wide["ens_logit"].mean()) if "ens_logit" in wide else math.nan,
            "member_min": float(member_means.min()), "member_max": float(member_means.max()),
            "n_members": int(e["n_members"].iloc[0]), "n_images": len(wide),
            "higher_is_better": hib, "gain": gain, "ens_avg_better": gain > 0,
        })
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))


def per_class_metric_means(
    metrics: pd.DataFrame,
    *,
    class_names: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    min_count: int = 10,
    margin: float = 0.0,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-class means of every ``(source, method, metric)`` of the metrics table.

    ``gap`` is the class's mean minus the mean over the images of the other classes, signed so
    that negative is worse (direction-aware). A class is flagged only when the whole bootstrap
    interval of its gap lies below ``-margin`` (both groups resampled, seeded by ``seed``) and it
    has at least ``min_count`` images; a class below the count is reported, never flagged
    (``reason`` says so). Unlike a z-score over class means, this can flag with 2 or 3 classes.
    Pass held-out rows only (the test split).

    Args:
        metrics: the metrics table (``sample, label, source, method, metric, value``).
        class_names: to name the labels (optional).
        higher_is_better: per metric (default: the metric registry's metadata).
        min_count: fewest images a class needs to be flagged (default 10).
        margin: how much worse than the rest (in the metric's units) the interval must lie.
        n_boot, level: bootstrap resamples and interval level.
        seed: seeds the bootstrap.

    Returns:
        ``source, method, metric, label, class, n, mean, gap, gap_low, gap_high, flagged,
        reason``.
    """
    need = {"label", "source", "method", "metric", "value"}
    if not need <= set(metrics.columns):
        raise ValueError(f"metrics table needs columns {sorted(need)}; got {list(metrics.columns)}")
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2 (an interval needs 2 images); got {min_count}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2, (1 + level) / 2]
    rows = []
    for (source, method, metric), part in metrics.groupby(["source", "method", "metric"]):
        hib = (higher_is_better or {}).get(metric)
        sign = 1.0 if (higher_is_better_of(metric) if hib is None else hib) else -1.0
        values = sign * part["value"].to_numpy(dtype=np.float64)
        labels = part["label"].to_numpy()
        ok = np.isfinite(values)
        for label in sorted(set(labels.tolist())):
            own, rest = values[ok & (labels == label)], values[ok & (labels != label)]
            n = int((labels == label).sum())
            mean = sign * float(own.mean()) if own.size else math.nan
            gap = low = high = math.nan
            if own.size and rest.size:
                gap = float(own.mean() - rest.mean())
            if own.size >= 2 and rest.size >= 2:
                a = rng.multinomial(own.size, np.full(own.size, 1 / own.size), n_boot) @ own
                b = rng.multinomial(rest.size, np.full(rest.size, 1 / rest.size), n_boot) @ rest
                low, high = (float(v) for v in np.quantile(a / own.size - b / rest.size, q))
            enough = n >= min_count
            flagged = bool(enough and high < -margin)
            reason = (f"fewer than {min_count} images: not flagged" if not enough else
                      "interval below the rest" if flagged else
                      "interval includes the rest's mean" if low <= -margin else
                      "interval above the rest's mean")
            rows.append({"source": source, "method": method, "metric": metric, "label": label,
                         "class": class_names[int(label)] if class_names else str(label),
                         "n": n, "mean": mean, "gap": gap, "gap_low": low, "gap_high": high,
                         "flagged": flagged, "reason": reason})
    return pd.DataFrame(rows, columns=["source", "method", "metric", "label", "class", "n", "mean",
                                       "gap", "gap_low", "gap_high", "flagged", "reason"])
