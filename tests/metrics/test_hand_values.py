"""Layer (a): hand-computed values on tiny inputs, one test (at least) per metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metric_helpers import LinearNet, TinyNet

from concilium._util import derive_seed
from concilium.metrics import MetricWarning, evaluate, evaluate_curve
from concilium.metrics._common import ssim2d
from concilium.metrics._streams import image_streams
from concilium.metrics.imputation import noisy_linear_imputation

# a 2x2 map [[4, 3], [2, 1]] against the anti-diagonal mask [[0, 1], [1, 0]]
MAP = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
MASK = torch.tensor([[[False, True], [True, False]]])


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("pointing_game", {}, 0.0),
        ("relevance_mass", {}, 0.5),
        ("relevance_rank", {}, 0.5),
        ("top_k_intersection", {"k": 1}, 0.0),
        ("top_k_intersection", {"k": 3}, 2 / 3),
        ("auc", {}, 0.5),
        ("average_precision", {}, (1 / 2 + 2 / 3) / 2),
        ("iou", {"threshold": "top", "q": 0.5}, 1 / 3),
        ("iou", {"threshold": "relative", "tau": 0.5}, 2 / 3),
        ("f1_at_quarter_max", {}, 2 * 2 / (4 + 2)),
        ("com_distance", {}, math.sqrt(0.2**2 + 0.1**2) / math.sqrt(2)),
        ("mask_correlation", {}, 0.0),
        ("complexity", {}, -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1))),
        ("sparseness", {}, 0.25),
        ("effective_complexity", {"eps": 0.3}, 3.0),
    ],
)
def test_map_only_hand_values(name, params, expected):
    score = evaluate(name, MAP, masks=MASK, **params)
    assert score.shape == (1,)
    assert score.item() == pytest.approx(expected, abs=1e-6)


def test_rank_metrics_split_ties_evenly():
    tied = torch.tensor([[[1.0, 1.0], [0.0, 0.5]]])
    mask = torch.tensor([[[True, False], [False, False]]])
    # the top pixel is one of two tied pixels, one of which is in the mask: half a hit
    assert evaluate("relevance_rank", tied, masks=mask).item() == pytest.approx(0.5)
    assert evaluate("top_k_intersection", tied, masks=mask, k=1).item() == pytest.approx(0.5)
    assert evaluate("top_k_intersection", tied, masks=mask, k=2).item() == pytest.approx(0.5)


def test_pointing_game_hit_and_weighted():
    mask = torch.tensor([[[True, False], [False, False]]])
    assert evaluate("pointing_game", MAP, masks=mask).item() == 1.0
    assert evaluate("pointing_game", MAP, masks=mask, weighted=True).item() == pytest.approx(0.75)


# the linear model f(x) = sum(w x) on a 2x2 all-ones image; the map equals w
W = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
X = torch.ones(1, 1, 2, 2)
Y = torch.zeros(1, dtype=torch.long)


def _linear(name, maps=W, weights=W, **params):
    model = LinearNet(weights.unsqueeze(0))
    return evaluate(name, maps, images=X, labels=Y, model=model, **params).item()


def test_deletion_insertion_aopc_hand_values():
    common = {"step": 1, "unit": "pixels", "baseline": "zero", "softmax": False}
    # deletion curve 10, 6, 3, 1, 0 over fractions 0, .25, .5, .75, 1
    assert _linear("deletion", **common) == pytest.approx(0.25 * (8 + 4.5 + 2 + 0.5))
    # insertion curve 0, 4, 7, 9, 10
    assert _linear("insertion", **common) == pytest.approx(0.25 * (2 + 5.5 + 8 + 9.5))
    assert _linear("aopc", **common) == pytest.approx((0 + 4 + 7 + 9 + 10) / 5)
    # LeRF deletion 10, 9, 7, 4, 0
    assert _linear("deletion_lerf", **common) == pytest.approx(0.25 * (9.5 + 8 + 5.5 + 2))


def test_pixel_flipping_hand_value():
    # curve after each step 6, 3, 1, 0; trapezoid with dx = 1
    assert _linear("pixel_flipping", baseline="zero", softmax=False) == pytest.approx(7.0)


def test_monotonicity_hand_values():
    # inserting 1, 2, 3, 4 in increasing relevance: 1, 3, 6, 10 -> monotone
    assert _linear("monotonicity", baseline="zero", softmax=False) == 1.0
    # a negative weight on the second inserted pixel breaks monotonicity
    w = torch.tensor([[[4.0, 3.0], [-2.0, 1.0]]])
    assert _linear("monotonicity", maps=W, weights=w, baseline="zero", softmax=False) == 0.0


def test_monotonicity_correlation_hand_value():
    # variance of step s = (w_s x_s)^2, increasing with w_s: Spearman 1
    assert _linear("monotonicity_correlation", baseline="zero", softmax=False) == pytest.approx(1)


def test_faithfulness_correlation_exact_attribution_is_one():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 4, 4, generator=g) + 0.1
    x = torch.rand(1, 1, 4, 4, generator=g)
    model = LinearNet(w.unsqueeze(0))
    score = evaluate(
        "faithfulness_correlation",
        w * x[:, 0],
        images=x,
        labels=Y,
        model=model,
        nr_runs=20,
        subset_size=5,
        baseline="zero",
        generator=g,
    )
    assert score.item() == pytest.approx(1.0, abs=1e-9)


def test_infidelity_hand_values():
    common = {"perturb_patch_sizes": (1,), "baseline": "zero", "normalise": False}
    assert _linear("infidelity", **common) == pytest.approx(0.0, abs=1e-9)
    # a = 2w: error after each block = cumulative sums 4, 7, 9, 10 -> mean of squares
    assert _linear("infidelity", maps=2 * W, **common) == pytest.approx((16 + 49 + 81 + 100) / 4)


def test_sufficiency_hand_value():
    # keep the two most relevant pixels (4 and 3): f(x) - f(x_keep) = 10 - 7
    assert _linear("sufficiency", keep=0.5, baseline="zero", softmax=False) == pytest.approx(3.0)


def test_noisy_linear_imputation_centre_pixel():
    image = np.zeros((1, 3, 3))
    image[0, 1, :] = 1.0
    image[0, :, 1] = 1.0  # axis neighbours of the centre are 1, diagonals 0
    removed = np.zeros((3, 3), dtype=bool)
    removed[1, 1] = True
    out = noisy_linear_imputation(image, removed, noise=0.0, rng=None)
    assert out[0, 1, 1] == pytest.approx(4 / 6)
    assert np.array_equal(np.delete(out.ravel(), 4), np.delete(image.ravel(), 4))


@pytest.mark.parametrize(("corner_weight", "expected"), [(-0.05, 1.0), (-0.5, 0.0)])
def test_road_hand_value(corner_weight, expected):
    """A 3x3 image, 1 at the centre and the top-left corner, 0 elsewhere; f = [sum(w x), 0]
    with w = 1 at the centre and ``corner_weight`` at the corner. ROAD at 12 % removes one
    pixel, the centre (most relevant); its imputed value is the weighted mean of its neighbours,
    (1/12 * 1) / (4/6 + 4/12) = 1/12, so f = 1/12 + corner_weight: still class 0 for -0.05,
    class 1 for -0.5. (Zero-filling would give class 1 for both; removing nothing class 0.)"""
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = x[0, 0, 0, 0] = 1.0
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1], w[0, 0, 0, 0] = 1.0, corner_weight
    a = torch.zeros(1, 3, 3)
    a[0, 1, 1], a[0, 0, 0] = 1.0, 0.5
    score = evaluate(
        "road", a, images=x, labels=Y, model=LinearNet(w), percentages=(12,), noise=0.0
    )
    assert score.item() == expected


def test_local_lipschitz_of_linear_explainer_is_its_slope():
    def explainer(model, images, targets):
        return 2 * images[:, 0]

    g = torch.Generator().manual_seed(1)
    score = evaluate(
        "local_lipschitz",
        2 * X[:, 0],
        images=X,
        labels=Y,
        model=LinearNet(W.unsqueeze(0)),
        explainer=explainer,
        generator=g,
        nr_samples=5,
        normalise=False,
    )
    assert score.item() == pytest.approx(2.0, rel=1e-6)


def test_sensitivity_slow_reimplementation():
    def explainer(model, images, targets):
        return (images**2).sum(1)

    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(2)) + 0.5
    y = torch.zeros(2, dtype=torch.long)
    a = explainer(None, x, y)
    model = LinearNet(torch.ones(1, 1, 3, 3))
    got_max = evaluate(
        "max_sensitivity",
        a,
        images=x,
        labels=y,
        model=model,
        explainer=explainer,
        generator=torch.Generator().manual_seed(3),
        nr_samples=4,
        normalise=False,
    )
    got_avg = evaluate(
        "avg_sensitivity",
        a,
        images=x,
        labels=y,
        model=model,
        explainer=explainer,
        generator=torch.Generator().manual_seed(3),
        nr_samples=4,
        normalise=False,
    )
    # the same draws, one copy at a time: copy s of image i draws from the image's stream
    streams = image_streams(torch.Generator().manual_seed(3), x)
    values = torch.empty(2, 4, dtype=torch.float64)
    for row in range(8):
        i, s = divmod(row, 4)
        g = torch.Generator().manual_seed(derive_seed(streams[i], "noise", s))
        noise = torch.rand(1, 3, 3, generator=g) * 0.4 - 0.2
        a_noisy = explainer(None, x[i : i + 1] + noise, y[i : i + 1])[0]
        values[i, s] = torch.linalg.norm((a[i] - a_noisy).double()) / torch.linalg.norm(
            a[i].double()
        )
    assert torch.allclose(got_max, values.max(1).values)
    assert torch.allclose(got_avg, values.mean(1))


def test_mprt_of_model_independent_explainer_is_one():
    def explainer(model, images, targets):
        return images[:, 0] + 0.0

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    score = evaluate(
        "mprt",
        x[:, 0],
        images=x,
        labels=torch.zeros(2, dtype=torch.long),
        model=TinyNet(1),
        explainer=explainer,
    )
    assert torch.allclose(score, torch.ones(2, dtype=torch.float64))
    # and the layers are randomised: a model-dependent explainer's maps change at every layer
    model, maps = TinyNet(1), None

    def gradient_times_input(m, images, targets):
        images = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(m(images)[:, 0].sum(), images)
        return (grad * images)[:, 0].detach()

    maps = gradient_times_input(model, x, None)
    _, per_layer = evaluate_curve(
        "mprt", maps, images=x, labels=torch.zeros(2, dtype=torch.long), model=model,
        explainer=gradient_times_input,
    )
    assert (per_layer < 0.99).all()


def test_random_logit_two_classes_is_2d_ssim():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(5)
    per_class = torch.rand(2, 9, 9, generator=g)

    def explainer(model, images, targets):
        return per_class[targets]

    x = torch.rand(1, 1, 9, 9, generator=g)
    score = evaluate(
        "random_logit",
        per_class[:1],
        images=x,
        labels=Y,
        model=LinearNet(torch.ones(1, 1, 9, 9)),
        explainer=explainer,
        normalise=False,
    )
    a, b = per_class[0].double().numpy(), per_class[1].double().numpy()
    rng = max(a.max(), b.max()) - min(a.min(), b.min())
    assert score.item() == pytest.approx(structural_similarity(a, b, data_range=rng), abs=1e-9)


def test_ssim2d_matches_skimage_on_random_pairs():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(6)
    a, b = torch.rand(3, 11, 13, generator=g), torch.rand(3, 11, 13, generator=g)
    ours = ssim2d(a, b)
    for i in range(3):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        rng = max(x.max(), y.max()) - min(x.min(), y.min())
        assert ours[i].item() == pytest.approx(
            structural_similarity(x, y, data_range=rng), abs=1e-9
        )


@pytest.mark.parametrize(
    "name", ["pointing_game", "relevance_mass", "auc", "iou", "mask_correlation"]
)
def test_empty_mask_is_nan_with_warning(name):
    with pytest.warns(MetricWarning, match="mask is empty"):
        score = evaluate(name, MAP, masks=torch.zeros(1, 2, 2, dtype=torch.bool))
    assert torch.isnan(score).all()


@pytest.mark.parametrize("name", ["pointing_game", "relevance_rank", "auc", "average_precision"])
def test_constant_map_is_nan_with_warning(name):
    with pytest.warns(MetricWarning, match="constant"):
        score = evaluate(name, torch.ones(1, 2, 2), masks=MASK)
    assert torch.isnan(score).all()


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_zero_map_is_nan_with_warning(name):
    with pytest.warns(MetricWarning, match="all zeros"):
        assert torch.isnan(evaluate(name, torch.zeros(1, 2, 2))).all()
