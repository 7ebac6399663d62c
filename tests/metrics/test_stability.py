"""The relative stabilities: hand values (layer a), properties (b) and exact agreement with
Quantus 0.6.0 on the same noise (d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import LinearNet, input_x_gradient, make_batch
from torch import nn

from concilium._util import derive_seed
from concilium.metrics import MetricWarning, evaluate
from concilium.metrics._streams import draw_rows, image_streams

STABILITIES = [
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
]


class Identity2(nn.Module):
    """Logits ``[x0 + x1, 0]`` through a hidden identity layer ``lin`` (the representation)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(2))

    def forward(self, x):
        h = self.lin(x.flatten(1))
        return torch.stack([h.sum(1), torch.zeros_like(h[:, 0])], dim=1)


def squares(model, images, targets):
    return images[:, 0] ** 2


# x = [1, 2], x' = x + 0.1, a = x^2: relative change of a [0.21, 0.1025], of x [0.1, 0.05]
NUM = math.hypot(0.21, 0.1025)


@pytest.mark.parametrize(
    ("name", "model", "params", "expected"),
    [
        ("relative_input_stability", LinearNet(torch.ones(1, 1, 2)), {}, NUM / math.hypot(0.1, 0.05)),
        ("relative_output_stability", LinearNet(torch.ones(1, 1, 2)), {}, NUM / 0.2),
        ("relative_representation_stability", Identity2(), {"layer": "lin"}, NUM / math.hypot(0.1, 0.05)),
        ("relative_representation_stability", Identity2(), {}, NUM / math.hypot(0.1, 0.05)),
    ],
)  # fmt: skip
def test_hand_values(name, model, params, expected):
    x = torch.tensor([[[[1.0, 2.0]]]])
    score = evaluate(
        name, squares(None, x, None), images=x, labels=torch.tensor([0]), model=model,
        explainer=squares, nr_samples=3, lower_bound=0.1, upper_bound=0.1 + 1e-7, **params,
    )  # fmt: skip
    assert score.item() == pytest.approx(expected, rel=1e-4)


def test_zero_in_a_divisor_is_replaced_by_eps_min():
    x = torch.tensor([[[[0.0, 2.0]]]])
    a = torch.tensor([[[0.0, 4.0]]])
    score = evaluate(
        "relative_input_stability", a, images=x, labels=torch.tensor([0]),
        model=LinearNet(torch.ones(1, 1, 2)), explainer=squares, nr_samples=1,
        lower_bound=0.1, upper_bound=0.1 + 1e-7, eps_min=1e-3,
    )  # fmt: skip
    # a' = [0.01, 4.41]: [0.01 / 1e-3, 0.41 / 4]; x' = [0.1, 2.1]: [0.1 / 1e-3, 0.05]
    expected = math.hypot(10.0, 0.1025) / math.hypot(100.0, 0.05)
    assert score.item() == pytest.approx(expected, rel=1e-4)


def test_a_copy_that_changes_the_prediction_makes_the_image_nan():
    # logits [x0 + x1 - 3.1, 0]: x = [1, 2] predicts class 1, every copy (+0.1 each) class 0
    model = LinearNet(torch.ones(1, 1, 2))
    x = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.5]]]])
    shifted = lambda t: t - 3.1  # noqa: E731
    model.forward = lambda t: torch.stack(  # type: ignore[method-assign]
        [shifted((t * model.w).flatten(1).sum(1)), torch.zeros(t.shape[0])], dim=1
    )
    with pytest.warns(MetricWarning, match="changed the prediction"):
        score = evaluate(
            "relative_input_stability", squares(None, x, None), images=x,
            labels=torch.tensor([1, 1]), model=model, explainer=squares, nr_samples=2,
            lower_bound=0.5, upper_bound=0.6,
        )  # fmt: skip
    assert math.isnan(score[0].item()) and math.isfinite(score[1].item())
    kept = evaluate(
        "relative_input_stability", squares(None, x, None), images=x, labels=torch.tensor([1, 1]),
        model=model, explainer=squares, nr_samples=2, lower_bound=0.5, upper_bound=0.6,
        return_nan_when_prediction_changes=False,
    )  # fmt: skip
    assert torch.isfinite(kept).all()


@pytest.mark.parametrize("name", STABILITIES)
def test_an_explanation_that_does_not_move_scores_zero(name):
    model, images, labels, maps, _ = make_batch(n=2, size=6)
    fixed = lambda m, x, t: maps[:1].expand(x.shape[0], -1, -1)  # noqa: E731
    score = evaluate(
        name, maps[:1], images=images[:1], labels=labels[:1], model=model, explainer=fixed,
        nr_samples=4, return_nan_when_prediction_changes=False,
    )  # fmt: skip
    assert score.item() == 0.0


@pytest.mark.parametrize("name", STABILITIES)
def test_seeded_and_independent_of_batch_size(name):
    model, images, labels, maps, _ = make_batch(n=3, size=6)
    runs = [
        evaluate(
            name,
            maps,
            images=images,
            labels=labels,
            model=model,
            explainer=input_x_gradient,
            nr_samples=4,
            generator=torch.Generator().manual_seed(5),
            batch_size=b,
            return_nan_when_prediction_changes=False,
        )  # fmt: skip
        for b in (1, 5, 64)
    ]
    # relative_representation_stability's denominator is a difference of nearly equal float32
    # representations: batch-dependent float32 rounding (seen on an AMD EPYC) is amplified
    rtol = 1e-3 if name == "relative_representation_stability" else 1e-5
    assert torch.allclose(runs[0], runs[1], rtol=rtol) and torch.allclose(runs[0], runs[2], rtol=rtol)


def test_unknown_layer_names_candidates():
    model, images, labels, maps, _ = make_batch(n=1, size=6)
    with pytest.raises(ValueError, match="matches no module.*conv"):
        evaluate(
            "relative_representation_stability", maps, images=images, labels=labels, model=model,
            explainer=input_x_gradient, nr_samples=1, layer="nope",
        )  # fmt: skip


def _q_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return input_x_gradient(model, x, torch.as_tensor(targets).long()).numpy()[:, None]


class SameNoise:
    """Quantus ``perturb_func`` adding the noise our metric draws: copy ``s`` of image ``i``
    from image ``i``'s stream keyed ``("noise", s)``, at Quantus's call ``s``."""

    def __init__(self, images, samples, seed, low=0.02, high=0.2):
        streams = image_streams(torch.Generator().manual_seed(seed), images)
        shape = tuple(images.shape[1:])
        self.noise = [
            (draw_rows([derive_seed(st, "noise", s) for st in streams],
                       lambda g: torch.rand(shape, generator=g), torch.device("cpu"))
             * (high - low) + low).numpy()
            for s in range(samples)
        ]
        self.n, self.calls = images.shape[0], 0

    def __call__(self, arr, indices, **kwargs):
        noise = self.noise[self.calls]
        self.calls += 1
        return arr + noise.reshape(self.n, -1)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("relative_input_stability", quantus.RelativeInputStability),
        ("relative_output_stability", quantus.RelativeOutputStability),
        ("relative_representation_stability", quantus.RelativeRepresentationStability),
    ],
)
@pytest.mark.parametrize("nan_flag", [True, False])
def test_matches_quantus_on_the_same_noise(name, cls, nan_flag):
    """Both libraries at their defaults but the number of copies (and Quantus given our noise,
    drawn as its default U(0.02, 0.2)); the flag at its default (True) and off."""
    model, images, labels, _, _ = make_batch(n=4, size=8)
    maps = input_x_gradient(model, images, labels)
    samples = 6
    noise = SameNoise(images, samples, seed=3)
    theirs = cls(
        nr_samples=samples, perturb_func=noise, disable_warnings=True,
        return_nan_when_prediction_changes=nan_flag,
    )(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
        a_batch=maps.numpy()[:, None], explain_func=_q_explain, device="cpu",
    )  # fmt: skip
    ours = evaluate(
        name, maps, images=images, labels=labels, model=model, explainer=input_x_gradient,
        nr_samples=samples, generator=torch.Generator().manual_seed(3),
        return_nan_when_prediction_changes=nan_flag,
    ).numpy()  # fmt: skip
    theirs = np.asarray(theirs, dtype=float)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


class Threshold(nn.Module):
    """Logits ``[sum(x) - t, 0]``: a copy flips to class 0 when its noise pushes the sum past t."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t
        self.lin = nn.Identity()

    def forward(self, x):
        v = self.lin(x).flatten(1).sum(1) - self.t
        return torch.stack([v, torch.zeros_like(v)], dim=1)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("relative_input_stability", quantus.RelativeInputStability),
        ("relative_output_stability", quantus.RelativeOutputStability),
        ("relative_representation_stability", quantus.RelativeRepresentationStability),
    ],
)
def test_nan_when_any_copy_changes_the_prediction_as_quantus(name, cls):
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    images[1:] *= 3  # far above the threshold: their copies keep class 0
    model = Threshold(
        float(images[0].sum()) + 0.11 * 36
    ).eval()  # about half of image 0's copies flip
    labels = model(images).argmax(1)
    explain = squares
    maps = squares(model, images, labels)
    samples = 8
    theirs = cls(nr_samples=samples, perturb_func=SameNoise(images, samples, seed=1),
                 disable_warnings=True)(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
        a_batch=maps.numpy()[:, None], device="cpu",
        explain_func=lambda model, inputs, targets, **k: explain(
            model, torch.as_tensor(inputs), torch.as_tensor(targets).long()
        ).numpy()[:, None],
    )  # fmt: skip
    with pytest.warns(MetricWarning, match="1 of 3 images score NaN"):
        ours = evaluate(
            name, maps, images=images, labels=labels, model=model, explainer=explain,
            nr_samples=samples, generator=torch.Generator().manual_seed(1),
        ).numpy()  # fmt: skip
    theirs = np.asarray(theirs, dtype=float)
    assert np.isnan(ours[0]) and np.isnan(theirs[0])
    np.testing.assert_allclose(ours[1:], theirs[1:], rtol=1e-6)


def test_representation_defaults_to_the_models_gradcam_layer():
    model, images, labels, maps, _ = make_batch(n=2, size=6)

    def run(**params):
        return evaluate(
            "relative_representation_stability", maps, images=images, labels=labels, model=model,
            explainer=input_x_gradient, nr_samples=3, generator=torch.Generator().manual_seed(0),
            return_nan_when_prediction_changes=False, **params,
        )  # fmt: skip

    every_module = run()
    model.gradcam_layer = "conv"
    assert torch.equal(run(), run(layer="conv"))
    assert not torch.allclose(run(), every_module)
