"""Every normalisation, reducer and similarity against a slow, obvious re-implementation in plain
Python (loops over pixels, statistics by their textbook definition) on tiny random inputs, in the
way zennit tests each rule against a slower, simpler one.

Parametrised over the registries: a new entry fails here until its reference is written below
(one small function), which is the point: it is checked against a second spelling of its
definition, not against itself.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from concilium.ensemble.normalise import NORMALISATIONS, normalise
from concilium.ensemble.reduce import REDUCERS, reduce
from concilium.ensemble.similarity import SIMILARITIES, similarity


def _ranks(xs: list[float]) -> list[float]:
    """0-based ranks, ties sharing their mean rank."""
    return [sum(y < x for y in xs) + (sum(y == x for y in xs) - 1) / 2 for x in xs]


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _scaled(xs: list[float], scale: float) -> list[float]:
    return [0.0 if scale == 0 else x / scale for x in xs]


def _median_iqr(xs: list[float]) -> list[float]:
    med = statistics.median(xs)
    iqr = _quantile(xs, 0.75) - _quantile(xs, 0.25)
    scale = iqr if iqr > 0 else max(abs(x - med) for x in xs)
    return _scaled([x - med for x in xs], scale)


def _min_max(xs: list[float]) -> list[float]:
    return _scaled([x - min(xs) for x in xs], max(xs) - min(xs))


def _z_score(xs: list[float]) -> list[float]:
    return _scaled([x - statistics.fmean(xs) for x in xs], statistics.pstdev(xs))


#: name -> the normalisation of one map's pixels (a flat list).
SLOW_NORMALISATIONS = {
    "none": lambda xs: list(xs),
    "max_abs": lambda xs: _scaled(xs, max(abs(x) for x in xs)),
    "min_max": _min_max,
    "l1": lambda xs: _scaled(xs, sum(abs(x) for x in xs)),
    "l2": lambda xs: _scaled(xs, math.sqrt(sum(x * x for x in xs))),
    "z_score": _z_score,
    "second_moment": lambda xs: _scaled(xs, math.sqrt(sum(x * x for x in xs) / len(xs))),
    "median_iqr": _median_iqr,
    "rank": lambda xs: [r / (len(xs) - 1) for r in _ranks(xs)],
}


def _trimmed_mean(vs: list[float], trim: float) -> float:
    cut = int(trim * len(vs))
    return statistics.fmean(sorted(vs)[cut:len(vs) - cut])


def _max_abs(vs: list[float]) -> float:
    best = vs[0]
    for v in vs[1:]:
        if abs(v) > abs(best):  # ties keep the first
            best = v
    return best


#: name -> the reduction of one pixel's K values; ``rank_mean`` needs whole maps (below).
SLOW_REDUCERS = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "min": min,
    "max": max,
    "max_abs": _max_abs,
    "trimmed_mean": lambda vs: _trimmed_mean(vs, 0.2),
    "rank_mean": None,
}


def _pearson(a: list[float], b: list[float]) -> float:
    if a == b:
        return 1.0
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return num / den if den > 0 else 0.0


def _cosine(a: list[float], b: list[float]) -> float:
    if a == b:
        return 1.0
    den = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / den if den > 0 else 0.0


SLOW_SIMILARITIES = {
    "cosine": _cosine,
    "pearson": _pearson,
    "spearman": lambda a, b: 1.0 if a == b else _pearson(_ranks(a), _ranks(b)),
}


def _maps(seed: int, shape=(3, 3, 4)) -> torch.Tensor:
    """Tiny maps with ties and a constant map among them (the edge cases)."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randint(-3, 4, shape, generator=gen).double() / 2
    maps[-1] = 0.5  # a constant map
    return maps


def _pixels(m: torch.Tensor) -> list[float]:
    return [float(v) for v in m.flatten()]


@pytest.mark.parametrize("name", NORMALISATIONS.names())
def test_normalisation_matches_its_slow_reference(name):
    assert name in SLOW_NORMALISATIONS, f"write a slow reference for normalisation {name!r} here"
    maps = _maps(0)
    got = normalise(maps, name)
    for i in range(maps.shape[0]):
        expected = torch.tensor(SLOW_NORMALISATIONS[name](_pixels(maps[i])),
                                dtype=maps.dtype).reshape(maps.shape[1:])
        torch.testing.assert_close(got[i], expected, msg=f"{name}, map {i}")


@pytest.mark.parametrize("name", REDUCERS.names())
def test_reducer_matches_its_slow_reference(name):
    assert name in SLOW_REDUCERS, f"write a slow reference for reducer {name!r} here"
    stack = _maps(1, (5, 2, 3, 3))  # K=5 voters, N=2 images
    got = reduce(stack, name)
    if name == "rank_mean":  # rank each voter's map, then average the ranks
        ranked = [[SLOW_NORMALISATIONS["rank"](_pixels(stack[k, n])) for n in range(2)]
                  for k in range(5)]
        expected = torch.tensor([[statistics.fmean(ranked[k][n][p] for k in range(5))
                                  for p in range(9)] for n in range(2)], dtype=stack.dtype)
    else:
        fn = SLOW_REDUCERS[name]
        expected = torch.tensor([[fn([float(stack[k, n].flatten()[p]) for k in range(5)])
                                  for p in range(9)] for n in range(2)], dtype=stack.dtype)
    torch.testing.assert_close(got, expected.reshape(2, 3, 3))


@pytest.mark.parametrize("name", SIMILARITIES.names())
def test_similarity_matches_its_slow_reference(name):
    assert name in SLOW_SIMILARITIES, f"write a slow reference for similarity {name!r} here"
    a, b = _maps(2).float(), _maps(3).float()
    b[0] = a[0]  # identical maps
    b[1] = 0.25  # a constant map against a varying one: 0 by definition
    got = similarity(a, b, name)
    expected = [SLOW_SIMILARITIES[name](_pixels(a[i]), _pixels(b[i])) for i in range(a.shape[0])]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), atol=1e-6, rtol=1e-5)
