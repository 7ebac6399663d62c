"""Properties of the methods and of the engine, hand-computed values on tiny inputs, and
reference comparisons with direct Captum calls."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

from concilium.explain import (
    SHARED_PASS,
    contrast_target,
    explain,
    explain_many,
    parse_baseline,
    probe,
    reduce_channels,
)
from concilium.explain.batching import clear_cache
from concilium.models.base import AttributeView


@pytest.mark.parametrize("baseline", ["zero", "blur:sigma=2", "black"])
def test_integrated_gradients_completeness(make_net, baseline):
    net = make_net(dtype=torch.float64, smooth=True)
    with torch.no_grad():
        for w in net.parameters():
            w.mul_(4.0)  # larger logit changes, so that 1% is a real check
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    attr = explain(net, x, target, method="integrated_gradients", n_steps=200, reduction=None,
                   baseline=baseline, batch_size=256)
    b = parse_baseline(baseline)(x, target)
    with torch.no_grad():
        delta = (net(x) - net(b)).gather(1, target.view(-1, 1)).flatten()
    total = attr.double().flatten(1).sum(1)
    assert (delta.abs() > 1e-2).all()  # the check is not vacuous
    assert torch.allclose(total, delta, rtol=0.01, atol=1e-6)


def test_smoothgrad_with_one_noiseless_sample_equals_saliency(net, images):
    sal = explain(net, images, "pred", method="saliency", reduction=None, batch_size=8)
    sg = explain(net, images, "pred", method="smoothgrad", n_samples=1, sigma=0.0, reduction=None,
                 generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sal, sg, atol=1e-7)


class _Gate(nn.Module):
    """ReLU, then zero outside a fixed region: the evidence can only come from there."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.mask


class _RegionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 8, 8)
        mask[..., :3, 5:] = 1.0  # top-right block of the 8x8 feature map
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), _Gate(mask))
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.5, 2.0, 1.0], [-1.0, 0, 0, 0]]))
        self.gradcam_layer = "features.2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_gradcam_lands_on_the_known_evidence(images):
    model = _RegionNet()
    cam = explain(model, images, 0, method="gradcam", batch_size=8)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[:6, 10:] = True  # the 8x8 block upsampled x2
    near = torch.zeros(16, 16, dtype=torch.bool)
    near[:7, 9:] = True  # plus one pixel of bilinear spill
    assert (cam >= 0).all()
    mass_in = (cam * region).flatten(1).sum(1) / cam.flatten(1).sum(1)
    assert (mass_in > 0.8).all()
    assert (cam[:, ~near] == 0).all()
    peak = cam.flatten(1).argmax(1)
    assert region.flatten()[peak].all()


def test_contrast_target_equals_difference_of_single_target_maps(net, images):
    labels = torch.tensor([0, 1, 2, 0])
    kw = dict(method="integrated_gradients", n_steps=16, reduction=None, batch_size=64)
    contrast = explain(net, images, "contrast:1", labels=labels, **kw)
    one = explain(net, images, labels, **kw)
    other = explain(net, images, torch.full((4,), 1), **kw)
    assert torch.allclose(contrast, one - other, atol=1e-6)
    assert contrast[1].abs().max() == 0  # label 1 against 1: nothing to explain


def test_contrast_with_the_prediction_by_default(net, images):
    pred = net(images).argmax(1)
    a = explain(net, images, "contrast:0", method="saliency", abs=False, reduction=None, batch_size=8)
    b = explain(net, images, pred, method="saliency", abs=False, reduction=None, batch_size=8)
    c = explain(net, images, 0, method="saliency", abs=False, reduction=None, batch_size=8)
    assert torch.allclose(a, b - c, atol=1e-6)


def test_attribute_target_explains_the_attribute_head(net, images):
    a = explain(net, images, "attr:1", method="saliency", batch_size=8)
    b = explain(AttributeView(net), images, 1, method="saliency", batch_size=8)
    named = explain(net, images, "attr:wing", attribute_names=["beak", "wing"],
                    method="saliency", batch_size=8)
    assert torch.equal(a, b) and torch.equal(a, named)
    cam = explain(net, images, "attr:0", method="gradcam", batch_size=8)
    assert cam.shape == (4, 16, 16)


def test_label_and_int_targets(net, images):
    labels = torch.tensor([2, 1, 0, 2])
    a = explain(net, images, "label", labels=labels, method="saliency", batch_size=8)
    b = explain(net, images, labels, method="saliency", batch_size=8)
    c = explain(net, images, 2, method="saliency", batch_size=8)
    d = explain(net, images, "2", method="saliency", batch_size=8)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_explain_many_equals_individual_calls(net, images):
    methods = {
        "saliency": {},
        "input_x_gradient": {},
        "gradcam": {"interpolation": "bilinear"},
        "integrated_gradients": {"n_steps": 8},
        "gradient_shap": {"n_samples": 4},
        "smoothgrad": {"n_samples": 3},
    }
    many = explain_many(net, images, "pred", methods, batch_size=8,
                        generator=torch.Generator().manual_seed(3))
    assert list(many) == list(methods)
    for name, params in methods.items():
        single = explain(net, images, "pred", method=name, batch_size=8,
                         generator=torch.Generator().manual_seed(3), **params)
        assert torch.allclose(many[name], single, atol=1e-6, rtol=1e-5), name
    assert set(SHARED_PASS) <= set(methods)


def test_explain_many_shared_pass_with_contrast_and_signed(net, images):
    methods = {"saliency": {"abs": False}, "input_x_gradient": {}, "gradcam": {"relu": False}}
    many = explain_many(net, images, "contrast:runner_up", methods, reduction=None, batch_size=3)
    for name, params in methods.items():
        single = explain(net, images, "contrast:runner_up", method=name, reduction=None,
                         batch_size=3, **params)
        assert torch.allclose(many[name], single, atol=1e-6), name


def test_reductions_by_hand():
    attr = torch.tensor([[[[1.0]], [[-2.0]], [[2.0]]]])  # (1, 3, 1, 1)
    assert reduce_channels(attr, "sum").item() == 1.0
    assert reduce_channels(attr, "abs_sum").item() == 5.0
    assert reduce_channels(attr, "l2").item() == 3.0
    assert reduce_channels(attr, "max_abs").item() == 2.0


def test_reference_integrated_gradients_matches_captum(net, images):
    target = torch.tensor([0, 1, 2, 1])
    ours = explain(net, images, target, method="integrated_gradients", n_steps=20, reduction=None)
    net.eval()
    ref = IntegratedGradients(net).attribute(images, baselines=torch.zeros_like(images),
                                             target=target, n_steps=20)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_reference_occlusion_matches_captum_and_window_is_relative(net, images):
    ours = explain(net, images, 1, method="occlusion", reduction=None, batch_size=32)
    net.eval()
    ref = Occlusion(net).attribute(images, sliding_window_shapes=(3, 2, 2), strides=(3, 1, 1),
                                   baselines=0.0, target=1)  # 16 px: 0.125 -> 2, 0.0625 -> 1
    assert torch.allclose(ours[:, 0], ref[:, 0], atol=1e-6)


def test_probe_is_cached_and_respects_budget_and_override(net, images):
    clear_cache()
    net.eval()
    plan = probe(net, images)
    assert plan.rows_grad >= 1 and plan.rows_fwd >= 1 and plan.bytes_per_row > 0
    assert plan.rows_grad <= plan.max_rows
    assert probe(net, images) is plan  # one-off
    tight = probe(net, images, memory_budget_mb=plan.bytes_per_row * 4 / 2**20)
    assert tight.max_rows == 4 and tight.rows_grad <= 4
    assert probe(net, images, batch_size=5).rows_grad == 5


def test_automatic_batching_gives_the_same_maps(net, images):
    auto = explain(net, images, "pred", method="integrated_gradients", n_steps=10)
    fixed = explain(net, images, "pred", method="integrated_gradients", n_steps=10, batch_size=7)
    assert torch.allclose(auto, fixed, atol=1e-6)


def test_results_follow_the_images_device_and_model_dtype(make_net, images):
    net64 = make_net(dtype=torch.float64)
    maps = explain(net64, images, "pred", method="saliency", batch_size=8)
    assert maps.dtype == torch.float32 and maps.device == images.device


def test_per_sample_contrast_classes(net, images):
    base, other = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    target = contrast_target(net, images, base, other)
    x = images.clone()
    out = target.module(x, *target.forward_args)
    logits = net(x)
    expected = logits - logits.gather(1, other.view(-1, 1))
    assert torch.allclose(out, expected)
    assert torch.allclose(out.gather(1, base.view(-1, 1)).flatten(),
                          (logits.gather(1, base.view(-1, 1)) - logits.gather(1, other.view(-1, 1))).flatten())


@pytest.mark.parametrize("baseline", ["black", "zero"])
def test_grouped_stochastic_methods_do_not_depend_on_batch_size(net, images, baseline):
    def run(batch_size):
        return explain(net, images, "pred", method="gradient_shap", n_samples=5, baseline=baseline,
                       batch_size=batch_size, generator=torch.Generator().manual_seed(4))

    assert torch.equal(run(2), run(50))
