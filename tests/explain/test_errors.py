"""Bad inputs fail at the boundary with a message that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concilium.explain import explain, explain_many, method_params
from concilium.explain._context import hook_counts


def test_unknown_method_lists_valid_ones(net, images):
    with pytest.raises(ValueError, match=r"unknown explanation method 'salency'.*saliency"):
        explain(net, images, "pred", method="salency")


def test_unknown_method_param_lists_valid_ones(net, images):
    with pytest.raises(ValueError, match=r"'steps'.*integrated_gradients.*n_steps, integration"):
        explain(net, images, "pred", method="integrated_gradients", steps=10)
    with pytest.raises(ValueError, match=r"n_steps"):
        method_params("integrated_gradients", n_steps=0)
    with pytest.raises(ValueError, match=r"valid parameters: none"):
        method_params("deeplift", n_steps=3)
    with pytest.raises(ValueError, match=r"interpolation"):
        method_params("gradcam", interpolation="cubic")


def test_wrong_layer_lists_candidates(net, images):
    with pytest.raises(ValueError, match=r"'backbone\.9' matches no module.*backbone\.0, backbone\.2"):
        explain(net, images, "pred", method="gradcam", layer="backbone.9")


def test_plain_module_gets_a_logged_default_layer_for_gradcam(images, caplog):
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with caplog.at_level("INFO", logger="concilium.explain.layers"):
        default = explain(plain, images, 0, method="gradcam", batch_size=4)
    assert "layer methods use layer '1'" in caplog.text  # the last spatial map, before the pool
    cam = explain(plain, images, 0, method="gradcam", layer="1", batch_size=4)
    assert torch.equal(default, cam) and cam.shape == (4, 16, 16)
    assert hook_counts(plain) == {}


def test_a_model_without_any_feature_map_needs_a_layer(images):
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(ValueError, match=r"no default layer.*pass layer="):
        explain(flat, images, 0, method="gradcam")


@pytest.mark.parametrize("target", [3, -1, torch.tensor([0, 1, 2, 5]), "contrast:7", "attr:4"])
def test_target_out_of_range(net, images, target):
    with pytest.raises(ValueError, match=r"out of range.*valid: 0\.\.\d"):
        explain(net, images, target, method="saliency")


def test_bad_target_specs(net, images):
    with pytest.raises(ValueError, match=r"needs labels="):
        explain(net, images, "label", method="saliency")
    with pytest.raises(ValueError, match=r"not a class index"):
        explain(net, images, "predicted", method="saliency")
    with pytest.raises(ValueError, match=r"unknown attribute 'tail'"):
        explain(net, images, "attr:tail", attribute_names=["beak"], method="saliency")
    with pytest.raises(TypeError, match=r"targets must be"):
        explain(net, images, 1.5, method="saliency")
    with pytest.raises(ValueError, match=r"one class per image"):
        explain(net, images, torch.tensor([0, 1]), method="saliency")


def test_attribute_target_needs_an_attribute_head(make_net, images):
    with pytest.raises(ValueError, match=r"no attribute head"):
        explain(make_net(num_attributes=0), images, "attr:0", method="saliency")


def test_images_of_the_wrong_shape(net, images):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*unsqueeze"):
        explain(net, images[0], "pred", method="saliency")
    with pytest.raises(TypeError, match=r"floating point"):
        explain(net, (images * 255).to(torch.uint8), "pred", method="saliency")
    with pytest.raises(TypeError, match=r"torch.Tensor"):
        explain(net, images.numpy(), "pred", method="saliency")
    with pytest.raises(RuntimeError):  # the model itself rejects 1 channel
        explain(net, images[:, :1], "pred", method="saliency")


def test_bad_options(net, images):
    with pytest.raises(ValueError, match=r"unknown reduction 'mean'.*abs_sum"):
        explain(net, images, "pred", method="saliency", reduction="mean")
    with pytest.raises(ValueError, match=r"batch_size"):
        explain(net, images, "pred", method="saliency", batch_size=0)
    with pytest.raises(TypeError, match=r"torch.Generator"):
        explain(net, images, "pred", method="saliency", generator=3)
    with pytest.raises(TypeError, match=r"non-empty mapping"):
        explain_many(net, images, "pred", {})
    with pytest.raises(ValueError, match=r"unknown parameter.*'n'"):
        explain_many(net, images, "pred", {"saliency": {}, "smoothgrad": {"n": 3}})


class _NaNOnSample(nn.Module):
    def __init__(self, net: nn.Module, bad: int) -> None:
        super().__init__()
        self.net = net
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        scale = torch.ones(out.shape[0], 1)
        if out.shape[0] == 4:
            scale[self.bad] = float("nan")
        return out * scale


def test_nan_map_is_reported_with_method_and_sample(net, images):
    model = _NaNOnSample(net, bad=2)
    with pytest.raises(ValueError, match=r"'saliency' produced NaN.*sample\(s\) 2;"):
        explain(model, images, 0, method="saliency", batch_size=8)


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_deeplift_on_a_reused_relu_says_what_to_do(method, images):
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.relu(self.relu(self.conv(x)))  # one module, called twice (torchvision ResNet)
            return self.head(x.mean((2, 3)))

    with pytest.raises(ValueError, match="more than once.*use lrp"):
        explain(Reused(), images, 0, method=method, batch_size=4)
