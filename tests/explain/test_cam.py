"""The CAM family and the layer methods on CNNs, ViTs (timm and transformers) and Swin.

(d) reference values: each CAM's layer-resolution map equals pytorch_grad_cam's on the same
inputs, layer and targets (both ReLU'd and min-max scaled as pytorch_grad_cam does; its target
size set to the layer grid so that no resizing intervenes), with pytorch_grad_cam reading the
activations through its own hooks and ``reshape_transform``.
(a) slow re-implementations: AblationCAM's weights by zeroing one channel per forward; the token
grid by hand.
Default layers per family, and the whole ``explain`` path on a ViT and a Swin.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import resnet50

from concilium.explain import METHODS, Prepared, default_layer, explain
from concilium.explain._context import attribution_context, hook_counts
from concilium.explain.cam import LAYER_MAPS
from concilium.explain.layers import layer_layout

REFERENCE = {
    "gradcam": GradCAM, "gradcam_pp": GradCAMPlusPlus, "xgradcam": XGradCAM,
    "hirescam": HiResCAM, "layercam": LayerCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
CAMS = sorted(LAYER_MAPS)


def test_every_cam_has_a_reference_here():
    assert set(CAMS) == set(REFERENCE)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def small_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                             img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2,
                             **kw).eval()


def small_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3,
                             img_size=32, window_size=2, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2)).eval()


class HFLogits(nn.Module):
    """A transformers classifier returning its logits (the models helper's adapter does this
    for ``hf:`` sources)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        torch.manual_seed(0)
        self.model = ViTForImageClassification(ViTConfig(
            image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=48, num_labels=3,
        )).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _tokens_to_grid(prefix: int, grid: int):
    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def _scaled(cam: np.ndarray) -> np.ndarray:
    """pytorch_grad_cam's output scaling: ReLU, then ``scale_cam_image`` per layer and again
    over the layers (``aggregate_multi_layers``), each ``(x - min) / (1e-7 + max)``."""
    cam = np.maximum(cam, 0)
    for _ in range(2):
        cam = cam - cam.min(axis=(1, 2), keepdims=True)
        cam = cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))
    return cam


CASES = {
    # name: (model factory, layer name, pytorch_grad_cam reshape_transform, grid)
    "cnn": (small_cnn, "3", None, 32),
    "vit": (small_vit, "blocks.1.norm1", _tokens_to_grid(1, 4), 4),
    "vit_registers": (lambda: small_vit(reg_tokens=4), "blocks.1.norm1", _tokens_to_grid(5, 4), 4),
    "swin": (small_swin, "norm", lambda t: t.permute(0, 3, 1, 2), 4),
    "hf_vit": (HFLogits, "model.vit.layers.1.layernorm_before", _tokens_to_grid(1, 4), 4),
}


def _ours(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str,
          method: str) -> np.ndarray:
    with attribution_context(model):
        prep = Prepared(model, images, targets, labels=None, attribute_names=None,
                        baseline="zero", need_baseline=False, layer=layer, need_layer=True,
                        need_plan=True, batch_size=8, memory_budget_mb=64)
        grad_ctx = torch.enable_grad() if METHODS.get(method).kind == "gradient" else torch.no_grad()
        with grad_ctx:
            return LAYER_MAPS[method](prep.chunk(0, images.shape[0], 8)).detach().numpy()


def _reference(model, images, targets, layer: str, method: str, reshape, grid: int) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    cam = REFERENCE[method](model=model, target_layers=[module], reshape_transform=reshape)
    if method in ("scorecam", "ablationcam"):
        cam.batch_size = 8
    cam.get_target_width_height = lambda _x: (grid, grid)  # compare at the layer's resolution
    with cam:
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", CAMS)
def test_cam_matches_pytorch_grad_cam(case, method):
    factory, layer, reshape, grid = CASES[case]
    if method == "ablationcam" and case != "cnn":
        pytest.skip("pytorch_grad_cam ablates non-ReLU layers to min - 1e7, not to zero; "
                    "see test_ablationcam_weights_by_hand")
    model = factory()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    targets = torch.tensor([0, 2])
    ours = _scaled(_ours(model, images, targets, layer, method))
    ref = _reference(model, images, targets, layer, method, reshape, grid)
    assert ours.shape == ref.shape == (2, grid, grid)
    assert np.abs(ours - ref).max() < 5e-4  # float32 rounding; maps scaled to [0, 1]
    assert hook_counts(model) == {}


def test_ablationcam_weights_by_hand():
    """Slow replica on a ViT: the weight of channel c is the relative drop of the target logit
    when the layer's channel c is zeroed on every token, one forward per channel."""
    model = small_vit()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layer = model.blocks[1].norm1
    with torch.no_grad():
        seen = []
        h = layer.register_forward_hook(lambda _m, _i, o: seen.append(o))
        base = model(images)[0, 1]
        h.remove()
        act = seen[0]
        weights = []
        for ch in range(act.shape[-1]):
            def zero(_m, _i, o, ch=ch):
                o = o.clone()
                o[..., ch] = 0
                return o

            h = layer.register_forward_hook(zero)
            weights.append((base - model(images)[0, 1]) / base)
            h.remove()
        grid = act[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        expected = (torch.stack(weights)[None, :, None, None] * grid).sum(1)
    ours = _ours(model, images, torch.tensor([1]), "blocks.1.norm1", "ablationcam")
    assert np.allclose(ours, expected.numpy(), atol=1e-5, rtol=1e-4)


def test_ablationcam_without_the_one_row_shortcut_gives_the_same():
    """A model whose branches cannot broadcast one upstream row falls back to full copies."""

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(4 + 3, 2)

        def forward(self, x):
            a = self.act(self.conv(x)).mean((2, 3))
            return self.head(torch.cat([a, x.mean((2, 3))], 1))  # cat refuses 1 vs k rows

    torch.manual_seed(0)
    model = Cat().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = _scaled(_ours(model, images, torch.tensor([0, 1]), "act", "ablationcam"))
    ref = _reference(model, images, torch.tensor([0, 1]), "act", "ablationcam", None, 16)
    assert np.abs(ours - ref).max() < 1e-4


def test_token_layout_drops_class_and_register_tokens():
    model = small_vit(reg_tokens=4)
    images = torch.rand(1, 3, 32, 32)
    layout = layer_layout(model, model.blocks[1].norm1, images)
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", 5, (4, 4))
    tokens = torch.arange(21 * 2, dtype=torch.float32).reshape(1, 21, 2)
    grid = layout.to_grid(tokens)
    assert grid.shape == (1, 2, 4, 4)
    assert grid[0, 0, 0, 1] == tokens[0, 6, 0] and grid[0, 1, 3, 3] == tokens[0, 20, 1]


def test_swin_layout_is_channels_last():
    model = small_swin()
    layout = layer_layout(model, model.norm, torch.rand(1, 3, 32, 32))
    assert (layout.kind, layout.grid) == ("nhwc", (4, 4))


@pytest.mark.parametrize("factory, expected", [
    (lambda: resnet50(weights=None), "layer4"),
    (lambda: timm.create_model("resnet18", pretrained=False), "layer4"),
    (small_vit, "blocks.1.norm1"),
    (small_swin, "norm"),
    (HFLogits, "model.vit.layers.1.layernorm_before"),
])
def test_default_layer_per_family(factory, expected):
    model = factory().eval()
    size = 64 if expected in ("layer4", "features") else 32
    assert default_layer(model, torch.rand(1, 3, size, size)) == expected


@pytest.mark.parametrize("factory", [small_vit, small_swin, HFLogits])
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "layercam", "guided_gradcam"])
def test_layer_methods_explain_transformers_end_to_end(factory, method, caplog):
    model = factory()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="concilium.explain.layers"):
        maps = explain(model, images, "pred", method=method, batch_size=4)
    assert "layer methods use layer" in caplog.text
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    if method != "guided_gradcam":  # random weights: the ReLU may zero a whole map
        signed = explain(model, images, "pred", method=method, batch_size=4, relu=False)
        assert signed.abs().sum() > 0 and (maps >= 0).all()
    assert hook_counts(model) == {}


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device")


@CUDA
@pytest.mark.parametrize("factory", [small_cnn, small_vit, small_swin])
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "eigencam", "ablationcam", "lrp",
                                    "attention_rollout"])
def test_layer_methods_on_cuda_match_the_cpu(factory, method):
    if method == "attention_rollout" and factory is not small_vit:
        pytest.skip("ViTs only")
    if method == "lrp" and factory is not small_cnn:
        pytest.skip("CNN rules")
    model = factory()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu = explain(model, images, 0, method=method, batch_size=4)
    gpu = explain(model.cuda(), images.cuda(), 0, method=method, batch_size=4)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)


def test_an_in_place_operation_after_the_layer_does_not_rewrite_the_activation(images):
    """The layer feeds an in-place ReLU (in-place activations stay on for layer methods): the
    maps equal those of the same model with an out-of-place ReLU, and Captum's LayerGradCam."""
    from captum.attr import LayerAttribution, LayerGradCam

    def model(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace),
                             nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=inplace),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()

    for method in ("gradcam", "layercam", "eigencam", "ablationcam"):
        a = explain(model(True), images, 1, method=method, layer="2", batch_size=4, relu=False)
        b = explain(model(False), images, 1, method=method, layer="2", batch_size=4, relu=False)
        assert torch.allclose(a, b, atol=1e-6), method
    plain = model(False)
    ref = LayerAttribution.interpolate(
        LayerGradCam(plain, plain[2]).attribute(images, target=1), (16, 16))
    ours = explain(model(True), images, 1, method="gradcam", layer="2", batch_size=4, relu=False)
    assert torch.allclose(ours, ref[:, 0], atol=1e-6)
