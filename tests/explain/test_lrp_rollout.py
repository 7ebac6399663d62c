"""LRP through zennit and attention rollout.

(d) LRP equals zennit's own ``Gradient`` attributor with the same composite and canonizers on the
same inputs (ResNet and a VGG-style net with batch norms); (b) relevance is conserved on a
bias-free ReLU net; errors when a requested canonizer finds nothing.
(a) attention rollout equals a slow replica built from the attention matrices the models
themselves compute (timm without the fused kernel; transformers with ``output_attentions``).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision.models import resnet18
from zennit.attribution import Gradient

from concilium.explain import explain
from concilium.explain._context import hook_counts
from concilium.explain.lrp import composite
from concilium.explain.params import LrpParams


def vgg_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    ).eval()


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=4).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so canonizing matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("factory", [small_resnet, vgg_bn])
@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_equals_zennit_directly(factory, name):
    model = factory()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 3])
    ours = explain(model, images, targets, method="lrp", composite=name, reduction=None,
                   batch_size=4)
    p = LrpParams(composite=name)
    comp = composite(p, model, images)
    with Gradient(model=model, composite=comp) as attributor:
        onehot = torch.eye(4)[targets]
        _, ref = attributor(images, lambda out: onehot * out)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)
    assert hook_counts(model) == {}
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # canonizers undone


def test_lrp_conserves_the_logit_on_a_bias_free_net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=False),
    ).eval()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    logits = model(images).detach()
    target = logits.argmax(1)
    relevance = explain(model, images, target, method="lrp", canonizer="none", batch_size=4)
    assert torch.allclose(relevance.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0],
                          rtol=1e-3, atol=1e-5)


def test_requested_canonizer_that_matches_nothing_raises():
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="BasicBlock/Bottleneck"):
        explain(plain, images, 0, method="lrp", canonizer="resnet")
    with pytest.raises(ValueError, match="has none"):
        explain(plain, images, 0, method="lrp", canonizer="vgg")


def _slow_rollout(attentions: list[torch.Tensor], prefix: int, grid: int) -> torch.Tensor:
    """Abnar & Zuidema by hand: per image, per block, mean over heads, + I, rows to 1, chain."""
    out = []
    for b in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        flow = torch.eye(n, dtype=torch.float64)
        for a in attentions:
            fused = a[b].double().mean(0) + torch.eye(n, dtype=torch.float64)
            fused = fused / fused.sum(-1, keepdim=True)
            flow = fused @ flow
        out.append(flow[0, prefix:].reshape(grid, grid))
    return torch.stack(out)


def _upsampled(patch_map: torch.Tensor, size: int) -> torch.Tensor:
    return nn.functional.interpolate(patch_map[:, None].float(), size=(size, size),
                                     mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("registers", [0, 4])
def test_rollout_matches_timm_attention(registers):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                              img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=3,
                              reg_tokens=registers).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = explain(model, images, 0, method="attention_rollout", batch_size=4)
    seen = []
    for block in model.blocks:
        block.attn.fused_attn = False  # timm then computes the matrix: read it off attn_drop
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(images)
    expected = _upsampled(_slow_rollout(seen, 1 + registers, 4), 32)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_rollout_matches_transformers_attentions():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=3, num_attention_heads=3,
        intermediate_size=48, num_labels=3, attn_implementation="eager",
    )).eval()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf

        def forward(self, x):
            return self.model(pixel_values=x).logits

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = explain(Logits(), images, 0, method="attention_rollout", batch_size=4)
    with torch.no_grad():
        attentions = hf(pixel_values=images, output_attentions=True).attentions
    assert len(attentions) == 3
    expected = _upsampled(_slow_rollout(list(attentions), 1, 4), 32)
    assert torch.allclose(ours, expected, atol=1e-6)
