"""Layer (d) for the patch-feature metrics: agreement with Quantus 0.6.0 on the same tiny model,
images and maps, at both libraries' defaults, and where Quantus diverges (sensitivity-n), a test
that shows how.

A Quantus "feature" is one channel value, so with C channels Quantus's ``features_in_step =
C * k`` equals our ``features_in_step = k`` at ``patch_size=1``. Quantus's ``calculate_auc`` calls
``np.trapz``, gone in NumPy 2.4; its ``get_auc_score`` per image is ``np.trapezoid`` of its curve.
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import make_batch

from concilium.metrics import METRICS, evaluate
from concilium.metrics._common import pearson
from concilium.metrics.features import patch_grid
from concilium.metrics.regions import (
    feature_order,
    feature_relevance,
    region_perturbation_drops,
    region_scores,
)

# a Pearson correlation of float32 model outputs: the CPU's float32 kernels (AVX-512 vs AVX2,
# batched vs single) move it by up to ~1e-5; a wrong ordering or feature set moves it by far more
CORR_ATOL = 5e-5


def _np(t):
    return t.detach().cpu().numpy()


def _quantus(metric, batch):
    model, images, labels, maps, _ = batch
    return np.asarray(
        metric(
            model=model,
            x_batch=_np(images),
            y_batch=_np(labels),
            a_batch=_np(maps)[:, None],
            channel_first=True,
            device="cpu",
        ),
        dtype=float,
    )


def _ours(name, batch, **params):
    model, images, labels, maps, _ = batch
    return _np(evaluate(name, maps, images=images, labels=labels, model=model, **params))


def test_defaults_are_quantus_defaults():
    for ours, theirs, shared in (
        ("region_perturbation", quantus.RegionPerturbation, ("patch_size", "regions_evaluation")),
        ("selectivity", quantus.Selectivity, ("patch_size",)),
        ("faithfulness_estimate", quantus.FaithfulnessEstimate, ("features_in_step",)),
        ("sensitivity_n", quantus.SensitivityN, ("features_in_step", "n_max_percentage")),
    ):
        metric = theirs(disable_warnings=True)
        params = METRICS.get(ours).params
        assert {k: params[k] for k in shared} == {k: getattr(metric, k) for k in shared}
        assert (params["abs"], params["normalise"]) == (metric.abs, metric.normalise)
        assert params["baseline"] == "black"  # Quantus perturb_baseline="black": each image's min


@pytest.mark.parametrize(("c", "size", "patch_size"), [(1, 16, 8), (1, 13, 4), (3, 16, 5)])
def test_region_perturbation_matches_quantus(c, size, patch_size):
    batch = make_batch(n=4, c=c, size=size)
    model, images, labels, maps, _ = batch
    theirs = _quantus(
        quantus.RegionPerturbation(patch_size=patch_size, disable_warnings=True), batch
    )
    curve = region_perturbation_drops(
        maps, images=images, labels=labels, model=model, patch_size=patch_size
    )
    np.testing.assert_allclose(_np(curve), theirs, atol=1e-6)
    scores = _ours("region_perturbation", batch, patch_size=patch_size)
    np.testing.assert_allclose(scores, np.trapezoid(theirs, axis=1), atol=1e-6)


def test_region_perturbation_stops_after_regions_evaluation_like_quantus():
    batch = make_batch(n=3, size=16)
    theirs = _quantus(
        quantus.RegionPerturbation(patch_size=2, regions_evaluation=7, disable_warnings=True), batch
    )
    assert theirs.shape == (3, 7)
    ours = _ours("region_perturbation", batch, patch_size=2, regions_evaluation=7)
    np.testing.assert_allclose(ours, np.trapezoid(theirs, axis=1), atol=1e-6)


@pytest.mark.parametrize(("c", "size", "patch_size"), [(1, 16, 8), (1, 13, 4), (3, 16, 5)])
def test_selectivity_matches_quantus(c, size, patch_size):
    batch = make_batch(n=4, c=c, size=size)
    theirs = _quantus(quantus.Selectivity(patch_size=patch_size, disable_warnings=True), batch)
    ours = _ours("selectivity", batch, patch_size=patch_size)
    np.testing.assert_allclose(ours, np.trapezoid(theirs, axis=1), atol=1e-6)


@pytest.mark.parametrize(("c", "size", "k"), [(1, 10, 1), (1, 16, 4), (3, 12, 1), (3, 12, 2)])
def test_faithfulness_estimate_matches_quantus(c, size, k):
    batch = make_batch(n=4, c=c, size=size)
    theirs = _quantus(
        quantus.FaithfulnessEstimate(features_in_step=c * k, disable_warnings=True), batch
    )
    np.testing.assert_allclose(_ours("faithfulness_estimate", batch, features_in_step=k), theirs,
                               atol=CORR_ATOL)  # fmt: skip


def test_quantus_sensitivity_n_is_one_value_per_n_across_the_batch_with_per_step_relevance():
    """Quantus 0.6.0's SensitivityN returns (``return_aggregate=False``) ``n_max`` values, each a
    Pearson correlation across the batch's images at one ``n``, between the cumulative drop ``f(x) - f(x_n)`` and the
    relevance of the ``n``-th feature alone: reproduced here from our drops (which therefore
    agree with Quantus's) and per-step sums; by default (``return_aggregate=True``) their mean, one
    number for the whole batch. Ours is one value per image, the correlation over
    ``n`` of the cumulative relevance with the same drops (docs/metrics.md)."""
    batch = make_batch(n=5, size=8)
    model, images, labels, maps, _ = batch
    theirs = _quantus(quantus.SensitivityN(return_aggregate=False, disable_warnings=True), batch)
    n_max = int(0.8 * 64)
    assert theirs.shape == (n_max,)
    default = _quantus(quantus.SensitivityN(disable_warnings=True), batch)
    np.testing.assert_allclose(default, [theirs.mean()], atol=1e-9)

    grid = patch_grid(8, 8, 1)
    relevance = feature_relevance(maps, grid, 64)
    ranks = feature_order(relevance)
    per_step = torch.sort(relevance, dim=1, descending=True).values[:, :n_max]
    y0 = model(images).softmax(1).gather(1, labels[:, None])
    ys = region_scores(
        model, images, labels, features=grid, ranks=ranks, n_variants=n_max, cumulative=True,
        baseline="black", softmax=True, batch_size=64, generator=None,
    )  # fmt: skip
    drops = (y0 - ys).double()
    np.testing.assert_allclose(_np(pearson(drops.T, per_step.T)), theirs, atol=CORR_ATOL)

    ours = _ours("sensitivity_n", batch)
    assert ours.shape == (5,)
    np.testing.assert_allclose(ours, _np(pearson(relevance.sort(1, descending=True).values
                                                 .cumsum(1)[:, :n_max], drops)), atol=CORR_ATOL)  # fmt: skip


def test_quantus_lerf_region_perturbation_is_ours_on_the_negated_map():
    """Ours is MoRF only (docs/metrics.md, item 20): Quantus's ``order="lerf"`` curve is ours on
    ``-maps`` (no ties in these maps), with the opposite score direction."""
    batch = make_batch(n=3, size=12)
    model, images, labels, maps, _ = batch
    theirs = _quantus(
        quantus.RegionPerturbation(patch_size=4, order="lerf", disable_warnings=True), batch
    )
    assert "order" not in METRICS.get("region_perturbation").params
    ours = region_perturbation_drops(-maps, images=images, labels=labels, model=model, patch_size=4)
    np.testing.assert_allclose(_np(ours), theirs, atol=1e-6)
