"""The verdict rule of every headline claim of the ensembling issue, each defined once.

The HTML report, ``RUN/summary.json`` and ``experiments/claims.py`` decide each claim by calling
these functions on tidy tables; none of them has verdict logic of its own. Every function returns
a :class:`Finding`: the claim, the number it is decided on (``estimate``), its 95% interval, the
number of units behind it (``n``), the decision threshold, the verdict and the rule in words.

**Verdicts.** ``"held"`` when the whole interval lies on the claim's side of the threshold,
``"not held"`` when it lies on the other side, ``"inconclusive"`` when it includes the threshold
or cannot be estimated (fewer than two units), ``"not measured"`` when the inputs are missing.

**Paired comparisons.** A claim that compares sources on a metric uses, per metric, only the
images on which every compared source (every method, every member, Exp-Avg per
:mod:`concilium.metrics.tables`) has a finite value: a NaN drops the image for all. Each margin is
oriented so that a positive value favours the claim (direction from the metric registry). The
interval is a percentile bootstrap over those images, drawn from the ``rng`` argument (never the
global random state); a claim over several metrics resamples each metric's images independently
and, like its estimate, takes the smallest margin: the weakest part decides.

Example:
    >>> import numpy as np, pandas as pd
    >>> rows = [(f"s{i}", src, "saliency", "mask_correlation", v)
    ...         for i in range(20) for src, v in (("m0", 0.1), ("m1", 0.2), ("ens-avg", 0.4))]
    >>> t = pd.DataFrame(rows, columns=["sample", "source", "method", "metric", "value"])
    >>> averaging_claim(t, rng=np.random.default_rng(0)).verdict
    'held'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from concilium.metrics._paired import Block, paired_interval, paired_rows, wide_table
from concilium.metrics.tables import higher_is_better_of
from concilium.vocabulary import EXP_AVG, is_logit_source, is_member

Verdict = Literal["held", "not held", "inconclusive", "not measured"]
LEVEL = 0.95
"""Coverage of every interval."""
N_BOOT = 2000
"""Bootstrap resamples of every paired comparison."""

_INTERVAL = ("held when its 95% interval lies above {t}, not held when it lies below {t}, "
             "inconclusive when it includes {t}")


@dataclass(frozen=True)
class Finding:
    """One headline claim decided on one set of tables.

    Attributes:
        claim: the claim in words.
        metric: what ``estimate`` measures.
        estimate: the number the verdict is decided on (NaN when not measured).
        ci_low: lower end of its 95% interval (NaN when there is none).
        ci_high: upper end of its 95% interval.
        n: units behind the estimate (paired images, members or explanations).
        threshold: the decision threshold the interval is compared with.
        verdict: ``"held"``, ``"not held"``, ``"inconclusive"`` or ``"not measured"``.
        rule: the verdict rule in words.
        detail: the numbers behind the estimate, or what is missing.
    """

    claim: str
    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    threshold: float
    verdict: Verdict
    rule: str
    detail: str
    seeds: int = 1
    test: str = ""
    p_value: float = math.nan

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def verdict_of(
    low: float, high: float, threshold: float, *, held_when: Literal["above", "below"] = "above"
) -> Verdict:
    """The verdict of an interval ``[low, high]`` against ``threshold`` (rule in the module doc).

    Example:
        >>> verdict_of(0.1, 0.3, 0.0), verdict_of(-0.1, 0.3, 0.0), verdict_of(0.1, 0.3, 0.5)
        ('held', 'inconclusive', 'not held')
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > threshold:
        return "held" if held_when == "above" else "not held"
    if high < threshold:
        return "not held" if held_when == "above" else "held"
    return "inconclusive"


# -- paired comparisons on the metrics table -------------------------------------------------


def _sign(metric: str) -> float:
    return 1.0 if higher_is_better_of(metric) else -1.0


def _not_measured(claim: str, metric: str, rule: str, detail: str) -> Finding:
    return Finding(claim, metric, math.nan, math.nan, math.nan, 0, 0.0, "not measured", rule,
                   detail)


_PARTS = ("; a comparison of the claim with no paired image makes a 'held' verdict "
          "inconclusive")


def _decided(
    claim: str, metric: str, rule: str, parts: Sequence[str], blocks: Sequence[Block],
    missing: Sequence[str], *, rng: np.random.Generator, n_boot: int, level: float,
) -> Finding:
    """The finding of a paired claim: ``blocks`` measured, ``missing`` comparisons without a
    paired image; ``not measured`` when no block was measured."""
    detail = "; ".join(parts) + ("; no paired image: " + ", ".join(missing) if missing else "")
    if not blocks:
        return _not_measured(claim, metric, rule, detail or "nothing to compare")
    estimate, low, high, n = paired_interval(blocks, rng=rng, n_boot=n_boot, level=level)
    verdict = verdict_of(low, high, 0.0)
    if missing and verdict == "held":
        verdict = "inconclusive"
    return Finding(claim, metric, estimate, low, high, n, 0.0, verdict, rule, detail)


def averaging_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    metric: str | None = None,
    ens_source: str = "ens-avg",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1: Ens-Avg beats Exp-Avg (the members' mean score per image) for every method.

    Args:
        metrics: the tidy metrics table (``sample, source, method, metric, value``).
        rng: draws the bootstrap resamples.
        metric: the metric (default ``mask_correlation``, the paper's, else ``relevance_mass``).
        ens_source: the Ens-Avg source.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = "Ens-Avg beats Exp-Avg (mean over members) for every method"
    rule = ("per method, Ens-Avg minus Exp-Avg averaged over the images where both are finite "
            "(oriented so that positive means Ens-Avg is better); estimate = the smallest over "
            "the methods; " + _INTERVAL.format(t=0) + _PARTS)
    name = "Ens-Avg - Exp-Avg, worst method"
    if metrics is None or metrics.empty:
        return _not_measured(claim, name, rule, "no metrics table")
    ens = metrics[metrics["source"] == ens_source]
    choices = [metric] if metric else ["mask_correlation", "relevance_mass"]
    metric = next((m for m in choices if (ens["metric"] == m).any()), None)
    if metric is None:
        return _not_measured(claim, name, rule, f"no {ens_source} rows with {' or '.join(choices)}")
    wide, sign = wide_table(metrics, metric), _sign(metric)
    methods = sorted(m for s, m in wide.columns if s == ens_source and (EXP_AVG, m) in wide)
    blocks, parts, missing = [], [], []
    for method in methods:
        x = paired_rows(wide, [(ens_source, method), (EXP_AVG, method)])
        if not len(x):
            missing.append(method)
            continue
        blocks.append(Block(method, x, lambda mu, s=sign: s * (mu[..., 0] - mu[..., 1])))
        parts.append(f"{method} {sign * (x[:, 0] - x[:, 1]).mean():+.3f} ({len(x)} images)")
    return _decided(f"{claim} ({metric})", f"{metric}: {name}", rule, parts, blocks, missing,
                    rng=rng, n_boot=n_boot, level=level)


def consensus_alignment_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    source: str = "consensus",
    metric_names: Sequence[str] = ("auc", "average_precision", "mask_correlation"),
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 2a: the consensus aligns with the masks better than the median member.

    Args:
        metrics: a tidy metrics table with the consensus and the member sources (the committee's
            ``committee_metrics`` table when there is one).
        rng: draws the bootstrap resamples.
        source: the consensus source.
        metric_names: the localisation metrics compared.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = "The consensus aligns with the masks better than the median member"
    name = "consensus - median member, worst metric and method"
    rule = ("per metric and method, the consensus's mean minus the median of the members' means "
            "over the images where the consensus and every member are finite (oriented so that "
            "positive means the consensus is better); estimate = the smallest over "
            + ", ".join(metric_names) + " and the methods; " + _INTERVAL.format(t=0) + _PARTS)
    if metrics is None or not (metrics["source"] == source).any():
        return _not_measured(claim, name, rule, f"no {source} rows in the metrics table")
    blocks, parts, missing = [], [], []
    for metric in metric_names:
        wide, sign = wide_table(metrics, metric), _sign(metric)
        methods = sorted(m for s, m in wide.columns if s == source)
        if not methods:
            missing.append(metric)
        for method in methods:
            members = sorted(s for s, m in wide.columns if m == method and is_member(str(s)))
            x = paired_rows(wide, [(source, method), *((s, method) for s in members)])
            if not members or not len(x):
                missing.append(f"{metric}/{method}")
                continue
            blocks.append(Block(f"{metric}/{method}", x, lambda mu, s=sign: s * (
                mu[..., 0] - np.median(mu[..., 1:], axis=-1))))
            means = x.mean(axis=0)
            parts.append(f"{metric}/{method} {means[0]:.3f} vs {np.median(means[1:]):.3f} "
                         f"({len(x)} images)")
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


def cnn_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    source: str = "cnn",
    method: str | None = None,
    beat_best: Sequence[str] = ("relevance_mass", "iou", "pointing_game"),
    beat_median: Sequence[str] = ("deletion",),
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 3: the CNN ensembler's E* beats the best single method on relevance mass, IoU and
    pointing game, and is more faithful (deletion) than the median method.

    A single method's score per image is its Exp-Avg over the member sources. Beating the best
    method is beating every method, each compared on the images both scored; the median method
    is taken on the images every method scored.

    Args:
        metrics: the tidy metrics table with the E* source and member rows per method.
        rng: draws the bootstrap resamples.
        source: the E* source.
        method: the E* source's method name (default: its only one).
        beat_best: metrics on which E* must beat the best method.
        beat_median: metrics on which E* must beat the median method.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = ("The CNN ensembler's E* beats the best single method (" + ", ".join(beat_best)
             + ") and the median method (" + ", ".join(beat_median) + ")")
    name = "E* - reference method, worst metric"
    rule = ("per metric, E*'s mean minus each method's (" + ", ".join(beat_best) + "; on the "
            "images both scored) or the median method's (" + ", ".join(beat_median) + "; on the "
            "images every method scored), oriented so that positive means E* is better; "
            "estimate = the smallest; " + _INTERVAL.format(t=0) + _PARTS)
    rows = None if metrics is None else metrics[metrics["source"] == source]
    if rows is None or rows.empty:
        return _not_measured(claim, name, rule, f"no {source} rows in the metrics table")
    own = sorted(set(rows["method"]))
    if method is None and len(own) > 1:
        return _not_measured(claim, name, rule, f"{source} has several methods {own}; pass method=")
    method = method or own[0]
    blocks, parts, missing = [], [], []
    for metric in (*beat_best, *beat_median):
        wide, sign = wide_table(metrics, metric), _sign(metric)
        singles = sorted(m for s, m in wide.columns if s == EXP_AVG and m != method)
        pairs = ([[(source, method), (EXP_AVG, m)] for m in singles] if metric in beat_best
                 else [[(source, method), *((EXP_AVG, m) for m in singles)]] if singles else [])
        found = [(cols, paired_rows(wide, cols)) for cols in pairs]
        found = [(cols, x) for cols, x in found if len(x)]
        if not found or len(found) < len(pairs):
            missing.append(metric)
        if not found:
            continue
        for _, x in found:
            blocks.append(Block(metric, x, lambda mu, s=sign: s * mu[..., 0] - np.median(
                s * mu[..., 1:], axis=-1)))
        gaps = [(f"hardest method {cols[1][1]}" if len(cols) == 2 else "median method",
                 float(x[:, 0].mean()), float(np.median(x[:, 1:].mean(axis=0))), len(x))
                for cols, x in found]
        what, own_mean, ref, n = min(gaps, key=lambda g: sign * (g[1] - g[2]))
        parts.append(f"{metric} {own_mean:.3f} vs {what} {ref:.3f} ({n} images)")
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


# -- claims on per-member and audit tables ---------------------------------------------------


def consensus_accuracy_claim(points: pd.DataFrame | None, *, level: float = LEVEL) -> Finding:
    """Claim 2b: the consensus score correlates positively with member accuracy.

    The interval is Fisher's z interval of Pearson's r over the members, not a bootstrap: with
    the 3 to 6 members of a committee, a resample with two distinct members has r = +-1.

    Args:
        points: one row per member with ``consensus_score`` and ``accuracy``.
        level: interval coverage.
    """
    claim = "Consensus score correlates positively with member accuracy"
    rule = ("Pearson r between the members' consensus score and accuracy, with Fisher's z "
            "interval (none below 4 members); " + _INTERVAL.format(t=0))
    if points is None or not {"consensus_score", "accuracy"} <= set(points.columns):
        return _not_measured(claim, "Pearson r", rule,
                             "no consensus table with consensus score and accuracy")
    p = points[["consensus_score", "accuracy"]].astype(float)
    p = p[np.isfinite(p).all(axis=1)]
    x, y = p["consensus_score"].to_numpy(), p["accuracy"].to_numpy()
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return _not_measured(claim, "Pearson r", rule, f"too few or constant values ({n} members)")
    r = float(sps.pearsonr(x, y)[0])
    rho = float(sps.spearmanr(x, y)[0])
    low = high = math.nan
    if n > 3:
        z = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12))
        half = float(sps.norm.ppf(0.5 + level / 2)) / math.sqrt(n - 3)
        low, high = math.tanh(z - half), math.tanh(z + half)
    return Finding(claim, "Pearson r", r, low, high, n, 0.0, verdict_of(low, high, 0.0), rule,
                   f"Pearson r = {r:+.3f}, Spearman rho = {rho:+.3f} over {n} members")


def _first_column(table: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((c for c in names if c in table.columns), None)


def _class_rows(table: pd.DataFrame, target: str) -> pd.DataFrame | None:
    """The rows of ``table`` for the class named (or numbered) ``target``."""
    hits = [table[table[c].astype(str) == str(target)]
            for c in ("class_name", "class", "label") if c in table.columns]
    return next((h for h in hits if not h.empty), None)


def rare_class_claim(per_class: pd.DataFrame | None, *, target: str | None) -> Finding:
    """Claim 4a: the per-class quality audit flags the rare class.

    The audit table holds the class's mean Dice and its bootstrap interval (``dice_low``,
    ``dice_high``): held when the whole interval lies below the audit's flag threshold
    (``flag_threshold``), not held when it lies above, inconclusive when it straddles it or when
    the class has fewer images than the audit's minimum count (its ``reason`` says so). An older
    table without the interval is decided on the point value (no interval); one without the
    threshold by its ``flagged`` column.

    Args:
        per_class: the per-class audit (``class`` or ``label``, ``dice``, ``dice_low``,
            ``dice_high``, ``flag_threshold``, ``flagged``, ``reason``), as written by
            ``concilium audit``.
        target: the rare class's name or label (``None``: the dataset has none).
    """
    claim = "The rare class is flagged by the per-class quality audit"
    rule = ("the bootstrap interval of the rare class's mean E* Dice (held-out images) against "
            "the audit's flag threshold: held when the interval lies below, not held when above, "
            "inconclusive when it straddles it or the class has too few images to be flagged")
    if target is None:
        return _not_measured(claim, "Dice", rule, "the dataset has no rare class")
    if per_class is None or per_class.empty:
        return _not_measured(claim, "Dice", rule, "no per_class table")
    rows = _class_rows(per_class, target)
    score = _first_column(per_class, ("dice", "mean_dice", "value", "iou"))
    flag = _first_column(per_class, ("flagged", "flag"))
    if rows is None or score is None or flag is None:
        return _not_measured(claim, "Dice", rule,
                             f"the per_class table has no {score or 'dice'}/flagged row for "
                             f"class {target!s}")
    value = float(rows[score].iloc[0])
    has_interval = {"dice_low", "dice_high"} <= set(rows.columns) and score == "dice"
    low = float(rows["dice_low"].iloc[0]) if has_interval else value
    high = float(rows["dice_high"].iloc[0]) if has_interval else value
    limit = _first_column(per_class, ("flag_threshold", "threshold"))
    threshold = float(rows[limit].iloc[0]) if limit else math.nan
    name = _first_column(per_class, ("class_name", "class", "label"))
    flagged = sorted({str(c) for c in per_class.loc[per_class[flag].astype(bool), name]})
    reason = str(rows["reason"].iloc[0]) if "reason" in rows.columns else ""
    if reason.startswith("fewer than"):
        verdict: Verdict = "inconclusive"
    elif math.isfinite(threshold):
        verdict = verdict_of(low, high, threshold, held_when="below")
    else:
        verdict = "held" if bool(rows[flag].iloc[0]) else "not held"
    n = int(rows["n"].iloc[0]) if "n" in rows.columns else 1
    test = "percentile bootstrap of the class mean" if has_interval else ""
    return Finding(claim, score, value, low if has_interval else math.nan,
                   high if has_interval else math.nan, n, threshold, verdict, rule,
                   f"rare class {target!s}: {score} {value:.3f} (interval {low:.3f} to {high:.3f}) vs "
                   f"threshold {threshold:.3f}; flagged: {flagged or 'none'}"
                   + (f"; {reason}" if reason else ""), test=test)


def _flags(rows: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """1.0 / 0.0 per explanation (``keys``; per row without keys): flagged or not."""
    if not keys:
        return rows["flagged"].astype(float).reset_index(drop=True)
    return rows.groupby(list(keys))["flagged"].any().astype(float)


def watermark_claim(
    bias: pd.DataFrame | None,
    *,
    target: str | None,
    rng: np.random.Generator,
    control: pd.DataFrame | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 4b: the bias audit flags the watermark class for most explanations (and, given a
    ``control`` audit of a model trained on clean data, for more of them than there).

    Args:
        bias: the bias audit: one row per explanation (``source``, ``method``) and class, with
            ``flagged``.
        target: the watermark class's name or label (``None``: the dataset has none).
        rng: draws the bootstrap resamples over the explanations.
        control: the same audit of a model trained on clean data, paired by (source, method).
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = "The watermark class is flagged by the bias audit"
    name = "share of explanations flagging it" + (" minus the control's" if control is not None
                                                  else "")
    rule = ("per explanation (signed logit sources excluded), 1 if the bias audit flags the "
            "watermark class against its permutation null (minus the same for the clean-data "
            "control, when given, paired by source and method); estimate = the mean over the "
            "explanations, bootstrap interval; " + _INTERVAL.format(t=0.5))
    if target is None:
        return _not_measured(claim, name, rule, "the dataset has no watermark class")
    if bias is None or bias.empty or "flagged" not in bias.columns:
        return _not_measured(claim, name, rule, "no bias table with a flagged column")
    if "source" in bias.columns:
        bias = bias[~bias["source"].astype(str).map(is_logit_source)]
    rows = _class_rows(bias, target)
    if rows is None:
        return _not_measured(claim, name, rule, f"the bias table has no row for class {target!s}")
    keys = [c for c in ("source", "method") if c in bias.columns]
    flags = _flags(rows, keys)
    detail = f"watermark class {target!s}: flagged by {int(flags.sum())}/{len(flags)} explanations"
    if control is not None:
        crows = _class_rows(control, target)
        if crows is None:
            return _not_measured(claim, name, rule, f"the control has no row for class {target!s}")
        both = pd.concat([flags.rename("a"), _flags(crows, keys).rename("b")], axis=1,
                         join="inner")
        if both.empty:
            return _not_measured(claim, name, rule, "no explanation in both the audit and control")
        detail += f"; control: {int(both['b'].sum())}/{len(both)}"
        flags = both["a"] - both["b"]
    x = flags.to_numpy(np.float64)[:, None]
    estimate, low, high, n = paired_interval([Block("flagged", x, lambda mu: mu[..., 0])],
                                              rng=rng, n_boot=n_boot, level=level)
    return Finding(claim, name, estimate, low, high, n, 0.5, verdict_of(low, high, 0.5), rule,
                   detail, test="permutation null per explanation; bootstrap over explanations")
