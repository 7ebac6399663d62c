"""Paired comparisons of sources on a tidy metrics table, the machinery of
:mod:`concilium.metrics.claims`: the images on which every compared source is finite, a
percentile bootstrap over them and a sign-flip permutation p-value, both drawn from an explicit
generator.

A claim is a list of :class:`Block` comparisons; its estimate is the smallest margin over the
blocks, and each bootstrap replicate resamples every block's images on its own and takes the
smallest margin again. Its p-value is the intersection-union test's: the largest of the blocks'.

**Seeds.** A table with a ``seed`` column holds several repetitions of the experiment (new data,
new models per seed). The unit is then ``(seed, sample)``: images are paired within a seed (a
NaN drops the image for every source of that seed only), the bootstrap resamples images within
each seed (stratified, so every replicate keeps each seed's image count) and
:func:`per_seed_estimates` gives the estimate of each seed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from concilium.metrics.tables import exp_avg_per_sample
from concilium.vocabulary import EXP_AVG

EXACT_UP_TO = 16
"""Up to this many paired images the sign-flip p-value enumerates all ``2**n`` flips."""
N_FLIPS = 9999
"""Random sign flips of the Monte Carlo p-value beyond :data:`EXACT_UP_TO` images."""


@dataclass(frozen=True)
class Block:
    """One paired comparison of a claim: ``x`` (paired images x compared columns), the margin
    of its column means (``(..., k) -> (...)``, positive favours the claim) and, for a table with
    seeds, the seed of each row (``None``: one seed)."""

    label: str
    x: np.ndarray
    margin: Callable[[np.ndarray], np.ndarray]
    seeds: np.ndarray | None = None


def _keys(table: pd.DataFrame) -> list[str]:
    if "seed" not in table.columns:
        return ["sample"]
    if table["seed"].isna().any():
        raise ValueError("the metrics table's seed column has missing values; give every row "
                         "the seed of the run it came from (or drop the column for one seed)")
    return ["seed", "sample"]


def wide_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per image (rows; ``(seed, sample)`` when the table has a ``seed`` column) and
    ``(source, method)`` (columns), the values of one metric, with Exp-Avg columns (source
    :data:`~concilium.vocabulary.EXP_AVG`) for methods with members, computed within each seed.

    Raises:
        ValueError: if the ``seed`` column has missing values.
    """
    keys = _keys(table)
    sel = table[table["metric"] == metric]
    wide = sel.groupby([*keys, "source", "method"])["value"].mean().unstack(
        ["source", "method"])
    if keys == ["sample"]:
        exp = exp_avg_per_sample(sel)
    else:
        parts = [exp_avg_per_sample(g).assign(seed=s) for s, g in sel.groupby("seed")]
        exp = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not exp.empty:
        pooled = exp.groupby([*keys, "method"])["value"].mean().unstack("method")
        pooled.columns = pd.MultiIndex.from_tuples([(EXP_AVG, m) for m in pooled.columns])
        wide = wide.join(pooled, how="outer")
    return wide


def _finite(wide: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    x = wide.reindex(columns=pd.MultiIndex.from_tuples(list(columns))).to_numpy(np.float64)
    return x, np.isfinite(x).all(axis=1)


def paired_rows(wide: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> np.ndarray:
    """The images (rows) on which every one of ``columns`` is finite."""
    x, keep = _finite(wide, columns)
    return x[keep]


def paired_block(
    label: str, wide: pd.DataFrame, columns: Sequence[tuple[str, str]],
    margin: Callable[[np.ndarray], np.ndarray],
) -> Block:
    """The :class:`Block` of ``columns`` on their paired images (:func:`paired_rows`), with the
    seed of each row when ``wide`` is indexed by ``(seed, sample)``; ``x`` may have no row."""
    x, keep = _finite(wide, columns)
    seeds = (wide.index.get_level_values("seed").to_numpy()[keep]
             if "seed" in (wide.index.names or []) else None)
    return Block(label, x[keep], margin, seeds)


def _strata(block: Block) -> list[np.ndarray]:
    """Row indices of each seed of ``block`` (one stratum without seeds)."""
    if block.seeds is None:
        return [np.arange(block.x.shape[0])]
    return [np.flatnonzero(block.seeds == s) for s in pd.unique(block.seeds)]


def bootstrap_means(
    x: np.ndarray, rng: np.random.Generator, n_boot: int,
    strata: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``(n_boot, k)`` column means of resamples of the rows of ``x``, drawn within each of
    ``strata`` (row indices; default: one stratum of all rows)."""
    n = x.shape[0]
    total = np.zeros((n_boot, x.shape[1]))
    for rows in strata if strata is not None else [np.arange(n)]:
        m = len(rows)
        counts = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot)
        total += counts @ x[rows]
    return total / n


def paired_interval(
    blocks: Sequence[Block], *, rng: np.random.Generator, n_boot: int, level: float
) -> tuple[float, float, float, int]:
    """``(estimate, low, high, n)``: the smallest margin over the blocks and its percentile
    bootstrap interval (each block resampled on its own, within each seed); ``n`` is the fewest
    paired images (``(seed, sample)`` units) of a block, and below 2 there is no interval."""
    estimate = min(float(b.margin(b.x.mean(axis=0))) for b in blocks)
    n = min(b.x.shape[0] for b in blocks)
    if n < 2:
        return estimate, math.nan, math.nan, n
    reps = np.min(np.stack([b.margin(bootstrap_means(b.x, rng, n_boot, _strata(b)))
                            for b in blocks]), axis=0)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high), n


def per_image_margins(block: Block) -> np.ndarray:
    """The margin of each paired image: ``block.margin`` linearised at the column means, so
    that their mean is the block's estimate (exact for a difference of columns; for a median of
    columns, the image's value in the median column)."""
    mu = block.x.mean(axis=0)
    h = 1e-6 * max(1.0, float(np.abs(mu).max()))
    step = np.eye(mu.size) * h
    grad = (block.margin(mu + step) - block.margin(mu - step)) / (2 * h)
    return float(block.margin(mu)) + (block.x - mu) @ grad


def sign_flip_p(
    d: np.ndarray, *, rng: np.random.Generator, exact_up_to: int = EXACT_UP_TO,
    n_flips: int = N_FLIPS,
) -> float:
    """One-sided p-value of ``mean(d) > 0`` under the null that each ``d_i`` is symmetric
    about 0: the share of sign flips whose mean is at least the observed one; all ``2**n`` flips
    up to ``exact_up_to`` values, else ``n_flips`` random flips from ``rng`` with the
    ``(b + 1) / (m + 1)`` correction. NaN without a value.

    Example:
        >>> sign_flip_p(np.array([0.1, 0.2, 0.3, 0.4]), rng=np.random.default_rng(0))
        0.0625
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n == 0:
        return math.nan
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= exact_up_to:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(signs @ d / n >= observed - tol))
    hits, done = 0, 0
    while done < n_flips:
        m = min(1000, n_flips - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, n))
        hits += int((signs @ d / n >= observed - tol).sum())
        done += m
    return (hits + 1) / (n_flips + 1)


def paired_p(blocks: Sequence[Block], *, rng: np.random.Generator) -> float:
    """The intersection-union p-value of a claim: the largest of its blocks' one-sided sign-flip
    p-values of the per-image margins (:func:`per_image_margins`, :func:`sign_flip_p`)."""
    return max(sign_flip_p(per_image_margins(b), rng=rng) for b in blocks)


def seeds_of(blocks: Sequence[Block]) -> list:
    """The distinct seeds behind ``blocks`` (``[]`` when they carry none)."""
    found = {s for b in blocks if b.seeds is not None for s in b.seeds.tolist()}
    return sorted(found)


def per_seed_estimates(blocks: Sequence[Block]) -> dict:
    """Per seed, the claim's estimate on that seed's images alone (the smallest margin over the
    blocks with images of that seed)."""
    out = {}
    for s in seeds_of(blocks):
        margins = [float(b.margin(b.x[b.seeds == s].mean(axis=0))) for b in blocks
                   if b.seeds is not None and (b.seeds == s).any()]
        out[s] = min(margins)
    return out
