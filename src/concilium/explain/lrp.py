"""Layer-wise relevance propagation through zennit, registered as ``lrp`` in :data:`METHODS`.

zennit's composites put a rule on every layer (``EpsilonPlusFlat``: flat on the first layer, z+
on convolutions, epsilon on dense layers; ``EpsilonGammaBox``: z-box on the first convolution,
gamma on the others, epsilon on dense layers); its canonizers first rewrite what the rules cannot
see (batch norms merged into the preceding layer; torchvision's residual blocks made explicit).
The relevance starts as the target logit (``grad_outputs = one-hot * logits``, as Captum's LRP)
and is read as the input gradient of the modified model: zennit's rules return relevance, so
the input's relevance sums to the logit up to the biases and the stabilisers.

The canonizer ``"auto"`` picks zennit's ``ResNetCanonizer`` when the model holds torchvision
residual blocks, else ``SequentialMergeBatchNorm`` when it holds batch norms, else none; the
choice is logged. An explicitly requested canonizer that finds nothing to rewrite raises
(zennit's canonizers would silently do nothing). The rules are those of CNNs (convolutions,
dense layers, batch norms, ReLUs and pooling); attention layers are not given LRP rules.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.core import Composite
from zennit.torchvision import ResNetCanonizer

from concilium.explain import params as P
from concilium.explain.methods import Chunk, register_method

log = logging.getLogger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def canonizers(model: nn.Module, choice: str) -> list[Canonizer]:
    """zennit canonizers for ``model`` (``choice``: ``auto``, ``resnet``, ``vgg`` or ``none``).

    Raises:
        ValueError: ``resnet`` without torchvision residual blocks, or ``vgg`` without batch
            norms (the canonizer would change nothing).
    """
    has_blocks = any(isinstance(m, BasicBlock | Bottleneck) for m in model.modules())
    has_norms = any(isinstance(m, _BATCH_NORMS) for m in model.modules())
    if choice == "auto":
        choice = "resnet" if has_blocks else "vgg" if has_norms else "none"
        log.info("lrp uses the %r canonizer for %s", choice, type(model).__name__)
    if choice == "resnet":
        if not has_blocks:
            raise ValueError("canonizer='resnet' needs torchvision BasicBlock/Bottleneck modules; "
                             "this model has none (use 'vgg' to merge batch norms, or 'none')")
        return [ResNetCanonizer()]
    if choice == "vgg":
        if not has_norms:
            raise ValueError("canonizer='vgg' merges batch norms; this model has none (use 'none')")
        return [SequentialMergeBatchNorm()]
    return []


def composite(p: P.LrpParams, model: nn.Module, like: Tensor) -> Composite:
    """The zennit composite of ``p`` with the canonizers of ``model``; ``like`` gives the shape,
    device and dtype of the z-box bounds."""
    canon = canonizers(model, p.canonizer)
    if p.composite == "epsilon_gamma_box":
        return EpsilonGammaBox(
            low=torch.full_like(like, p.low), high=torch.full_like(like, p.high),
            epsilon=p.epsilon, gamma=p.gamma, canonizers=canon,
        )
    return EpsilonPlusFlat(epsilon=p.epsilon, canonizers=canon)


@register_method(
    name="lrp", captum_class="zennit.composites.EpsilonPlusFlat", params=P.LrpParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=False, per_channel=True,
    passes=lambda p, hw: 1,
    activation_hooks=True,
    description="layer-wise relevance propagation (zennit composites and canonizers)",
)
def _lrp(c: Chunk, p: P.LrpParams) -> Tensor:
    x = c.images.detach().requires_grad_(True)
    with composite(p, c.module, x).context(c.module) as modified:
        out = modified(x, *(c.forward_args or ()))
        start = torch.zeros_like(out).scatter(1, c.classes.view(-1, 1), 1.0) * out.detach()
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=start)
    return relevance.detach()
