"""Small-n p-values of the consensus correlations are exact (review ensembling D15)."""

import itertools

import numpy as np
import pytest
from scipy import stats

from concilium.ensemble.consensus import EXACT_P_MAX_N, correlation


def test_four_points_in_perfect_order_have_p_one_in_twelve():
    """2 of the 4! pairings (the order and its reverse) reach |rho| = 1. The t-approximation
    gave 0.0."""
    out = correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert out["spearman_p"] == pytest.approx(2 / 24)
    assert out["pearson_p"] == pytest.approx(2 / 24)


@pytest.mark.parametrize("n", [5, 6, 7])
def test_exact_p_values_by_enumeration(n):
    """Spearman: scipy's exhaustive permutation test (its null is symmetric, so its doubled
    one-sided p is the two-sided one). Pearson: the share of all n! pairings with
    |r| >= |r_obs|, enumerated here with numpy's corrcoef (scipy doubles the one-sided p, which
    differs where the null is not symmetric)."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n) + np.arange(n) * 0.3
    out = correlation(x, y)
    ref = stats.permutation_test((y,), lambda yy: stats.spearmanr(x, yy).statistic,
                                 permutation_type="pairings", n_resamples=np.inf).pvalue
    assert out["spearman_p"] == pytest.approx(ref, rel=1e-9)
    r_obs = abs(np.corrcoef(x, y)[0, 1])
    rs = [abs(np.corrcoef(x, y[list(p)])[0, 1]) for p in itertools.permutations(range(n))]
    assert out["pearson_p"] == pytest.approx(np.mean(np.array(rs) >= r_obs - 1e-12), rel=1e-9)


def test_beyond_the_exact_range_scipys_p_values():
    rng = np.random.default_rng(0)
    n = EXACT_P_MAX_N + 4
    x, y = rng.normal(size=n), rng.normal(size=n)
    out = correlation(x, y)
    assert out["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert out["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
