"""The consensus scatter plots: least-squares line with a seeded bootstrap band, one panel for
accuracy and one for the member's own localisation."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from concilium.report.figures import consensus_scatter_figure, line_band
from concilium.report.summary import consensus_points


def test_line_band_is_the_least_squares_line_and_collapses_on_exact_points():
    x = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    grid = np.linspace(0.1, 0.9, 7)
    fit, low, high = line_band(x, 2 * x + 1, grid, rng=np.random.default_rng(0))
    np.testing.assert_allclose(fit, 2 * grid + 1)
    np.testing.assert_allclose(low, fit)
    np.testing.assert_allclose(high, fit)


def test_line_band_covers_the_line_widens_with_noise_and_is_seeded():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=15)
    grid = np.linspace(0, 1, 11)
    quiet = x + 0.01 * rng.normal(size=15)
    noisy = x + 0.3 * rng.normal(size=15)
    fit, low, high = line_band(x, noisy, grid, rng=np.random.default_rng(0))
    assert (low <= fit + 1e-12).all() and (fit <= high + 1e-12).all()
    slope, intercept = np.polyfit(x, noisy, 1)
    np.testing.assert_allclose(fit, slope * grid + intercept)
    _, ql, qh = line_band(x, quiet, grid, rng=np.random.default_rng(0))
    assert (qh - ql).mean() < 0.2 * (high - low).mean()
    again = line_band(x, noisy, grid, rng=np.random.default_rng(0))
    other = line_band(x, noisy, grid, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again[1], low)
    assert not np.array_equal(other[1], low)
    with pytest.raises(ValueError, match="distinct x"):
        line_band(np.ones(4), np.arange(4.0), grid, rng=np.random.default_rng(0))


def _png_size(uri: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size


def test_scatter_figure_draws_one_panel_per_column_present():
    table = pd.DataFrame({"member": [f"m{i}" for i in range(6)] * 2,
                          "method": ["a"] * 6 + ["b"] * 6,
                          "consensus_score": np.linspace(0.2, 0.8, 12),
                          "accuracy": np.linspace(0.5, 0.9, 12),
                          "localisation": np.linspace(0.7, 0.6, 12)})
    points = consensus_points(table)
    assert list(points.columns) == ["member", "consensus_score", "accuracy", "localisation"]
    assert len(points) == 6  # one row per member, averaged over methods
    both = _png_size(consensus_scatter_figure(points))
    one = _png_size(consensus_scatter_figure(points.drop(columns="localisation")))
    assert both[0] > 1.6 * one[0] and both[1] == pytest.approx(one[1], abs=4)
