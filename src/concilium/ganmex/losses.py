"""GANMEX losses: the WGAN-GP critic loss and the generator loss with the frozen classifier.

Generator loss (Shih, Tien and Karnin, ICML 2021)::

    L_G = L_adv + l_cls * CE(t, C(G(x, t))) + l_sim * |x - G(x, t)|_1
          + l_rec * |x - G(G(x, t), c_x)|_1,      L_adv = -mean D(G(x, t))

Critic loss (WGAN-GP, Gulrajani et al. 2017)::

    L_D = mean D(G(x, t)) - mean D(x) + gp_weight * mean (|grad D(x_hat)|_2 - 1)^2

with ``x_hat`` uniformly interpolated between real and generated images. The L1 terms are
per-pixel means (as in the reference's ``absolute_difference``), so their scale does not depend on
the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CriticLoss",
    "GeneratorLoss",
    "critic_loss",
    "generator_loss",
    "gradient_penalty",
]


def gradient_penalty(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    *,
    generator: torch.Generator | None = None,
    target: float = 1.0,
) -> Tensor:
    """WGAN-GP penalty ``mean_i (|grad_x D(x_hat_i)|_2 - target)^2``.

    Args:
        critic: maps ``(N, C, H, W)`` to ``(N,)`` scores.
        real: real images ``(N, C, H, W)``.
        fake: generated images, same shape (detached here).
        generator: source of the interpolation weights ``alpha ~ U(0, 1)`` per sample.
        target: the gradient norm the penalty pulls towards (1 in WGAN-GP).

    Returns:
        A scalar tensor that carries gradients to the critic's parameters.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape; got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    n = real.shape[0]
    rng_device = generator.device if generator is not None else real.device
    alpha = torch.rand(n, 1, 1, 1, generator=generator, device=rng_device).to(real)
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return ((norms - target) ** 2).mean()


@dataclass
class CriticLoss:
    """The critic's loss and its parts (``wasserstein`` = mean D(fake) - mean D(real))."""

    total: Tensor
    wasserstein: Tensor
    penalty: Tensor


def critic_loss(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    *,
    gp_weight: float = 10.0,
    generator: torch.Generator | None = None,
) -> CriticLoss:
    """WGAN-GP critic loss ``mean D(fake) - mean D(real) + gp_weight * GP``.

    Args:
        critic: maps images to ``(N,)`` scores.
        real: real images ``(N, C, H, W)``.
        fake: generated images, same shape (detached: only the critic is trained by this loss).
        gp_weight: weight of the gradient penalty (10 in WGAN-GP and GANMEX).
        generator: source of the penalty's interpolation weights.
    """
    fake = fake.detach()
    wasserstein = critic(fake).mean() - critic(real).mean()
    penalty = (
        gradient_penalty(critic, real, fake, generator=generator)
        if gp_weight
        else torch.zeros((), device=real.device)
    )
    return CriticLoss(total=wasserstein + gp_weight * penalty, wasserstein=wasserstein,
                      penalty=penalty)


@dataclass
class GeneratorLoss:
    """The generator's loss, its unweighted parts, and the generated images ``G(x, t)``."""

    total: Tensor
    adversarial: Tensor
    classification: Tensor
    similarity: Tensor
    reconstruction: Tensor
    fakes: Tensor


def generator_loss(
    generator_net: nn.Module,
    critic: nn.Module,
    classifier: nn.Module,
    images: Tensor,
    sources: Tensor,
    targets: Tensor,
    *,
    l_cls: float = 1000.0,
    l_sim: float = 100.0,
    l_rec: float = 0.0,
) -> GeneratorLoss:
    """The GANMEX generator loss on one batch.

    Args:
        generator_net: ``G(images, targets) -> images``.
        critic: realism critic ``D(images) -> (N,)``.
        classifier: the frozen classifier ``C(images) -> (N, K)`` logits. Gradients flow through
            it to the generated images; its parameters must not require gradients (see
            :func:`concilium.ganmex.training.frozen`).
        images: real images ``x`` ``(N, C, H, W)`` in [0, 1].
        sources: their classes ``c_x`` ``(N,)`` (used only by the reconstruction term).
        targets: target classes ``t`` ``(N,)``.
        l_cls: weight of ``CE(t, C(G(x, t)))`` (reference: 1000).
        l_sim: weight of the similarity ``|x - G(x, t)|_1`` (reference: 100).
        l_rec: weight of the cycle reconstruction ``|x - G(G(x, t), c_x)|_1`` (reference: 0;
            skipped, and reported as 0, when 0).
    """
    fakes = generator_net(images, targets)
    adversarial = -critic(fakes).mean()
    classification = F.cross_entropy(classifier(fakes), targets)
    similarity = (images - fakes).abs().mean()
    if l_rec:
        reconstruction = (images - generator_net(fakes, sources)).abs().mean()
    else:
        reconstruction = torch.zeros((), device=images.device)
    total = adversarial + l_cls * classification + l_sim * similarity + l_rec * reconstruction
    return GeneratorLoss(total=total, adversarial=adversarial, classification=classification,
                         similarity=similarity, reconstruction=reconstruction, fakes=fakes)
