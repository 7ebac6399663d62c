"""Layer (c), continued: every METRICS entry is named, exported, costed and honest about NaN.

Parametrised over the registry, so a new metric is picked up without editing this file.
"""

from __future__ import annotations

import contextlib
import pkgutil
import warnings

import pytest
import torch
from metric_helpers import FAST, input_x_gradient, make_batch
from torch import nn

import concilium.metrics as metrics
from concilium.metrics import METRICS, MetricWarning, evaluate, evaluate_curve
from concilium.metrics.features import feature_labels
from concilium.metrics.randomisation import randomisable_layers
from concilium.metrics.registry import param_names, register_metric

ALL = METRICS.names()
MODEL_BOUND = [n for n in ALL if METRICS.get(n).needs_model]
WITH_CURVE = [n for n in ALL if METRICS.get(n).curve is not None]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@contextlib.contextmanager
def count_images(model: nn.Module):
    """Count the images that go through ``model.forward`` (a hook removed in ``finally``)."""
    seen = [0]

    def hook(module, args, output):
        seen[0] += args[0].shape[0]

    handle = model.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ALL)
def test_registered_name_is_the_exported_function(name):
    spec = METRICS.get(name)
    assert spec.name == name == spec.fn.__name__
    assert getattr(metrics, name) is spec.fn and name in metrics.__all__
    if spec.curve is not None:
        assert getattr(metrics, spec.curve.__name__) is spec.curve
        assert spec.curve.__name__ in metrics.__all__


def test_no_metric_name_shadows_a_module_of_the_package():
    modules = {m.name for m in pkgutil.iter_modules(metrics.__path__)}
    assert not modules & set(ALL), modules & set(ALL)


@pytest.mark.parametrize("name", WITH_CURVE)
def test_curve_defaults_are_the_metric_defaults(name):
    """``evaluate_curve(name)`` draws the curve the score is read from (same defaults)."""
    spec = METRICS.get(name)
    curve_params = param_names(spec.curve)[0]
    shared = set(curve_params) & set(spec.params)
    assert shared, "a curve shares its metric's parameters"
    assert {k: curve_params[k] for k in shared} == {k: spec.params[k] for k in shared}


@pytest.mark.parametrize("name", ALL)
def test_no_hook_left_on_the_model(name):
    model, images, labels, maps, masks = make_batch()
    evaluate(
        name, maps, images=images, labels=labels, masks=masks, model=model,
        explainer=input_x_gradient, **FAST.get(name, {}),
    )
    assert _hooks(model) == 0


def test_the_counting_hook_is_removed_on_error():
    model = make_batch()[0]
    with pytest.raises(RuntimeError), count_images(model):
        model(torch.rand(1, 2, 10, 10))  # wrong channel count
    assert _hooks(model) == 0


@pytest.mark.parametrize("name", ALL)
def test_nan_comes_with_a_warning(name):
    """A zero (hence constant) map may score NaN, but never silently."""
    model, images, labels, maps, masks = make_batch()
    maps = maps.clone()
    maps[0] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = evaluate(
            name, maps, images=images, labels=labels, masks=masks, model=model,
            explainer=input_x_gradient, **FAST.get(name, {}),
        )
    assert scores.shape == (4,) and torch.isfinite(scores[1:]).all()
    if torch.isnan(scores).any():
        said = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
        assert any(s.startswith(f"{name}:") for s in said), said


@pytest.mark.parametrize("name", ALL)
def test_passes_metadata_counts_the_model_forwards(name):
    """``MetricSpec.passes`` with the default parameters equals the images sent through the
    model per image (an explainer call on one image counts one: ``input_x_gradient`` makes one
    forward pass), up to one extra pass per call; where the registry says the count is only a
    bound (``passes_exact``: the cost depends on the image, e.g. one pass per superpixel), no
    image costs more."""
    spec = METRICS.get(name)
    size = (15, 15)  # >= 224 pixels: faithfulness_correlation's default subset
    if not spec.needs_model:
        assert spec.model_passes(size=size) == 0
        return
    model, images, labels, maps, masks = make_batch(n=2, size=size[0])
    counted = []
    for n in (1, 2):
        with count_images(model) as seen:
            evaluate(
                name, maps[:n], images=images[:n], labels=labels[:n], masks=masks[:n],
                model=model, explainer=input_x_gradient,
            )
        counted.append(seen[0])
    assert _hooks(model) == 0
    expected = spec.model_passes(size=size, layers=len(randomisable_layers(model)))
    if not spec.model_passes_exact():
        assert 0 < counted[0] <= expected + 1 and counted[1] <= 2 * expected + 1
        return
    per_image, fixed = counted[1] - counted[0], 2 * counted[0] - counted[1]
    assert per_image == expected >= 0
    assert fixed in (0, 1) and expected > 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("deletion", {"step": 10}),
        ("pixel_flipping", {"step": 7}),
        ("monotonicity_correlation", {"nr_samples": 4, "baseline": "black"}),
        ("monotonicity_correlation", {"nr_samples": 4, "baseline": "uniform", "step": 30}),
        ("infidelity", {"perturb_patch_sizes": (2, 5), "baseline": "uniform"}),
        ("max_sensitivity", {"nr_samples": 3, "return_nan_when_prediction_changes": True}),
        ("road", {"percentages": (10, 20)}),
        ("irof", {"features": "patch:3"}),
        ("region_perturbation", {"features": "pixels", "regions_evaluation": 30}),
        ("selectivity", {"features": "patch:4"}),
        ("faithfulness_estimate", {"features": "patch:2", "features_in_step": 3}),
        ("sensitivity_n", {"features": "patch:2"}),
        ("deletion", {"features": "patch:3"}),
        ("insertion", {"features": "slic:n_segments=20", "step": 12.5}),
        ("pixel_flipping", {"features": "patch:2", "step": 3}),
        ("faithfulness_correlation", {"features": "slic:n_segments=20", "nr_runs": 5,
                                      "subset_size": 3}),
        ("monotonicity_correlation", {"features": "patch:3", "nr_samples": 2}),
        ("monotonicity_correlation", {"features": "slic:n_segments=20", "unit": "percent",
                                      "step": 30, "baseline": "black"}),
        ("sufficiency", {"features": "slic:n_segments=20"}),
        ("road", {"features": "patch:2", "percentages": (10, 50)}),
        ("non_sensitivity", {"features": "patch:3", "step": 2}),
    ],
)
def test_passes_follow_the_parameters(name, params):
    model, images, labels, maps, _ = make_batch(n=1, size=10)
    with count_images(model) as seen:
        evaluate(
            name, maps, images=images, labels=labels, model=model, explainer=input_x_gradient,
            **params,
        )
    assert METRICS.get(name).model_passes_exact(params)
    assert seen[0] == METRICS.get(name).model_passes(params, size=(10, 10))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("irof", {}),
        ("irof", {"features": "slic:n_segments=20"}),
        ("region_perturbation", {"features": "slic:n_segments=30"}),
        ("selectivity", {"features": "slic:n_segments=10,compactness=1"}),
        ("faithfulness_estimate", {"features": "slic:n_segments=30"}),
        ("sensitivity_n", {"features": "slic:n_segments=30"}),
        ("non_sensitivity", {"features": "slic:n_segments=30", "step": 2}),
    ],
)
def test_passes_of_superpixel_features_are_a_bound_met_by_the_segments(name, params):
    """With superpixels the count is an upper bound (``model_passes_exact`` is False); the
    passes actually made follow the image's own number of segments."""
    model, images, labels, maps, _ = make_batch(n=3, size=12)
    spec = METRICS.get(name)
    assert not spec.model_passes_exact(params)
    bound = spec.model_passes(params, size=(12, 12))
    features = params.get("features", "slic")
    counts = feature_labels(features, images)[1]
    with count_images(model) as seen:
        evaluate(name, maps, images=images, labels=labels, model=model, **params)
    assert seen[0] <= 3 * bound
    if name in ("irof", "selectivity"):  # one pass per segment (+ f(x) for IROF)
        assert seen[0] == int(counts.sum()) + (3 if name == "irof" else 0)
    if name == "non_sensitivity":  # f(x), then one pass per group of `step` segments
        assert seen[0] == 3 + int(((counts + 1) // 2).sum())


def test_passes_reject_unknown_parameters():
    with pytest.raises(ValueError, match="unknown parameter.*stepp"):
        METRICS.get("deletion").model_passes({"stepp": 3}, size=(8, 8))


def test_a_metric_bound_to_the_model_must_declare_its_cost():
    with pytest.raises(ValueError, match="passes="):
        register_metric(category="faithfulness", higher_is_better=True, needs_model=True)


@pytest.mark.parametrize("name", ["deletion", "insertion", "infidelity", "sufficiency"])
def test_uniform_baseline_is_seeded_by_default_and_leaves_the_global_rng(name):
    model, images, labels, maps, _ = make_batch()
    rng = torch.get_rng_state()
    first = evaluate(name, maps, images=images, labels=labels, model=model, baseline="uniform")
    second = evaluate(name, maps, images=images, labels=labels, model=model, baseline="uniform")
    assert torch.equal(first, second)
    assert torch.equal(rng, torch.get_rng_state())


def test_curve_of_insertion_is_the_insertion_curve():
    model, images, labels, maps, _ = make_batch()
    fractions, curve = evaluate_curve(
        "insertion", maps, images=images, labels=labels, model=model, step=25
    )
    score = evaluate("insertion", maps, images=images, labels=labels, model=model, step=25)
    assert torch.allclose(torch.trapezoid(curve.double(), fractions, dim=1), score)
    # the insertion curve starts from the blurred image and ends at the image itself
    full = metrics.perturb.target_scores(model, images, labels, softmax=True, batch_size=8)
    assert torch.allclose(curve[:, -1], full)
