"""Metric-weighted ensembles and the kernel-ridge supervised ensemble."""

import pytest
import torch

from concilium.ensemble.krr import krr_ensemble
from concilium.ensemble.normalise import normalise
from concilium.ensemble.weighted import metric_weights, weighted_ensemble


def test_metric_weights_hand_values_and_direction():
    scores = {"relevance_mass": {"a": 1.0, "b": 2.0, "c": 3.0}}
    w = metric_weights(scores, methods=["a", "b", "c"], higher_is_better={"relevance_mass": True},
                       clip_negative=False)
    std = (2 / 3) ** 0.5
    torch.testing.assert_close(w, torch.tensor([-1 / std, 0.0, 1 / std]))
    # lower is better flips the sign; clipping keeps only the above-average method
    w = metric_weights(scores, methods=["a", "b", "c"], higher_is_better={"relevance_mass": False})
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.0]))


def test_metric_weights_zero_variance_gives_uniform():
    scores = {"m": {"a": 0.5, "b": 0.5}, "n": {"a": 1.0, "b": 1.0}}
    w = metric_weights(scores, methods=["a", "b"], higher_is_better={"m": True, "n": False})
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="no score for methods"):
        metric_weights(scores, methods=["a", "z"], higher_is_better={"m": True, "n": True})


def test_metric_missing_from_metric_weights_is_an_error_naming_it():
    """Review D17: a metric left out of ``metric_weights`` silently got weight 0."""
    scores = {"relevance_mass": {"a": 1.0, "b": 2.0}, "deletion": {"a": 0.1, "b": 0.3}}
    hib = {"relevance_mass": True, "deletion": False}
    with pytest.raises(ValueError, match="deletion"):
        metric_weights(scores, methods=["a", "b"], higher_is_better=hib,
                       metric_weights={"relevance_mass": 1.0})
    w = metric_weights(scores, methods=["a", "b"], higher_is_better=hib,
                       metric_weights={"relevance_mass": 1.0, "deletion": 0.0})
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0]))


def test_weighted_ensemble_hand_value():
    a, b = torch.rand(2, 3, 3), torch.rand(2, 3, 3)
    out = weighted_ensemble({"a": a, "b": b}, [0.25, 0.75], normalisation="none")
    torch.testing.assert_close(out, 0.25 * a + 0.75 * b)
    torch.testing.assert_close(weighted_ensemble([a], [1.0]), normalise(a))
    with pytest.raises(ValueError, match="one weight per map"):
        weighted_ensemble([a, b], [1.0])


def test_krr_learns_the_informative_method_out_of_fold():
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(12, 8, 8, dtype=torch.bool)
    for i in range(12):
        r, c = torch.randint(0, 4, (2,), generator=gen).tolist()
        masks[i, r : r + 4, c : c + 4] = True
    informative = masks.float() + 0.1 * torch.randn(12, 8, 8, generator=gen)
    noise = torch.randn(12, 8, 8, generator=gen)
    pred = krr_ensemble({"good": informative, "noise": noise}, masks, folds=3, seed=0)
    assert pred.shape == masks.shape
    inside, outside = pred[masks].mean(), pred[~masks].mean()
    assert inside - outside > 0.5
    again = krr_ensemble({"good": informative, "noise": noise}, masks, folds=3, seed=0)
    torch.testing.assert_close(pred, again)  # seeded


def test_krr_bad_inputs():
    maps = torch.rand(1, 4, 5, 5)
    with pytest.raises(ValueError, match="masks"):
        krr_ensemble(maps, None)
    with pytest.raises(ValueError, match="masks must be"):
        krr_ensemble(maps, torch.zeros(3, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="folds"):
        krr_ensemble(maps, torch.zeros(4, 5, 5, dtype=torch.bool), folds=9)


def test_krr_prediction_of_an_image_ignores_its_own_mask():
    """Review section 3: the out-of-fold test asserted contrast and determinism only. Changing
    image i's own mask must leave its prediction unchanged (it is not in the fold's training
    rows) and move the predictions of images in other folds."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(12, 8, 8, dtype=torch.bool)
    for i in range(12):
        r, c = torch.randint(0, 4, (2,), generator=gen).tolist()
        masks[i, r : r + 4, c : c + 4] = True
    maps = {"good": masks.float() + 0.1 * torch.randn(12, 8, 8, generator=gen),
            "noise": torch.randn(12, 8, 8, generator=gen)}
    before = krr_ensemble(maps, masks, folds=3, seed=0)
    changed = masks.clone()
    changed[0] = ~changed[0]
    after = krr_ensemble(maps, changed, folds=3, seed=0)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert (after[1:] - before[1:]).abs().amax() > 1e-3
