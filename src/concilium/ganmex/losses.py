"""GANMEX losses: the WGAN-GP critic loss and the generator loss with the frozen classifier.

Generator loss (Shih, Tien and Karnin, ICML 2021)::

    L_G = L_adv + l_cls * L_t(C(G(x, t))) + l_sim * S(x, G(x, t))
          + l_rec * |x - G(G(x, t), c_x)|_1,      L_adv = -mean D(G(x, t))

with the target loss ``L_t`` either the paper's cross-entropy ``CE(t, C(G))`` (``"ce"``) or the
bounded margin (hinge) ``relu(max_{j != t} l_j - l_t + kappa)`` (``"hinge"``, the default here):
the cross-entropy never reaches zero, so at ``l_cls = 1000`` it keeps pushing the target margin
up long after ``G(x, t)`` is classified as ``t``, instead of moving back towards ``x``. The
similarity ``S`` is the per-pixel L1 (``"l1"``) or a group-sparse L1 over 4x4 patches
(``"group"``: the mean over patches of each patch's L2 norm, divided by the square root of its
size so that a change spread evenly costs the same as under ``"l1"``).

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
    "SIMILARITIES",
    "TARGET_LOSSES",
    "CriticLoss",
    "GeneratorLoss",
    "critic_loss",
    "generator_loss",
    "gradient_penalty",
    "similarity_loss",
    "target_loss",
]


TARGET_LOSSES = ("hinge", "ce")
"""Target losses of the generator: the bounded margin (hinge) or the paper's cross-entropy."""
SIMILARITIES = ("l1", "group")
"""Similarity terms: per-pixel L1, or group-sparse L1 over 4x4 patches."""
_PATCH = 4


def target_loss(logits: Tensor, targets: Tensor, *, kind: str = "hinge",
                kappa: float = 2.0) -> Tensor:
    """The classifier term of the generator loss, averaged over the batch.

    Args:
        logits: ``(N, K)`` frozen-classifier logits of ``G(x, t)``.
        targets: ``(N,)`` target classes ``t``.
        kind: ``"hinge"``: ``relu(max_{j != t} l_j - l_t + kappa)``, zero once ``t`` leads by
            ``kappa``; ``"ce"``: ``CE(t, logits)`` (the paper's).
        kappa: the margin of the hinge.
    """
    if kind == "ce":
        return F.cross_entropy(logits, targets)
    if kind != "hinge":
        raise ValueError(f"kind must be one of {', '.join(TARGET_LOSSES)}; got {kind!r}")
    own = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).amax(1)
    return F.relu(others - own + kappa).mean()


def similarity_loss(images: Tensor, fakes: Tensor, *, kind: str = "l1") -> Tensor:
    """``|x - G|`` as a per-pixel mean (``"l1"``) or group-sparse over 4x4 patches (``"group"``).

    ``"group"`` needs ``H`` and ``W`` divisible by 4 (the generator's own constraint).
    """
    diff = images - fakes
    if kind == "l1":
        return diff.abs().mean()
    if kind != "group":
        raise ValueError(f"kind must be one of {', '.join(SIMILARITIES)}; got {kind!r}")
    n, c, h, w = diff.shape
    patches = diff.reshape(n, c, h // _PATCH, _PATCH, w // _PATCH, _PATCH)
    norms = patches.pow(2).sum(dim=(1, 3, 5)).add(1e-12).sqrt()
    return norms.mean() / (c * _PATCH * _PATCH) ** 0.5


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
    l_cls: float = 10.0,
    l_sim: float = 200.0,
    l_rec: float = 0.0,
    target: str = "hinge",
    kappa: float = 2.0,
    similarity: str = "l1",
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
        l_cls: weight of the target loss (reference: 1000 with ``"ce"``).
        l_sim: weight of the similarity (per-pixel L1 on ``[0, 1]``). The reference's 100 is
            on ``[-1, 1]`` images, where the L1 is twice as large: 200 here is the same pressure.
        l_rec: weight of the cycle reconstruction ``|x - G(G(x, t), c_x)|_1`` (reference: 0;
            skipped, and reported as 0, when 0).
        target: the target loss, ``"hinge"`` or ``"ce"`` (see :func:`target_loss`).
        kappa: the hinge margin.
        similarity: ``"l1"`` or ``"group"`` (see :func:`similarity_loss`).
    """
    fakes = generator_net(images, targets)
    adversarial = -critic(fakes).mean()
    classification = target_loss(classifier(fakes), targets, kind=target, kappa=kappa)
    similarity_term = similarity_loss(images, fakes, kind=similarity)
    if l_rec:
        reconstruction = (images - generator_net(fakes, sources)).abs().mean()
    else:
        reconstruction = torch.zeros((), device=images.device)
    total = (adversarial + l_cls * classification + l_sim * similarity_term
             + l_rec * reconstruction)
    return GeneratorLoss(total=total, adversarial=adversarial, classification=classification,
                         similarity=similarity_term, reconstruction=reconstruction, fakes=fakes)
