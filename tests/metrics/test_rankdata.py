"""The shared average-rank helper against scipy, ties and NaN-free rows of every shape."""

import numpy as np
import pytest
import scipy.stats
import torch

from concilium.metrics._common import rankdata, spearman


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 4, 50)])
@pytest.mark.parametrize("ties", [False, True])
def test_rankdata_equals_scipy_average_ranks(shape, ties):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    if ties:
        x = torch.round(x * 2)
    expected = scipy.stats.rankdata(x.numpy(), method="average", axis=-1)
    got = rankdata(x)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), expected)


def test_spearman_equals_scipy_per_row():
    g = torch.Generator().manual_seed(0)
    a = torch.round(torch.randn(4, 30, generator=g) * 2)
    b = torch.randn(4, 30, generator=g)
    got = spearman(a, b)
    for i in range(4):
        assert got[i].item() == pytest.approx(scipy.stats.spearmanr(a[i], b[i])[0], abs=1e-12)
