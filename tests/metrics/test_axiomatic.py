"""The axiomatic family (completeness, non_sensitivity, input_invariance): hand values on tiny
inputs, properties, and agreement with Quantus 0.6.0 where Quantus is right (its defects shown)."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import LinearNet, input_x_gradient, make_batch
from torch import nn

from concilium.metrics import (
    METRICS,
    completeness,
    evaluate,
    input_invariance,
    metrics_in,
    non_sensitivity,
)
from concilium.vocabulary import FAMILIES

AXIOMATIC = ["completeness", "non_sensitivity", "input_invariance"]


def _np(t):
    return t.detach().cpu().numpy()


def _quantus(metric, model, images, labels, maps, **call):
    return np.asarray(
        metric(
            model=model,
            x_batch=_np(images),
            y_batch=_np(labels),
            a_batch=_np(maps)[:, None],
            channel_first=True,
            device="cpu",
            **call,
        ),
        dtype=float,
    )


def gradient(model: nn.Module, images, targets):
    """Plain gradient summed over channels: depends only on the function the model computes."""
    x = images.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return grad.sum(1).detach()


def _q(explainer):
    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        return _np(explainer(model, x, torch.as_tensor(targets).long()))[:, None]

    return explain


def _linear(seed: int = 1, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    images = 0.1 + 0.9 * torch.rand(3, 1, size, size, generator=g)  # no pixel at 0
    w = torch.randn(1, size, size, generator=g)
    return LinearNet(w).eval(), images, torch.zeros(3, dtype=torch.long)


def test_the_axiomatic_family_is_a_family_with_these_metrics():
    assert "axiomatic" in FAMILIES
    assert sorted(metrics_in("axiomatic")) == sorted(AXIOMATIC)
    assert all(METRICS.get(n).category == "axiomatic" for n in AXIOMATIC)


# ---- completeness --------------------------------------------------------------------------


def test_completeness_hand_values_on_a_linear_model():
    model, images, labels = _linear()
    ixg = input_x_gradient(model, images, labels)  # sums to w.x = f(x) - f(0) exactly
    ones = completeness(ixg, images=images, labels=labels, model=model, baseline="zero",
                        normalise=False)
    assert ones.tolist() == [1.0, 1.0, 1.0]
    # from the black baseline (each image's minimum m) the change is w.x - m * sum(w)
    zeros = completeness(ixg, images=images, labels=labels, model=model, normalise=False)
    assert zeros.tolist() == [0.0, 0.0, 0.0]
    # a constant map c with c * H * W equal to that change passes
    delta = (model.w * images).flatten(1).sum(1) - images.flatten(1).amin(1) * model.w.sum()
    const = (delta / 16).view(3, 1, 1).expand(3, 4, 4)
    assert completeness(const, images=images, labels=labels, model=model,
                        normalise=False).tolist() == [1.0, 1.0, 1.0]


def test_completeness_matches_quantus_at_the_defaults():
    model, images, labels, maps, _ = make_batch(n=4, size=8)
    maps = input_x_gradient(model, images, labels)
    theirs = _quantus(quantus.Completeness(disable_warnings=True), model, images, labels, maps)
    ours = completeness(maps, images=images, labels=labels, model=model)
    np.testing.assert_array_equal(_np(ours), theirs)  # max abs diff 0 (both 0: normalised maps)


def test_completeness_quantus_tests_exact_float_equality_ours_a_tolerance():
    model, images, labels = _linear(size=6)
    ixg = input_x_gradient(model, images, labels)
    theirs = _quantus(
        quantus.Completeness(normalise=False, perturb_baseline=0.0, disable_warnings=True),
        model, images, labels, ixg,
    )
    with torch.no_grad():
        gap = (ixg.double().flatten(1).sum(1) - model(images)[:, 0].double()).abs()
    assert float(gap.max()) < 1e-5  # the map sums to the change up to float32 rounding
    assert not theirs.all()  # ... which Quantus's `==` may reject
    ours = completeness(ixg, images=images, labels=labels, model=model, baseline="zero",
                        normalise=False)
    assert ours.tolist() == [1.0, 1.0, 1.0]


# ---- non_sensitivity -----------------------------------------------------------------------


def test_non_sensitivity_hand_values_on_a_linear_model():
    model, images, labels = _linear()
    with torch.no_grad():
        model.w[0, 0, :2] = 0.0  # the model ignores pixels 0 and 1
    honest = model.w.detach().abs().expand(3, 4, 4).clone()
    kwargs = {"images": images, "labels": labels, "model": model, "baseline": "zero"}
    assert non_sensitivity(honest, **kwargs).tolist() == [0.0, 0.0, 0.0]
    lying = honest.clone()
    lying[:, 0, 0] = 1.0  # relevance where the model does not look
    lying[:, 3, 3] = 0.0  # and none where it does
    assert non_sensitivity(lying, **kwargs).tolist() == [2.0, 2.0, 2.0]
    # two pixels per step: pixels 0 and 1 form the one indifferent group
    assert non_sensitivity(honest, step=2, **kwargs).tolist() == [0.0, 0.0, 0.0]
    # pixels 2 and 3 move the output together: a zero at pixel 2 is now a violation
    honest[:, 0, 2] = 0.0
    assert non_sensitivity(honest, step=2, **kwargs).tolist() == [1.0, 1.0, 1.0]


def test_non_sensitivity_matches_quantus_on_one_channel_at_the_defaults():
    model, images, labels, maps, _ = make_batch(n=4, size=8)
    for a in (maps, input_x_gradient(model, images, labels)):
        theirs = _quantus(quantus.NonSensitivity(disable_warnings=True), model, images, labels, a)
        ours = non_sensitivity(a, images=images, labels=labels, model=model)
        np.testing.assert_array_equal(_np(ours), theirs)  # max abs diff 0
        assert theirs.max() > 0


def test_non_sensitivity_rejects_a_bad_step():
    model, images, labels = _linear()
    with pytest.raises(ValueError, match="step"):
        non_sensitivity(images[:, 0], images=images, labels=labels, model=model, step=0)


# ---- input_invariance ----------------------------------------------------------------------


def test_input_invariance_gradient_is_invariant_input_x_gradient_is_not():
    model, images, labels, _, _ = make_batch(n=3, size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = gradient(model, images, labels)
    kwargs = {"images": images, "labels": labels, "model": model}
    assert input_invariance(grads, explainer=gradient, **kwargs).tolist() == [1.0, 1.0, 1.0]
    ixg = input_x_gradient(model, images, labels)
    assert input_invariance(ixg, explainer=input_x_gradient, **kwargs).tolist() == [0.0] * 3
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_input_invariance_needs_an_affine_first_layer_on_the_images():
    model, images, labels = _linear()
    maps = gradient(model, images, labels)
    with pytest.raises(ValueError, match="first layer"):
        input_invariance(maps, images=images, labels=labels, model=model, explainer=gradient)
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)).eval()
    with pytest.raises(ValueError, match="'0' \\(ReLU\\)"):
        input_invariance(maps, images=images, labels=labels, model=net, explainer=gradient)


def _unpadded():
    model, images, labels, _, _ = make_batch(n=3, size=8)
    torch.manual_seed(0)
    model.conv = nn.Conv2d(1, 4, 3, padding=0)
    return model.eval(), images, labels


def test_input_invariance_matches_quantus_where_its_shift_is_exact():
    model, images, labels = _unpadded()
    for explainer, expected in ((input_x_gradient, 0.0), (gradient, 1.0)):
        maps = explainer(model, images, labels)
        theirs = _quantus(quantus.InputInvariance(disable_warnings=True), model, images, labels,
                          maps, explain_func=_q(explainer))
        ours = input_invariance(maps, images=images, labels=labels, model=model,
                                explainer=explainer)
        assert ours.tolist() == [expected] * 3
        # Quantus agrees (max abs diff 0) except on image 0 with the gradient: see below
        np.testing.assert_array_equal(_np(ours)[1:], theirs[1:])


def test_input_invariance_quantus_defects():
    # 1. Quantus never shifts the first value of an image (perturb_batch drops indices[i][0]),
    #    so even the gradient changes there
    model, images, labels = _unpadded()
    maps = gradient(model, images, labels)
    theirs = _quantus(quantus.InputInvariance(disable_warnings=True), model, images, labels,
                      maps, explain_func=_q(gradient))
    assert theirs[0] == 0.0
    # 2. with a padded first conv Quantus's per-channel bias is wrong at the border
    model, images, labels, _, _ = make_batch(n=3, size=8)
    maps = gradient(model, images, labels)
    theirs = _quantus(quantus.InputInvariance(disable_warnings=True), model, images, labels,
                      maps, explain_func=_q(gradient))
    assert not theirs.any()
    ours = input_invariance(maps, images=images, labels=labels, model=model, explainer=gradient)
    assert ours.tolist() == [1.0, 1.0, 1.0]
    # 3. a first conv without bias (every concilium architecture) crashes Quantus
    model.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    maps = gradient(model, images, labels)
    with pytest.raises(TypeError):
        _quantus(quantus.InputInvariance(disable_warnings=True), model, images, labels, maps,
                 explain_func=_q(gradient))
    ours = input_invariance(maps, images=images, labels=labels, model=model, explainer=gradient)
    assert ours.tolist() == [1.0, 1.0, 1.0]


def test_axiomatic_metrics_run_through_evaluate():
    model, images, labels, maps, masks = make_batch(n=2, size=6)
    for name in AXIOMATIC:
        out = evaluate(name, maps, images=images, labels=labels, model=model,
                       explainer=input_x_gradient)
        assert out.shape == (2,) and torch.isfinite(out).all()
