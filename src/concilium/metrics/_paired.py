"""Paired comparisons of sources on a tidy metrics table, the machinery of
:mod:`concilium.metrics.claims`: the images on which every compared source is finite, and a
percentile bootstrap over them drawn from an explicit generator.

A claim is a list of :class:`Block` comparisons; its estimate is the smallest margin over the
blocks, and each bootstrap replicate resamples every block's images on its own and takes the
smallest margin again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from concilium.metrics.tables import exp_avg_per_sample
from concilium.vocabulary import EXP_AVG


@dataclass(frozen=True)
class Block:
    """One paired comparison of a claim: ``x`` (paired images x compared columns) and the margin
    of its column means (``(..., k) -> (...)``, positive favours the claim)."""

    label: str
    x: np.ndarray
    margin: Callable[[np.ndarray], np.ndarray]


def wide_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per image (rows) and ``(source, method)`` (columns), the values of one metric, with
    Exp-Avg columns (source :data:`~concilium.vocabulary.EXP_AVG`) for methods with members."""
    sel = table[table["metric"] == metric]
    wide = sel.groupby(["sample", "source", "method"])["value"].mean().unstack(
        ["source", "method"])
    exp = exp_avg_per_sample(sel)
    if not exp.empty:
        pooled = exp.pivot_table(index="sample", columns="method", values="value",
                                 aggfunc="mean", dropna=False)
        pooled.columns = pd.MultiIndex.from_tuples([(EXP_AVG, m) for m in pooled.columns])
        wide = wide.join(pooled, how="outer")
    return wide


def paired_rows(wide: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> np.ndarray:
    """The images (rows) on which every one of ``columns`` is finite."""
    x = wide.reindex(columns=pd.MultiIndex.from_tuples(list(columns))).to_numpy(np.float64)
    return x[np.isfinite(x).all(axis=1)]


def bootstrap_means(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    n = x.shape[0]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return counts @ x / n


def paired_interval(
    blocks: Sequence[Block], *, rng: np.random.Generator, n_boot: int, level: float
) -> tuple[float, float, float, int]:
    """``(estimate, low, high, n)``: the smallest margin over the blocks and its percentile
    bootstrap interval (each block resampled on its own); ``n`` is the fewest paired images of
    a block, and below 2 there is no interval."""
    estimate = min(float(b.margin(b.x.mean(axis=0))) for b in blocks)
    n = min(b.x.shape[0] for b in blocks)
    if n < 2:
        return estimate, math.nan, math.nan, n
    reps = np.min(np.stack([b.margin(bootstrap_means(b.x, rng, n_boot)) for b in blocks]), axis=0)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high), n
