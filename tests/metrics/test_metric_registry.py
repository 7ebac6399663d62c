"""Layer (c): checks parametrised over every registered metric, and the evaluate() contract."""

from __future__ import annotations

import copy

import pytest
import torch
from metric_helpers import input_x_gradient, make_batch

from concilium.metrics import CATEGORIES, METRICS, evaluate, evaluate_curve, metrics_in

# small parameters so that every metric runs in well under a second on 10x10 images
FAST = {
    "top_k_intersection": {"k": 20},
    "faithfulness_correlation": {"nr_runs": 10, "subset_size": 10},
    "pixel_flipping": {"step": 10},
    "monotonicity": {"step": 10},
    "monotonicity_correlation": {"nr_samples": 3, "step": 10},
    "road": {"percentages": (10, 50, 90)},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},
    "local_lipschitz": {"nr_samples": 3},
    "consistency": {"discretise": "first_n_sign"},  # random maps share no top-5 key
}
ALL = METRICS.names()


def _run(name, batch, generator=None, **extra):
    model, images, labels, maps, masks = batch
    return evaluate(
        name,
        maps,
        images=images,
        labels=labels,
        masks=masks,
        model=model,
        explainer=input_x_gradient,
        generator=generator,
        **FAST.get(name, {}),
        **extra,
    )


def test_registry_holds_the_issue_metrics():
    required = {
        "pointing_game",
        "relevance_mass",
        "relevance_rank",
        "top_k_intersection",
        "auc",
        "average_precision",
        "iou",
        "f1_at_quarter_max",
        "com_distance",
        "mask_correlation",
        "faithfulness_correlation",
        "pixel_flipping",
        "deletion",
        "insertion",
        "aopc",
        "monotonicity",
        "monotonicity_correlation",
        "road",
        "infidelity",
        "sufficiency",
        "max_sensitivity",
        "avg_sensitivity",
        "local_lipschitz",
        "sparseness",
        "complexity",
        "effective_complexity",
        "mprt",
        "random_logit",
    }
    assert required <= set(ALL)
    for _name, spec in METRICS.items():
        assert spec.category in CATEGORIES
        assert isinstance(spec.higher_is_better, bool)
        assert spec.needs_explainer <= spec.needs_model  # an explainer always needs the model
        assert not spec.stochastic or "generator" in spec.data_args


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_finite_and_seeded(name):
    batch = make_batch()
    first = _run(name, batch, generator=torch.Generator().manual_seed(7))
    second = _run(name, batch, generator=torch.Generator().manual_seed(7))
    assert first.shape == (4,) and first.dtype == torch.float64
    assert torch.isfinite(first).all(), first
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "name", [n for n in ALL if not (METRICS.get(n).stochastic or METRICS.get(n).batch_relative)]
)
def test_score_depends_only_on_its_own_image(name):
    """The score of image 0 is the same alone as in a batch (no batch-wide normalisation)."""
    model, images, labels, maps, masks = make_batch()
    maps = maps.clone()
    maps[1:] *= 1000.0  # a batch-wide max would change image 0's normalised map
    together = _run(name, (model, images, labels, maps, masks))
    alone = _run(name, (model, images[:1], labels[:1], maps[:1], masks[:1]))
    assert together[0].item() == pytest.approx(alone[0].item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", [n for n in ALL if METRICS.get(n).needs_model])
def test_model_and_global_rng_untouched(name):
    batch = make_batch()
    model = batch[0]
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    _run(name, batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) kk .*valid parameters.*k=1000"):
        evaluate(
            "top_k_intersection", torch.rand(1, 4, 4), masks=torch.ones(1, 4, 4, dtype=bool), kk=3
        )


def test_unknown_metric_lists_names():
    with pytest.raises(ValueError, match="valid names: .*auc"):
        evaluate("aucc", torch.rand(1, 4, 4))


@pytest.mark.parametrize(
    ("name", "missing"),
    [("auc", "masks"), ("deletion", "images"), ("mprt", "explainer")],
)
def test_missing_input_is_named(name, missing):
    model, images, labels, maps, masks = make_batch()
    kwargs = {
        "images": images,
        "labels": labels,
        "masks": masks,
        "model": model,
        "explainer": input_x_gradient,
    }
    kwargs[missing] = None
    with pytest.raises(ValueError, match=missing):
        evaluate(name, maps, **kwargs)


def test_bad_shapes_raise_with_a_fix():
    with pytest.raises(ValueError, match="reduce the channel axis"):
        evaluate("sparseness", torch.rand(1, 3, 4, 4))
    with pytest.raises(TypeError, match="bool"):
        evaluate("auc", torch.rand(1, 4, 4), masks=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="k must be in"):
        evaluate("top_k_intersection", torch.rand(1, 4, 4), masks=torch.ones(1, 4, 4, dtype=bool))
    with pytest.raises(ValueError, match="unknown baseline"):
        _run("deletion", make_batch(), baseline="grey")


def test_curves():
    model, images, labels, maps, _ = make_batch()
    fractions, curve = evaluate_curve(
        "deletion", maps, images=images, labels=labels, model=model, step=25
    )
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and curve.shape == (4, 5)
    layers, per_layer = evaluate_curve(
        "mprt", maps, images=images, labels=labels, model=model, explainer=input_x_gradient
    )
    assert layers == ["fc", "conv"] and per_layer.shape == (4, 2)
    with pytest.raises(ValueError, match="has no curve"):
        evaluate_curve("auc", maps)


def test_metrics_in_resolves_categories_and_names():
    picked = metrics_in("complexity,auc")
    family = [n for n in metrics_in("all") if METRICS.get(n).category == "complexity"]
    assert {"complexity", "sparseness"} <= set(family)  # not a frozen list: more may come
    assert picked == [*family, "auc"]  # the family in registry order, then the name
    assert set(metrics_in("all")) == set(ALL)
    with pytest.raises(ValueError, match="unknown metric or category 'nope'"):
        metrics_in("nope")


def test_baselines_quantus_semantics_and_explain_specs():
    from concilium.explain.baselines import parse_baseline
    from concilium.metrics import make_baseline

    model, images, labels, maps, _ = make_batch()
    black = make_baseline(images, "black")
    assert torch.equal(black[:, 0, 0, 0], images.flatten(1).amin(1))
    mean = make_baseline(images, "image_mean")
    assert torch.allclose(mean[:, 0, 0, 0], images.flatten(1).mean(1))
    assert torch.equal(mean, parse_baseline("image_mean")(images, labels))
    blur = make_baseline(images, "blur:sigma=1", labels=labels)
    assert torch.allclose(blur, parse_baseline("blur:sigma=1")(images, labels))
    seen = {}

    def provider(x, t):
        seen["labels"] = t
        return torch.full_like(x, 0.5)

    out = make_baseline(images, provider, labels=labels)
    assert torch.equal(seen["labels"], labels) and torch.all(out == 0.5)
    with pytest.raises(ValueError, match="unknown baseline 'grey'.*blur"):
        make_baseline(images, "grey")
    with pytest.raises(ValueError, match="needs a tensor.*'image_mean'"):
        make_baseline(images, "mean")  # explain's "mean" is a given tensor, one vocabulary
    with pytest.raises(TypeError, match="baseline must be"):
        make_baseline(images, [0.0])


def test_uniform_baseline_draws_from_the_generator_passed_in():
    from concilium.explain.baselines import UniformBaseline
    from concilium.metrics import make_baseline

    images, labels = make_batch()[1:3]
    g1, g2, g3 = (torch.Generator().manual_seed(3) for _ in range(3))
    first = make_baseline(images, "uniform", generator=g1)
    assert torch.equal(first, torch.rand(images.shape, generator=g2))  # U(0, 1) per value
    assert torch.equal(first, UniformBaseline(generator=g3)(images, labels))
    assert not torch.equal(first, make_baseline(images, "uniform", generator=g1))  # a fresh draw
    low_high = make_baseline(images, "uniform:low=0.2,high=0.4", generator=g1)
    assert low_high.min() >= 0.2 and low_high.max() <= 0.4
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="is random: pass generator="):
        make_baseline(images, "uniform")
    with pytest.raises(ValueError, match="drop seed="):
        make_baseline(images, "uniform:seed=1", generator=g1)
    assert torch.equal(rng, torch.get_rng_state())
