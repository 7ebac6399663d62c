"""The findings of the metrics review (``shared/reviews/metrics.md``, D1 to D15), one test each
on the review's own example where it gave one, and the registry-wide properties they break:
defaults equal Quantus's, reproducible per-image draws, no raster-order ties, NaN never silent,
maps that require grad accepted."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import input_x_gradient, make_batch
from torch import nn

from concilium.metrics import METRICS, MetricWarning, evaluate, evaluate_curve, make_baseline
from concilium.metrics._streams import image_streams
from concilium.metrics.perturb import pixel_order

ALL = METRICS.names()
WITH_CURVE = [n for n in ALL if METRICS.get(n).curve is not None]
# metrics whose score depends on the other images by definition are marked batch_relative
WITH_GENERATOR = [n for n in ALL if "generator" in METRICS.get(n).data_args
                  and not METRICS.get(n).batch_relative]
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
}


def _run(name, batch, **extra):
    model, images, labels, maps, masks = batch
    return evaluate(
        name, maps, images=images, labels=labels, masks=masks, model=model,
        explainer=input_x_gradient, **{**FAST.get(name, {}), **extra},
    )


# ---- D1: every curve metric's value is read off its own curve --------------------------------

#: How each curve becomes the metric's value (the fallback covers curve metrics added later).
_AREA = lambda f, c: torch.trapezoid(c.double(), f.double(), dim=1)  # noqa: E731
_READ_OFF = {
    "deletion": _AREA,
    "deletion_lerf": _AREA,
    "insertion": _AREA,
    "insertion_lerf": _AREA,
    "aopc": lambda f, c: (c[:, :1] - c).double().mean(1),
    "aopc_lerf": lambda f, c: (c[:, :1] - c).double().mean(1),
    "pixel_flipping": lambda f, c: torch.trapezoid(c.double(), dim=1),
    "monotonicity": lambda f, c: (torch.diff(c, dim=1) >= 0).all(1).double(),
    "road": lambda f, c: c.double().mean(1),
    "mprt": lambda f, c: c.double().mean(1),
    "smooth_mprt": lambda f, c: c.double().mean(1),
}


@pytest.mark.parametrize("name", WITH_CURVE)
def test_curve_metric_value_is_read_off_its_own_curve(name):
    batch = make_batch()
    model, images, labels, maps, masks = batch
    params = {k: v for k, v in FAST.get(name, {}).items()}
    if "step" in METRICS.get(name).params and name not in FAST:
        params["step"] = 25
    value = _run(name, batch, **params)
    curve = evaluate_curve(
        name, maps, images=images, labels=labels, masks=masks, model=model,
        explainer=input_x_gradient, **params,
    )
    if not isinstance(curve, tuple):  # road: the curve alone
        curve = (None, curve)
    x, c = curve
    if name in _READ_OFF:
        assert torch.allclose(_READ_OFF[name](x, c), value), name
    else:  # a curve metric added later: its value must be one of the usual read-offs
        assert any(torch.allclose(f(x, c), value) for f in _READ_OFF.values()), name


def test_lerf_and_insertion_curves_differ_from_the_deletion_curve():
    batch = make_batch()
    model, images, labels, maps, _ = batch
    kw = dict(images=images, labels=labels, model=model, step=25)
    deletion = evaluate_curve("deletion", maps, **kw)[1]
    for name in ("deletion_lerf", "insertion", "insertion_lerf", "aopc_lerf"):
        assert not torch.allclose(evaluate_curve(name, maps, **kw)[1], deletion), name


# ---- D2, D3: defaults are Quantus 0.6.0's ----------------------------------------------------

#: (ours, Quantus class, {our parameter: Quantus parameter}) for the metrics both have.
_QUANTUS = [
    ("pointing_game", quantus.PointingGame, {}),
    ("relevance_mass", quantus.RelevanceMassAccuracy, {}),
    ("relevance_rank", quantus.RelevanceRankAccuracy, {}),
    ("top_k_intersection", quantus.TopKIntersection, {}),
    ("auc", quantus.AUC, {}),
    ("faithfulness_correlation", quantus.FaithfulnessCorrelation, {"baseline": "perturb_baseline"}),
    ("pixel_flipping", quantus.PixelFlipping, {"baseline": "perturb_baseline"}),
    ("monotonicity", quantus.Monotonicity, {"baseline": "perturb_baseline"}),
    ("monotonicity_correlation", quantus.MonotonicityCorrelation, {"baseline": "perturb_baseline"}),
    ("road", quantus.ROAD, {}),
    ("infidelity", quantus.Infidelity, {"baseline": "perturb_baseline"}),
    ("max_sensitivity", quantus.MaxSensitivity, {}),
    ("avg_sensitivity", quantus.AvgSensitivity, {}),
    ("local_lipschitz", quantus.LocalLipschitzEstimate, {}),
    ("sparseness", quantus.Sparseness, {}),
    ("complexity", quantus.Complexity, {}),
    ("effective_complexity", quantus.EffectiveComplexity, {}),
    ("mprt", quantus.MPRT, {}),
    ("random_logit", quantus.RandomLogit, {}),
    ("irof", quantus.IROF, {"baseline": "perturb_baseline", "features": "segmentation_method"}),
]
#: Defaults that differ on purpose, each a listed divergence (docs/metrics.md).
_DIVERGENT_DEFAULTS = {
    ("pixel_flipping", "step"),  # a feature is a pixel here, a channel value there (#9)
    ("monotonicity", "step"),
    ("monotonicity_correlation", "step"),
    ("pixel_flipping", "softmax"),  # Quantus's PixelFlipping has no softmax option: None
    ("random_logit", "num_classes"),  # ours reads the model's output width, Quantus says 1000
    ("irof", "baseline"),  # Quantus's "mean" is ours "image_mean", kept from the original (#30)
}


@pytest.mark.parametrize(("ours", "cls", "renamed"), _QUANTUS, ids=[q[0] for q in _QUANTUS])
def test_defaults_equal_quantus_defaults(ours, cls, renamed):
    theirs = {
        k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    compared = 0
    for param, default in METRICS.get(ours).params.items():
        q_name = renamed.get(param, param)
        if q_name not in theirs or theirs[q_name] is None or (ours, param) in _DIVERGENT_DEFAULTS:
            continue
        q_default = theirs[q_name]
        if isinstance(default, tuple):
            default = list(default)
        assert default == q_default, f"{ours}.{param}: ours {default!r}, Quantus {q_default!r}"
        compared += 1
    assert compared >= 1


def test_infidelity_at_both_libraries_defaults_is_quantus():
    """D2 (the review's example): Quantus's defaults, ours untouched; no normalise passed."""
    model, images, labels, maps, _ = make_batch(n=4, c=3, size=16)
    theirs = quantus.Infidelity(disable_warnings=True)(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=maps.numpy()[:, None],
        channel_first=True, device="cpu",
    )
    ours = evaluate("infidelity", maps, images=images, labels=labels, model=model)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5)


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity"])
def test_sensitivity_default_keeps_changes_of_magnitude(name):
    """D3 (the review's example): an explanation of fixed shape whose scale follows the input.
    Normalising each map by its max hid the change (about 2e-8); at Quantus's default
    (``normalise=False``) it is the relative change of scale, about 0.06 here."""
    model, images, labels, _, _ = make_batch(n=2, c=3, size=16)
    shape = torch.linspace(0.1, 1.0, 256).view(16, 16)

    def explainer(m, x, t):
        return x.mean((1, 2, 3))[:, None, None] ** 4 * shape

    maps = explainer(None, images, labels)
    default = evaluate(
        name, maps, images=images, labels=labels, model=model, explainer=explainer, nr_samples=10
    )
    assert (default > 1e-3).all()
    normalised = evaluate(
        name, maps, images=images, labels=labels, model=model, explainer=explainer,
        nr_samples=10, normalise=True,
    )
    assert (normalised < 1e-6).all()


# ---- D6: return_nan_when_prediction_changes --------------------------------------------------


class _Lin(nn.Module):
    """Logits ``[sum(x) - t, 0]`` (the review's model)."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        v = x.flatten(1).sum(1) - self.t
        return torch.stack([v, 0 * v], 1)


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity", "local_lipschitz"])
def test_return_nan_when_prediction_changes_gives_nan_for_the_image(name):
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _Lin(float(x[0].sum()) - 0.3).eval()  # image 0 sits near the boundary
    y = model(x).argmax(1)

    def explainer(m, images, t):
        return images[:, 0] ** 2

    kw = dict(images=x, labels=y, model=model, explainer=explainer, nr_samples=20)
    with pytest.warns(MetricWarning, match="changed the prediction"):
        flagged = evaluate(name, explainer(None, x, y), return_nan_when_prediction_changes=True, **kw)
    assert torch.isnan(flagged[0]) and torch.isfinite(flagged[1])
    plain = evaluate(name, explainer(None, x, y), **kw)
    assert torch.isfinite(plain).all() and plain[1] == flagged[1]
    if name == "max_sensitivity":  # Quantus agrees: NaN for image 0
        np.random.seed(0)
        theirs = quantus.MaxSensitivity(
            nr_samples=20, return_nan_when_prediction_changes=True, disable_warnings=True
        )(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(),
            a_batch=explainer(None, x, y).numpy()[:, None], channel_first=True, device="cpu",
            explain_func=lambda model, inputs, targets, **k: inputs[:, :1] ** 2,
        )
        assert np.isnan(theirs[0]) and np.isfinite(theirs[1])


# ---- reproducibility: per-image streams, never the global RNG --------------------------------


_DRAWS = [(n, None) for n in WITH_GENERATOR] + [
    (n, "uniform") for n in WITH_GENERATOR if "baseline" in METRICS.get(n).params
]


@pytest.mark.parametrize(("name", "baseline"), _DRAWS)
def test_score_of_an_image_is_the_same_alone_and_in_a_batch(name, baseline):
    extra = {} if baseline is None else {"baseline": baseline}
    model, images, labels, maps, masks = make_batch()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    rng = torch.get_rng_state()
    together = _run(name, (model, images, labels, maps, masks), generator=gen(), **extra)
    # relative_representation_stability divides by the difference of two float32 representations
    # of nearly equal inputs, which amplifies the batch-dependent rounding of float32 matrix
    # products on some CPUs (3e-4 relative on an AMD EPYC): it gets a float32-sized tolerance.
    rel = 1e-3 if name == "relative_representation_stability" else 1e-5
    for i in (0, 2):
        one = slice(i, i + 1)
        alone = _run(
            name, (model, images[one], labels[one], maps[one], masks[one]), generator=gen(), **extra
        )
        assert alone[0].item() == pytest.approx(together[i].item(), rel=rel, abs=1e-6)
    reordered = _run(
        name, (model, images.flip(0), labels.flip(0), maps.flip(0), masks.flip(0)),
        generator=gen(), batch_size=3, **extra,
    )
    assert torch.allclose(reordered.flip(0), together, rtol=rel, atol=1e-6, equal_nan=True)
    assert torch.equal(rng, torch.get_rng_state())


def test_streams_depend_on_the_seed_and_the_image_not_the_position():
    images = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    s = image_streams(torch.Generator().manual_seed(1), images)
    assert image_streams(torch.Generator().manual_seed(1), images[1:2]) == s[1:2]
    assert image_streams(torch.Generator().manual_seed(2), images) != s
    assert len(set(s)) == 3


# ---- D5: no tie is broken by raster order ----------------------------------------------------


def _sparse_map_and_masks():
    """The review's example: a sparse map (zero filler) and two masks on the zero region,
    one in the top rows and its vertical mirror."""
    m = torch.zeros(1, 20, 20)
    m[0, 9:11, 9:11] = torch.tensor([[1.0, 0.9], [0.8, 0.7]])
    m[0, 8, 9:13] = 0.5
    top = torch.zeros(1, 20, 20, dtype=torch.bool)
    top[0, :4, :10] = True
    return m, top, top.flip(1)


@pytest.mark.parametrize(
    ("name", "params"),
    [("iou", {}), ("relevance_rank", {}), ("top_k_intersection", {"k": 80}), ("auc", {})],
)
def test_ties_do_not_favour_the_top_of_the_image(name, params):
    m, top, bottom = _sparse_map_and_masks()
    at_top = evaluate(name, m, masks=top, **params).item()
    at_bottom = evaluate(name, m, masks=bottom, **params).item()
    assert at_top == pytest.approx(at_bottom, abs=1e-12)


def test_iou_splits_the_tie_at_the_cut_evenly():
    m, top, _ = _sparse_map_and_masks()
    # k = 80: 8 non-zero pixels, then 72 of the 392 zeros, each selected with weight 72/392;
    # 40 of those zeros lie in the mask
    inter = 40 * 72 / 392
    expected = inter / (80 + 40 - inter)
    assert evaluate("iou", m, masks=top).item() == pytest.approx(expected, abs=1e-12)


def test_perturbation_order_of_tied_pixels_is_seeded_random_not_raster():
    maps = torch.zeros(2, 6, 6)
    maps[:, 0, 0] = 1.0
    images = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    streams = image_streams(torch.Generator().manual_seed(0), images)
    order = pixel_order(maps, descending=True, streams=streams)
    assert (order[:, 0] == 0).all()  # the one relevant pixel first
    tied = order[:, 1:]
    assert not torch.equal(tied[0], torch.arange(1, 36))  # not raster order
    assert not torch.equal(tied[0], tied[1])  # each image its own stream
    assert torch.equal(order, pixel_order(maps, descending=True, streams=streams))
    assert (order.sort(1).values == torch.arange(36)).all()  # a permutation


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("deletion", {}),
        ("insertion", {}),
        ("pixel_flipping", {}),
        ("sufficiency", {}),
        ("region_perturbation", {"patch_size": 2}),
        ("selectivity", {"patch_size": 2}),
        ("sensitivity_n", {}),
        ("irof", {}),
        ("irof", {"features": "patch:2"}),
    ],
)
def test_perturbation_metrics_order_ties_by_the_seed(name, params):
    """A map that is zero except two pixels: the tied zeros (pixels, patches, superpixels) are
    taken in a seeded random order, so the score changes with the seed and not otherwise."""
    model, images, labels, _, masks = make_batch()
    maps = torch.zeros(4, 10, 10)
    maps[:, 5, 5] = 1.0
    maps[:, 1, 8] = 0.5  # sensitivity-n: the relevance removed is not constant over n
    batch = (model, images, labels, maps, masks)
    scores = [_run(name, batch, generator=torch.Generator().manual_seed(s), **params)
              for s in (0, 0, 1)]  # fmt: skip
    assert torch.equal(scores[0], scores[1])
    assert not torch.equal(scores[0], scores[2])


# ---- D7: blur baseline on small non-square images --------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (1, 3, 4, 16), (1, 1, 16, 6), (2, 1, 3, 40)])
def test_blur_of_a_constant_image_is_the_constant(shape):
    out = make_baseline(torch.full(shape, 0.5), "blur")
    assert torch.allclose(out, torch.full(shape, 0.5), atol=1e-6)


# ---- D8: maps without a positive value -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"), [("f1_at_quarter_max", {}), ("iou", {"threshold": "relative"})]
)
def test_relative_threshold_on_an_all_negative_map_is_nan_with_a_warning(name, params):
    model, images, labels, maps, masks = make_batch()
    negative = -maps.abs() - 0.1
    with pytest.warns(MetricWarning, match="no positive value"):
        scores = evaluate(name, negative, masks=masks, **params)
    assert torch.isnan(scores).all()
    assert torch.isfinite(evaluate(name, negative, masks=masks, abs=True, **params)).all()


# ---- D9: the constant check runs on the maps that set the order ------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("monotonicity_correlation", {}),
        ("sufficiency", {}),
        ("monotonicity", {}),
        ("deletion", {"abs": True}),
        ("aopc", {"abs": True}),
        ("road", {"abs": True}),
        ("region_perturbation", {"abs": True, "patch_size": 2}),
        ("selectivity", {"abs": True, "patch_size": 2}),
        ("irof", {"abs": True}),
    ],
)
def test_constant_absolute_map_is_nan_with_a_warning(name, params):
    model, images, labels, maps, masks = make_batch(n=2)
    signs = torch.where(maps >= 0, 1.0, -1.0)  # |a| constant, a not
    with pytest.warns(MetricWarning, match="constant"):
        scores = _run(name, (model, images, labels, signs, masks), **params)
    assert torch.isnan(scores).all()


# ---- D10: NaN always comes with a MetricWarning ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [("mprt", {}), ("mprt", {"aggregate": "last"}), ("random_logit", {"similarity": "spearman"})],
)
def test_randomisation_nan_comes_with_a_warning(name, params):
    model, images, labels, maps, masks = make_batch(n=2)
    constant = torch.ones_like(maps)
    with pytest.warns(MetricWarning, match=f"^{name}:"):
        scores = _run(name, (model, images, labels, constant, masks), **params)
    assert torch.isnan(scores).all()


# ---- D11: maps that require grad -------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_maps_that_require_grad_are_accepted(name):
    model, images, labels, maps, masks = make_batch()
    plain = _run(name, (model, images, labels, maps, masks), generator=torch.Generator().manual_seed(0))
    leaf = maps.clone().requires_grad_(True)
    graded = _run(name, (model, images, labels, leaf * 1.0, masks), generator=torch.Generator().manual_seed(0))
    assert not graded.requires_grad
    assert torch.allclose(plain, graded, equal_nan=True)


# ---- D12: signed maps in the complexity family -----------------------------------------------


def test_signed_maps_in_complexity_and_sparseness_warn():
    maps = make_batch()[3]
    with pytest.warns(MetricWarning, match="negative values"):
        entropy = evaluate("complexity", maps, abs=False)
    assert torch.isnan(entropy).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gini = evaluate("sparseness", maps, abs=False)
    assert any("negative values" in str(w.message) for w in caught)
    np.testing.assert_allclose(  # Quantus's value, outside [0, 1]
        gini.numpy(),
        quantus.Sparseness(abs=False, disable_warnings=True)(
            model=None, x_batch=np.zeros((4, 1, 10, 10)), y_batch=np.zeros(4, int),
            a_batch=maps.numpy()[:, None], channel_first=True, device="cpu",
        ),
        rtol=1e-5,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate("sparseness", maps)  # abs=True by default: no warning
        evaluate("complexity", maps)
