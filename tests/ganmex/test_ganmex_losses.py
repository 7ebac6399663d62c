"""Losses against hand-computed values: gradient penalty, critic loss, generator loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from concilium.ganmex import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    similarity_loss,
    target_loss,
)


class LinearCritic(nn.Module):
    """``D(x) = <w, x>``: its input gradient is ``w`` everywhere, with norm ``|w|_2``."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.w).flatten(1).sum(1)


class HalfSquareCritic(nn.Module):
    """``D(x) = |x|^2 / 2``: its input gradient is ``x`` itself."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (x**2).flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic() -> None:
    w = torch.zeros(1, 2, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 3.0, 4.0  # |w| = 5
    critic = LinearCritic(w)
    real, fake = torch.rand(3, 2, 2, 2), torch.rand(3, 2, 2, 2)
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2)
    gp.backward()  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    torch.testing.assert_close(critic.w.grad, 2 * 4.0 * w / 5.0)


def test_gradient_penalty_at_the_interpolates() -> None:
    real = torch.ones(2, 1, 1, 4)  # |real_i| = 2
    fake = torch.zeros(2, 1, 1, 4)
    alpha = torch.rand(2, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    expected = ((2.0 * alpha.flatten() - 1.0) ** 2).mean()  # grad = x_hat = alpha * real
    gp = gradient_penalty(HalfSquareCritic(), real, fake,
                          generator=torch.Generator().manual_seed(7))
    assert gp.item() == pytest.approx(expected.item(), rel=1e-6)


def test_critic_loss_by_hand() -> None:
    w = torch.full((1, 1, 1, 2), 0.5)  # |w| = sqrt(0.5)
    critic = LinearCritic(w)
    real = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])
    fake = torch.tensor([[[[0.0, 0.0]]], [[[0.0, 1.0]]]])
    out = critic_loss(critic, real, fake, gp_weight=10.0,
                      generator=torch.Generator().manual_seed(0))
    wasserstein = (0.0 + 0.5) / 2 - (1.0 + 1.0) / 2
    assert out.wasserstein.item() == pytest.approx(wasserstein)
    assert out.penalty.item() == pytest.approx((math.sqrt(0.5) - 1) ** 2, rel=1e-5)
    assert out.total.item() == pytest.approx(wasserstein + 10 * (math.sqrt(0.5) - 1) ** 2, rel=1e-5)
    no_gp = critic_loss(critic, real, fake, gp_weight=0.0)
    assert no_gp.total.item() == pytest.approx(wasserstein)


class Shift(nn.Module):
    """``G(x, t) = x + 0.1 * (t + 1)``: a generator whose terms are known by hand."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x + 0.1 * (t.float() + 1).view(-1, 1, 1, 1)


class ZeroLogits(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 4) + 0.0 * x.sum()


def test_generator_loss_by_hand() -> None:
    x = torch.full((2, 1, 2, 2), 0.5)
    sources, targets = torch.tensor([0, 1]), torch.tensor([1, 3])
    critic = LinearCritic(torch.ones(1, 1, 2, 2))
    out = generator_loss(Shift(), critic, ZeroLogits(), x, sources, targets,
                         l_cls=1000.0, l_sim=100.0, l_rec=2.0, target="ce")
    fakes = x + torch.tensor([0.2, 0.4]).view(2, 1, 1, 1)
    adversarial = -fakes.flatten(1).sum(1).mean()
    similarity = 0.3  # mean of |0.2| and |0.4|
    recon = x - (fakes + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1))  # G(G(x, t), c_x)
    reconstruction = recon.abs().mean()
    assert out.adversarial.item() == pytest.approx(adversarial.item())
    assert out.classification.item() == pytest.approx(math.log(4))
    assert out.similarity.item() == pytest.approx(similarity)
    assert out.reconstruction.item() == pytest.approx(reconstruction.item())
    expected = adversarial + 1000 * math.log(4) + 100 * similarity + 2.0 * reconstruction
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(out.fakes, fakes)


def test_reconstruction_is_skipped_when_its_weight_is_zero() -> None:
    calls = []

    class Counting(Shift):
        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            calls.append(1)
            return super().forward(x, t)

    x = torch.rand(2, 1, 2, 2)
    out = generator_loss(Counting(), LinearCritic(torch.ones(1, 1, 2, 2)), ZeroLogits(), x,
                         torch.tensor([0, 1]), torch.tensor([1, 0]), l_rec=0.0)
    assert len(calls) == 1 and out.reconstruction.item() == 0.0


def test_gradient_penalty_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(HalfSquareCritic(), torch.rand(2, 1, 2, 2), torch.rand(1, 1, 2, 2))


def test_hinge_target_loss_by_hand() -> None:
    logits = torch.tensor([[1.0, 4.0, 2.0], [0.0, 0.5, 3.0]])
    targets = torch.tensor([1, 0])
    # row 0: t leads the best other (2) by 2 -> relu(2 - 4 + 2) = 0; row 1: relu(3 - 0 + 2) = 5
    assert target_loss(logits, targets, kind="hinge", kappa=2.0).item() == pytest.approx(2.5)
    assert target_loss(logits, targets, kind="hinge", kappa=1.0).item() == pytest.approx(2.0)
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert target_loss(logits, targets, kind="ce").item() == pytest.approx(ce.item())
    with pytest.raises(ValueError, match="hinge, ce"):
        target_loss(logits, targets, kind="softmax")


def test_hinge_is_bounded_where_cross_entropy_keeps_pushing() -> None:
    # the defect the hinge fixes (review D2): CE still has a gradient once t clearly wins
    logits = torch.tensor([[0.0, 6.0]], requires_grad=True)
    target_loss(logits, torch.tensor([1]), kind="hinge").backward()
    assert logits.grad.abs().sum() == 0
    logits.grad = None
    target_loss(logits, torch.tensor([1]), kind="ce").backward()
    assert logits.grad.abs().sum() > 0


def test_group_similarity_equals_l1_for_an_even_change_and_prefers_concentrated_ones() -> None:
    x = torch.rand(2, 3, 8, 8)
    even = x + 0.1
    assert similarity_loss(x, even, kind="group").item() == pytest.approx(
        similarity_loss(x, even, kind="l1").item(), rel=1e-5)
    # the same L1 in one 4x4 patch costs less than spread over all four patches
    spread = x.clone()
    spread[:, :, ::4, ::4] += 0.4
    one = x.clone()
    one[:, :, 0:2, 0:2] += 0.4
    assert similarity_loss(x, one, kind="l1").item() == pytest.approx(
        similarity_loss(x, spread, kind="l1").item(), rel=1e-5)
    assert similarity_loss(x, one, kind="group") < similarity_loss(x, spread, kind="group")
