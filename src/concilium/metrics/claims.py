"""The verdict rule of every headline claim of the ensembling issue, each defined once.

The HTML report, ``RUN/summary.json`` and ``experiments/claims.py`` decide each claim by calling
these functions on tidy tables; none of them has verdict logic of its own. Every function returns
a :class:`Finding`: the claim, the number it is decided on (``estimate``), its 95% interval, the
number of units behind it (``n``) and of seeds (``seeds``), the decision threshold, the verdict,
the rule in words, the statistical test in words (``test``) and its p-value (``p_value``).

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

**p-values.** A paired claim's p-value is a one-sided sign-flip permutation test of the per-image
margins (positive favours the claim) against 0: exact over all ``2**n`` flips up to 16 images,
else 9999 random flips from ``rng`` with the ``(b + 1) / (m + 1)`` correction. A claim of several
comparisons is an intersection-union test: its p-value is the largest of theirs (1 when a
comparison has no paired image). The verdict is the interval's; the p-value is reported beside it.

**Seeds.** A table with a ``seed`` column (several repetitions of the experiment) is decided once
over all seeds: the unit is ``(seed, sample)``, images are paired and resampled within their seed,
``seeds`` counts the seeds and ``detail`` gives each seed's estimate and their spread.

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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from concilium.metrics._paired import (
    EXACT_UP_TO,
    N_FLIPS,
    Block,
    paired_block,
    paired_interval,
    paired_p,
    paired_rows,
    per_seed_estimates,
    seeds_of,
    wide_table,
)
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
        detail: the numbers behind the estimate, or what is missing (per seed, with seeds).
        seeds: repetitions of the experiment behind the estimate (distinct ``seed`` values).
        test: the interval and the test behind ``p_value``, in words ("" when there is none).
        p_value: one-sided p-value of the claim against its threshold (NaN when not tested).
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
        """The fields in the order of :data:`FINDING_KEYS` (the keys of a finding in
        ``summary.json``)."""
        d = asdict(self)
        return {k: d[k] for k in FINDING_KEYS}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Finding:
        """The finding of :meth:`as_dict` or of a ``summary.json`` entry (``None`` numbers, as
        strict JSON writes NaN, read back as NaN)."""
        nan = {"estimate", "ci_low", "ci_high", "threshold", "p_value"}
        return cls(**{k: math.nan if k in nan and d.get(k) is None else d[k]
                      for k in FINDING_KEYS if k in d})

    def numbers(self) -> str:
        """The estimate, interval, n, seeds, p-value and threshold in one line, as the report,
        ``concilium demo`` and ``experiments/claims.py`` print them ("" when not measured)."""
        if self.verdict == "not measured":
            return ""
        def f(x: float) -> str:
            return "n/a" if not math.isfinite(x) else f"{x:.3f}"
        p = "n/a" if not math.isfinite(self.p_value) else f"{self.p_value:.2g}"
        return (f"{self.metric} = {f(self.estimate)} ({LEVEL:.0%} CI {f(self.ci_low)} to "
                f"{f(self.ci_high)}, n = {self.n}, seeds = {self.seeds}, p = {p}; threshold "
                f"{self.threshold:g})")


FINDING_KEYS = ("claim", "metric", "estimate", "ci_low", "ci_high", "n", "seeds", "test",
                "p_value", "verdict", "rule", "threshold", "detail")
"""The keys of a finding in ``RUN/summary.json`` and :meth:`Finding.as_dict`, in order."""


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


def paired_test(level: float = LEVEL) -> str:
    """The interval and test of every paired claim, in words."""
    return (f"paired percentile bootstrap {level:.0%} interval (images resampled within each "
            f"seed); one-sided sign-flip permutation p of the per-image margins (exact up to "
            f"{EXACT_UP_TO} images, else {N_FLIPS} random flips, (b+1)/(m+1)); several "
            "comparisons: the largest p (intersection-union)")


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
    p_value = 1.0 if missing else paired_p(blocks, rng=rng)
    seeds = seeds_of(blocks)
    if seeds:
        each = per_seed_estimates(blocks)
        detail += ("; per seed: " + ", ".join(f"{s} {v:+.3f}" for s, v in each.items())
                   + f" (spread {min(each.values()):+.3f}..{max(each.values()):+.3f})")
    verdict = verdict_of(low, high, 0.0)
    if missing and verdict == "held":
        verdict = "inconclusive"
    return Finding(claim, metric, estimate, low, high, n, 0.0, verdict, rule, detail,
                   seeds=max(len(seeds), 1), test=paired_test(level), p_value=p_value)


def averaging_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    metric: str | None = None,
    ens_source: str = "ens-avg",
    expectation: pd.DataFrame | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1 as the paper states it: Ens-Avg beats Exp-Avg (the members' mean score per image)
    for every method.

    On :data:`ALGEBRAIC_METRICS` (the paper's mask correlation, relevance mass) this comparison
    cannot fail (review ensembling D10): the claim and rule say so, and with ``expectation`` the
    detail reports the observed Ens-Avg beside the value algebra predicts. The deciding
    comparisons are :func:`averaging_best_member_claim` and :func:`averaging_localisation_claim`.

    Args:
        metrics: the tidy metrics table (``sample, source, method, metric, value``).
        rng: draws the bootstrap resamples.
        metric: the metric (default ``mask_correlation``, the paper's, else ``relevance_mass``).
        ens_source: the Ens-Avg source.
        expectation: optional rows ``method, ens_avg, exp_avg_sigma, expected`` per image (from
            :func:`concilium.ensemble.expectation.averaging_expectation`, mask correlation).
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
        block = paired_block(method, wide, [(ens_source, method), (EXP_AVG, method)],
                             lambda mu, s=sign: s * (mu[..., 0] - mu[..., 1]))
        x = block.x
        if not len(x):
            missing.append(method)
            continue
        blocks.append(block)
        parts.append(f"{method} {sign * (x[:, 0] - x[:, 1]).mean():+.3f} ({len(x)} images)")
    if metric in ALGEBRAIC_METRICS:
        claim, rule = f"{claim} ({metric}; algebraic)", rule + _ALGEBRAIC.format(m=metric)
        if expectation is not None and not expectation.empty and metric == "mask_correlation":
            for method, grp in expectation.groupby("method", sort=True):
                ok = grp[["ens_avg", "exp_avg_sigma", "expected"]].notna().all(axis=1)
                g = grp[ok]
                parts.append(f"{method}: observed Ens-Avg {g['ens_avg'].mean():.3f}, algebra "
                             f"expects {g['expected'].mean():.3f} (sigma-weighted Exp-Avg "
                             f"{g['exp_avg_sigma'].mean():.3f}; {len(g)} images)")
    else:
        claim = f"{claim} ({metric})"
    return _decided(claim, f"{metric}: {name}", rule, parts, blocks, missing,
                    rng=rng, n_boot=n_boot, level=level)


ALGEBRAIC_METRICS = ("mask_correlation", "relevance_mass")
"""Metrics on which Ens-Avg beats (or ties) Exp-Avg by algebra (review ensembling D10): the mask
correlation of the mean of maps is at least the sigma-weighted mean of the members'
(:mod:`concilium.ensemble.expectation`), and the relevance mass of the mean equals the
mass-weighted mean of the members'. A comparison with Exp-Avg on them cannot fail."""

_ALGEBRAIC = (" ALGEBRAIC: on {m} Ens-Avg >= the weighted Exp-Avg holds for any maps (review "
              "ensembling D10), so this comparison cannot fail and decides nothing; it reports "
              "the observed gain beside the one algebra predicts. The deciding comparisons are "
              "Ens-Avg vs the best member and vs Exp-Avg on iou and com_distance.")


def _oriented_means(x: np.ndarray, sign: float) -> np.ndarray:
    return sign * x.mean(axis=0)


def _best_member_blocks(
    metrics: pd.DataFrame, metric_names: Sequence[str], best: Mapping[str, str] | None,
    ens_source: str,
) -> tuple[list[Block], list[str], list[str]]:
    """Ens-Avg vs the best member per metric and method (rule in averaging_best_member_claim)."""
    blocks, parts, missing = [], [], []
    for metric in metric_names:
        if not (metrics["metric"] == metric).any():
            continue
        wide, sign = wide_table(metrics, metric), _sign(metric)
        for method in sorted(m for s, m in wide.columns if s == ens_source):
            members = sorted(s for s, m in wide.columns if m == method and is_member(str(s)))
            if best is not None and method in best:
                if best[method] not in members:
                    raise ValueError(f"best member {best[method]!r} of {method!r} has no "
                                     f"{metric} rows; pick one of {members}")
                index = members.index(best[method])
            else:
                index = None
            columns = [(ens_source, method), *((s, method) for s in members)]
            x = paired_rows(wide, columns)
            if not members or not len(x):
                missing.append(f"{metric}/{method}")
                continue
            if index is None:
                def margin(mu, s=sign):
                    return s * mu[..., 0] - np.max(s * mu[..., 1:], axis=-1)
                top = int(np.argmax(_oriented_means(x[:, 1:], sign)))
            else:
                def margin(mu, s=sign, j=index + 1):
                    return s * (mu[..., 0] - mu[..., j])
                top = index
            blocks.append(paired_block(f"{metric}/{method}", wide, columns, margin))
            means = x.mean(axis=0)
            parts.append(f"{metric}/{method} {means[0]:.3f} vs {members[top]} "
                         f"{means[top + 1]:.3f} ({len(x)} images)")
    return blocks, parts, missing


def _exp_avg_blocks(
    metrics: pd.DataFrame, metric_names: Sequence[str], ens_source: str,
) -> tuple[list[Block], list[str], list[str]]:
    """Ens-Avg vs Exp-Avg per metric and method, on the images where Ens-Avg and every member
    are finite."""
    blocks, parts, missing = [], [], []
    for metric in metric_names:
        if not (metrics["metric"] == metric).any():
            missing.append(metric)
            continue
        wide, sign = wide_table(metrics, metric), _sign(metric)
        for method in sorted(m for s, m in wide.columns if s == ens_source):
            block = paired_block(f"{metric}/{method}", wide,
                                 [(ens_source, method), (EXP_AVG, method)],
                                 lambda mu, s=sign: s * (mu[..., 0] - mu[..., 1]))
            x = block.x
            if not len(x):
                missing.append(f"{metric}/{method}")
                continue
            blocks.append(block)
            parts.append(f"{metric}/{method} {x[:, 0].mean():.3f} vs {x[:, 1].mean():.3f} "
                         f"({len(x)} images)")
    return blocks, parts, missing


def averaging_best_member_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    metric_names: Sequence[str] = ("mask_correlation", "relevance_mass", "iou", "com_distance"),
    best: Mapping[str, str] | None = None,
    ens_source: str = "ens-avg",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1, deciding part (can fail): Ens-Avg beats the best member, per method and metric.

    Per metric and method, the images where Ens-Avg and every member are finite (a NaN drops the
    image for all). The best member is ``best[method]`` when given (chosen on other data), else
    the member with the best mean on those images, re-chosen in every bootstrap replicate (so the
    selection's optimism counts against the ensemble).

    Args:
        metrics: the tidy metrics table (``sample, source, method, metric, value``).
        rng: draws the bootstrap resamples.
        metric_names: the metrics compared (those missing from the table are skipped).
        best: optional ``method -> member source`` chosen on other data.
        ens_source: the Ens-Avg source.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = "Ens-Avg beats the best member for every method"
    chosen = ("the member given per method (chosen on other data)" if best else
              "the member with the best mean on the paired images, re-chosen in every bootstrap "
              "replicate")
    rule = ("per metric and method, Ens-Avg's mean minus the best member's mean over the images "
            "where Ens-Avg and every member are finite (oriented so that positive means Ens-Avg "
            f"is better); best member = {chosen}; estimate = the smallest over "
            + ", ".join(metric_names) + " and the methods; " + _INTERVAL.format(t=0) + _PARTS)
    name = "Ens-Avg - best member, worst metric and method"
    if metrics is None or metrics.empty or not (metrics["source"] == ens_source).any():
        return _not_measured(claim, name, rule, f"no {ens_source} rows in the metrics table")
    blocks, parts, missing = _best_member_blocks(metrics, metric_names, best, ens_source)
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


def averaging_localisation_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    metric_names: Sequence[str] = ("iou", "com_distance"),
    ens_source: str = "ens-avg",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1, deciding part (can fail): Ens-Avg beats Exp-Avg on the metrics where that is not
    fixed by algebra (IoU of the thresholded map; centre-of-mass distance against the plain
    mean of the members), per method.

    Args:
        metrics: the tidy metrics table.
        rng: draws the bootstrap resamples.
        metric_names: the metrics compared (those missing from the table are skipped).
        ens_source: the Ens-Avg source.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    algebraic = [m for m in metric_names if m in ALGEBRAIC_METRICS]
    if algebraic:
        raise ValueError(f"{algebraic} cannot decide claim 1 (Ens-Avg >= Exp-Avg by algebra); "
                         "use averaging_claim for them, which labels the comparison algebraic")
    claim = "Ens-Avg beats Exp-Avg on " + " and ".join(metric_names) + " for every method"
    rule = ("per metric and method, Ens-Avg minus Exp-Avg over the images where Ens-Avg and every "
            "member are finite (oriented so that positive means Ens-Avg is better); estimate = "
            "the smallest over the metrics and methods; " + _INTERVAL.format(t=0) + _PARTS)
    name = "Ens-Avg - Exp-Avg, worst metric and method"
    if metrics is None or metrics.empty or not (metrics["source"] == ens_source).any():
        return _not_measured(claim, name, rule, f"no {ens_source} rows in the metrics table")
    blocks, parts, missing = _exp_avg_blocks(metrics, metric_names, ens_source)
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


def averaging_deciding_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    best_metrics: Sequence[str] = ("mask_correlation", "iou", "com_distance"),
    exp_avg_metrics: Sequence[str] = ("iou", "com_distance"),
    best: Mapping[str, str] | None = None,
    ens_source: str = "ens-avg",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1 restated so that algebra does not fix it: Ens-Avg beats the best member (on
    ``best_metrics``, rule of :func:`averaging_best_member_claim`) and Exp-Avg on
    ``exp_avg_metrics`` (rule of :func:`averaging_localisation_claim`), for every method; the
    weakest comparison decides.

    Args:
        metrics: the tidy metrics table.
        rng: draws the bootstrap resamples.
        best_metrics: metrics compared with the best member (by default not the signed
            relevance mass: ``sum(a * s) / sum(a)`` is unbounded when a signed map sums to about
            0, so it cannot rank signed methods).
        exp_avg_metrics: metrics compared with Exp-Avg (none of :data:`ALGEBRAIC_METRICS`).
        best: optional ``method -> member source`` chosen on other data.
        ens_source: the Ens-Avg source.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    algebraic = [m for m in exp_avg_metrics if m in ALGEBRAIC_METRICS]
    if algebraic:
        raise ValueError(f"{algebraic} cannot decide claim 1 (Ens-Avg >= Exp-Avg by algebra); "
                         "leave them out of exp_avg_metrics")
    claim = ("Ens-Avg beats the best member and, on " + " and ".join(exp_avg_metrics)
             + ", Exp-Avg for every method")
    chosen = ("given per method (chosen on other data)" if best else "the member with the best "
              "mean on the paired images, re-chosen in every bootstrap replicate")
    rule = ("per metric and method, over the images where Ens-Avg and every member are finite, "
            "Ens-Avg's mean minus the best member's on " + ", ".join(best_metrics)
            + f" (best member = {chosen}) and minus Exp-Avg's on " + ", ".join(exp_avg_metrics)
            + " (oriented so that positive means Ens-Avg is better); estimate = the smallest; "
            + _INTERVAL.format(t=0) + _PARTS + ". Ens-Avg vs Exp-Avg on mask_correlation and "
            "relevance_mass is left out: it cannot fail (review ensembling D10)")
    name = "Ens-Avg - best member or Exp-Avg, worst comparison"
    if metrics is None or metrics.empty or not (metrics["source"] == ens_source).any():
        return _not_measured(claim, name, rule, f"no {ens_source} rows in the metrics table")
    b1, p1, m1 = _best_member_blocks(metrics, best_metrics, best, ens_source)
    b2, p2, m2 = _exp_avg_blocks(metrics, exp_avg_metrics, ens_source)
    parts = [f"vs best member: {p}" for p in p1] + [f"vs Exp-Avg: {p}" for p in p2]
    return _decided(claim, name, rule, parts, b1 + b2, m1 + m2, rng=rng, n_boot=n_boot,
                    level=level)


def same_compute_claim(
    metrics: pd.DataFrame | None,
    *,
    rng: np.random.Generator,
    single_source: str,
    metric_names: Sequence[str] = ("mask_correlation", "relevance_mass", "iou", "com_distance"),
    ens_source: str = "ens-avg",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Finding:
    """Claim 1, practitioner's question: is Ens-Avg of K members better than one member explained
    with the same compute (``single_source``: SmoothGrad with K x the samples, IG with K x the
    steps), per method both have, on the images where both are finite?

    Args:
        metrics: the tidy metrics table with ``ens_source`` and ``single_source`` rows.
        rng: draws the bootstrap resamples.
        single_source: the source of the one member explained with K x the compute.
        metric_names: the metrics compared (those missing from the table are skipped).
        ens_source: the Ens-Avg source.
        n_boot: bootstrap resamples.
        level: interval coverage.
    """
    claim = f"Ens-Avg beats one member explained with the same compute ({single_source})"
    rule = ("per metric and method both sources have, Ens-Avg's mean minus the single member's "
            "over the images where both are finite (oriented so that positive means Ens-Avg is "
            "better); estimate = the smallest over the metrics and methods; "
            + _INTERVAL.format(t=0) + _PARTS)
    name = f"Ens-Avg - {single_source}, worst metric and method"
    if metrics is None or metrics.empty or not (metrics["source"] == single_source).any():
        return _not_measured(claim, name, rule, f"no {single_source} rows in the metrics table")
    blocks, parts, missing = [], [], []
    for metric in metric_names:
        if not (metrics["metric"] == metric).any():
            continue
        wide, sign = wide_table(metrics, metric), _sign(metric)
        for method in sorted(m for s, m in wide.columns if s == single_source):
            if (ens_source, method) not in wide:
                missing.append(f"{metric}/{method}")
                continue
            block = paired_block(f"{metric}/{method}", wide,
                                 [(ens_source, method), (single_source, method)],
                                 lambda mu, s=sign: s * (mu[..., 0] - mu[..., 1]))
            x = block.x
            if not len(x):
                missing.append(f"{metric}/{method}")
                continue
            blocks.append(block)
            parts.append(f"{metric}/{method} {x[:, 0].mean():.3f} vs {x[:, 1].mean():.3f} "
                         f"({len(x)} images)")
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


def ensemble_size_claim(curves: pd.DataFrame | None, *, level: float = LEVEL) -> Finding:
    """Claim 1, size: does Ens-Avg keep improving with K? Compares the score at the largest K
    every diversity source has with K = 1 (a random single member), per source and method.

    Args:
        curves: rows ``source, method, k, mean, low, high`` (from
            :func:`concilium.ensemble.expectation.ensemble_size_curve`, oriented so that higher
            is better, with a ``metric`` column naming the metric).
        level: the coverage of the curves' intervals (said in the rule).
    """
    claim = "Ens-Avg at the largest common K beats a single random member (K = 1)"
    rule = ("per diversity source and method, the mean over member subsets at the largest K all "
            "sources have minus the mean at K = 1 (oriented so that positive means the larger "
            "ensemble is better); estimate = the smallest; held when the subsets' "
            f"{level:.0%} interval at that K lies wholly above K = 1's, not held when wholly "
            "below, inconclusive otherwise")
    name = "score(K common) - score(K = 1), worst source and method"
    if curves is None or curves.empty:
        return _not_measured(claim, name, rule, "no ensemble-size curves")
    k_common = int(curves.groupby("source")["k"].max().min())
    worst, parts, verdicts = math.inf, [], []
    for (source, method), grp in curves.groupby(["source", "method"], sort=True):
        sign = _sign(str(grp["metric"].iloc[0])) if "metric" in grp else 1.0
        one, top = grp.set_index("k").loc[1], grp.set_index("k").loc[k_common]
        gain = sign * (top["mean"] - one["mean"])
        lo_top, hi_top = sorted((sign * top["low"], sign * top["high"]))
        lo_one, hi_one = sorted((sign * one["low"], sign * one["high"]))
        verdicts.append("held" if lo_top > hi_one else "not held" if hi_top < lo_one
                        else "inconclusive")
        worst = min(worst, gain)
        parts.append(f"{source}/{method} K={k_common} {top['mean']:.3f} vs K=1 "
                     f"{one['mean']:.3f}")
    verdict: Verdict = ("not held" if "not held" in verdicts else
                        "held" if all(v == "held" for v in verdicts) else "inconclusive")
    return Finding(claim, name, float(worst), math.nan, math.nan, k_common, 0.0, verdict, rule,
                   "; ".join(parts))


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
            block = paired_block(f"{metric}/{method}", wide,
                                 [(source, method), *((s, method) for s in members)],
                                 lambda mu, s=sign: s * (mu[..., 0] - np.median(mu[..., 1:],
                                                                                axis=-1)))
            if not members or not len(block.x):
                missing.append(f"{metric}/{method}")
                continue
            blocks.append(block)
            x = block.x
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
        found = [(cols, paired_block(metric, wide, cols, lambda mu, s=sign: s * mu[..., 0]
                                     - np.median(s * mu[..., 1:], axis=-1))) for cols in pairs]
        found = [(cols, b) for cols, b in found if len(b.x)]
        if not found or len(found) < len(pairs):
            missing.append(metric)
        if not found:
            continue
        blocks += [b for _, b in found]
        found = [(cols, b.x) for cols, b in found]
        gaps = [(f"hardest method {cols[1][1]}" if len(cols) == 2 else "median method",
                 float(x[:, 0].mean()), float(np.median(x[:, 1:].mean(axis=0))), len(x))
                for cols, x in found]
        what, own_mean, ref, n = min(gaps, key=lambda g: sign * (g[1] - g[2]))
        parts.append(f"{metric} {own_mean:.3f} vs {what} {ref:.3f} ({n} images)")
    return _decided(claim, name, rule, parts, blocks, missing, rng=rng, n_boot=n_boot,
                    level=level)


# -- claims on per-member and audit tables ---------------------------------------------------


#: Permutations of the members' pairings in the p-value of claims 2b; up to 8 members
#: (8! = 40320 pairings) every pairing is enumerated and the p-value is exact.
N_PERMUTATIONS = 40320


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    return (xc * yc).sum(axis=axis) / np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum(axis=axis))


def _score_correlation_claim(
    points: pd.DataFrame | None, against: str, claim: str, *,
    rng: np.random.Generator | None, level: float, n_permutations: int,
) -> Finding:
    """Claim 2b on one column: Pearson r of ``consensus_score`` with ``against`` over the
    members, Fisher's z interval, and a two-sided permutation p-value over the pairings."""
    rule = (f"Pearson r between the members' consensus score and {against}, with Fisher's z "
            "interval (none below 4 members); " + _INTERVAL.format(t=0))
    exact_up_to = max(k for k in range(1, 21) if math.factorial(k) <= max(n_permutations, 1))
    test = (f"permutation test of Pearson r over the members' pairings, two-sided: share with "
            f"|r| at least the observed (exact up to "
            f"{exact_up_to} members: all n! pairings; beyond, {n_permutations} random pairings)")
    if points is None or not {"consensus_score", against} <= set(points.columns):
        return _not_measured(claim, "Pearson r", rule,
                             f"no consensus table with consensus score and {against}")
    p = points[["consensus_score", against]].astype(float)
    p = p[np.isfinite(p).all(axis=1)]
    x, y = p["consensus_score"].to_numpy(), p[against].to_numpy()
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return _not_measured(claim, "Pearson r", rule, f"too few or constant values ({n} members)")
    r = float(_pearson(x, y))
    rho = float(sps.spearmanr(x, y)[0])
    low = high = math.nan
    if n > 3:
        z = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12))
        half = float(sps.norm.ppf(0.5 + level / 2)) / math.sqrt(n - 3)
        low, high = math.tanh(z - half), math.tanh(z + half)
    exact = math.factorial(n) <= n_permutations
    # two-sided as the share of pairings with |r| at least the observed |r| (like
    # concilium.ensemble.consensus.exact_p, so the consensus_correlations table agrees)
    # (permuting y alone: its n! orders are all the pairings, so scipy enumerates them exactly
    # while n! <= n_permutations)
    result = sps.permutation_test((y,), lambda b, axis: np.abs(_pearson(x, b, axis)),
                                  permutation_type="pairings", vectorized=True,
                                  n_resamples=n_permutations, alternative="greater",
                                  rng=np.random.default_rng(0) if rng is None else rng)
    how = "exact over all" if exact else "over"
    return Finding(claim, "Pearson r", r, low, high, n, 0.0, verdict_of(low, high, 0.0), rule,
                   f"Pearson r = {r:+.3f}, Spearman rho = {rho:+.3f} over {n} members; "
                   f"permutation p = {float(result.pvalue):.3g} ({how} "
                   f"{min(math.factorial(n), n_permutations)} pairings)",
                   test=test, p_value=float(result.pvalue))


def consensus_accuracy_claim(
    points: pd.DataFrame | None,
    *,
    rng: np.random.Generator | None = None,
    level: float = LEVEL,
    n_permutations: int = N_PERMUTATIONS,
) -> Finding:
    """Claim 2b: the consensus score correlates positively with member accuracy.

    The interval is Fisher's z interval of Pearson's r over the members, not a bootstrap: over
    a handful of members, a resample with two distinct members has r = +-1. The p-value is a
    two-sided permutation test of r over the pairings of scores and accuracies: exact (all
    ``n!`` pairings) up to 8 members, else ``n_permutations`` random pairings drawn from
    ``rng``. Accuracy should be held-out accuracy (the consensus table's ``accuracy``,
    measured where its ``accuracy_on`` says).

    Args:
        points: one row per member with ``consensus_score`` and ``accuracy``.
        rng: draws the random pairings beyond 8 members (``None``: a generator seeded 0).
        level: interval coverage.
        n_permutations: random pairings when the members have more than that many orders.
    """
    return _score_correlation_claim(
        points, "accuracy", "Consensus score correlates positively with member accuracy",
        rng=rng, level=level, n_permutations=n_permutations)


def consensus_localisation_claim(
    points: pd.DataFrame | None,
    *,
    rng: np.random.Generator | None = None,
    level: float = LEVEL,
    n_permutations: int = N_PERMUTATIONS,
) -> Finding:
    """Claim 2b (second half): the consensus score correlates positively with the member's own
    localisation (its maps' localisation score against the masks).

    Decided like :func:`consensus_accuracy_claim` (Fisher's z interval of Pearson's r over the
    members, permutation p-value).

    Args:
        points: one row per member with ``consensus_score`` and ``localisation``.
        rng: draws the random pairings beyond 8 members (``None``: a generator seeded 0).
        level: interval coverage.
        n_permutations: random pairings when the members have more than that many orders.
    """
    return _score_correlation_claim(
        points, "localisation",
        "Consensus score correlates positively with the member's own localisation",
        rng=rng, level=level, n_permutations=n_permutations)


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
    test = "permutation null per explanation; bootstrap over explanations"
    p_value = math.nan
    if control is None and n:  # flags are 0/1: exact one-sided binomial test of share > 1/2
        p_value = float(sps.binomtest(int(flags.sum()), n, 0.5, alternative="greater").pvalue)
        test += "; exact binomial p of share > 1/2"
    return Finding(claim, name, estimate, low, high, n, 0.5, verdict_of(low, high, 0.5), rule,
                   detail, test=test, p_value=p_value)
