"""Claim 2b: consensus score against held-out accuracy and against the member's own
localisation, each with Fisher's z interval and a permutation p-value (exact for small n)."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from concilium.ensemble.consensus import correlation
from concilium.metrics.claims import consensus_accuracy_claim, consensus_localisation_claim


def _points(score, **columns) -> pd.DataFrame:
    return pd.DataFrame({"member": [f"m{i}" for i in range(len(score))],
                         "consensus_score": score, **columns})


def _slow_exact_p(x, y) -> float:
    """Every pairing of x with an order of y, counted by hand."""
    r = abs(np.corrcoef(x, y)[0, 1])
    hits = [abs(np.corrcoef(x, np.array(p))[0, 1]) >= r - 1e-12
            for p in itertools.permutations(y)]
    return sum(hits) / math.factorial(len(x))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_small_committees_get_the_exact_permutation_p_value(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    found = consensus_accuracy_claim(_points(x, accuracy=y))
    assert found.p_value == pytest.approx(_slow_exact_p(x, y), abs=1e-12)
    # the same number as the consensus_correlations table (ensemble.consensus.correlation)
    assert found.p_value == pytest.approx(correlation(x, y)["pearson_p"], abs=1e-12)
    assert "permutation" in found.test and found.estimate == pytest.approx(
        np.corrcoef(x, y)[0, 1])


def test_four_members_in_perfect_order_are_not_significant():
    """The t-approximation gave p = 0.0 here (review D15); exactly it is 2/24."""
    found = consensus_accuracy_claim(_points([0.1, 0.2, 0.3, 0.4], accuracy=[1, 2, 3, 4]))
    assert found.p_value == pytest.approx(1 / 12)
    assert found.estimate == pytest.approx(1.0) and found.verdict == "held"


def test_large_committees_draw_pairings_from_the_generator():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    y = 0.6 * x + rng.normal(size=15)
    points = _points(x, accuracy=y)
    a = consensus_accuracy_claim(points, rng=np.random.default_rng(1))
    b = consensus_accuracy_claim(points, rng=np.random.default_rng(1))
    c = consensus_accuracy_claim(points, rng=np.random.default_rng(2))
    assert a.p_value == b.p_value != c.p_value
    assert a.p_value == pytest.approx(correlation(x, y)["pearson_p"], abs=0.01)
    assert consensus_accuracy_claim(points).p_value == consensus_accuracy_claim(points).p_value


@pytest.mark.parametrize(("sign", "verdict"), [(1.0, "held"), (-1.0, "not held")])
def test_localisation_claim_reads_the_localisation_column(sign, verdict):
    score = np.linspace(0.2, 0.9, 15)
    points = _points(score, accuracy=np.full(15, np.nan),
                     localisation=sign * score + 0.01 * np.sin(np.arange(15)))
    found = consensus_localisation_claim(points)
    assert found.verdict == verdict and found.n == 15
    assert "localisation" in found.claim and found.p_value < 0.001
    assert consensus_accuracy_claim(points).verdict == "not measured"  # no finite accuracy


def test_claims_without_their_column_are_not_measured():
    points = _points([0.1, 0.5, 0.3, 0.9], accuracy=[0.6, 0.7, 0.65, 0.8])
    assert consensus_localisation_claim(points).verdict == "not measured"
    assert consensus_localisation_claim(None).verdict == "not measured"
    assert consensus_accuracy_claim(points).verdict != "not measured"
