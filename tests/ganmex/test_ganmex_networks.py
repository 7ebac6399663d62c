"""Generator and critic: shapes for several sizes, per-image outputs, output range, a training
step that lowers the loss, refused sizes."""

from __future__ import annotations

import pytest
import torch

from concilium.ganmex import Critic, Generator


@pytest.mark.parametrize(("size", "patches"), [(8, 4), (32, 4), (36, 4), (64, 4), (224, 7)])
def test_shapes_for_several_sizes(size: int, patches: int) -> None:
    gen = Generator(num_classes=3, base_channels=4, num_residual=1)
    critic = Critic(image_size=(size, size), base_channels=4)
    x = torch.rand(2, 3, size, size)
    out = gen(x, torch.tensor([0, 2]))
    assert out.shape == x.shape
    assert critic.patches(x).shape == (2, 1, patches, patches)
    assert critic(x).shape == (2,)
    # each image's output is its own (instance norm, no batch statistics), in [0, 1]
    torch.testing.assert_close(out[1:], gen(x[1:], torch.tensor([2])))
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    scores = critic(x)
    torch.testing.assert_close(scores[1:], critic(x[1:]))
    assert scores[0] != scores[1]  # the score reads the image


def test_a_few_steps_lower_the_losses_on_a_fixed_batch() -> None:
    """The networks can learn: the generator moves towards a fixed target image (L1) and the
    critic separates two fixed batches (WGAN objective)."""
    torch.manual_seed(0)
    gen = Generator(num_classes=2, base_channels=4, num_residual=1)
    critic = Critic(image_size=(8, 8), base_channels=4)
    x, goal = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8) * 0.5
    t = torch.tensor([0, 1, 0, 1])

    def gen_loss() -> torch.Tensor:
        return (gen(x, t) - goal).abs().mean()

    def critic_loss() -> torch.Tensor:
        return critic(fake).mean() - critic(real).mean()

    for net, loss in ((gen, gen_loss), (critic, critic_loss)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        before = float(loss())
        for _ in range(10):
            opt.zero_grad()
            loss().backward()
            opt.step()
        assert float(loss()) < before - 1e-3, type(net).__name__


def test_rectangular_images() -> None:
    gen = Generator(num_classes=2, base_channels=4, num_residual=0)
    critic = Critic(image_size=(32, 48), base_channels=4)
    x = torch.rand(1, 3, 32, 48)
    assert gen(x, torch.tensor([1])).shape == x.shape
    assert critic(x).shape == (1,)


@pytest.mark.parametrize("output", ["tanh", "sigmoid", "residual"])
def test_output_in_unit_range(output: str) -> None:
    gen = Generator(num_classes=2, base_channels=4, num_residual=1, output=output)
    with torch.no_grad():  # push the last layer to saturate both ways
        gen.net[-1].bias.fill_(50.0)
        hi = gen(torch.rand(1, 3, 8, 8), torch.tensor([0]))
        gen.net[-1].bias.fill_(-50.0)
        lo = gen(torch.rand(1, 3, 8, 8), torch.tensor([0]))
    assert float(hi.min()) >= 0.99 and float(hi.max()) <= 1.0
    assert float(lo.max()) <= 0.01 and float(lo.min()) >= 0.0


def test_residual_output_starts_at_the_identity() -> None:
    gen = Generator(num_classes=3, base_channels=4, num_residual=1, output="residual")
    x = torch.rand(2, 3, 8, 8).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(gen(x, torch.tensor([0, 2])), x)


def test_target_changes_output() -> None:
    gen = Generator(num_classes=3, base_channels=4, num_residual=1, output="tanh")
    x = torch.rand(1, 3, 16, 16)
    a = gen(x, torch.tensor([0]))
    b = gen(x, torch.tensor([1]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("size", [30, 6])
def test_sizes_not_divisible_by_4_are_refused(size: int) -> None:
    gen = Generator(num_classes=2, base_channels=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        gen(torch.rand(1, 3, size, size), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible by 4"):
        Critic(image_size=(size, size))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        Generator(num_classes=1)
    with pytest.raises(ValueError, match="output"):
        Generator(num_classes=2, output="relu")  # type: ignore[arg-type]
    gen = Generator(num_classes=2, base_channels=4)
    with pytest.raises(ValueError, match="3-channel"):
        gen(torch.rand(1, 1, 8, 8), torch.tensor([0]))


def test_additive_output_starts_at_the_exact_identity_and_stays_in_range() -> None:
    gen = Generator(num_classes=3, base_channels=4, num_residual=1)  # the default: additive
    assert gen.output == "additive"
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, :2] = 0.0
    x[0, 1, :2] = 1.0
    with torch.no_grad():
        assert torch.equal(gen(x, torch.tensor([0, 2])), x)  # exact, pixels at 0 and 1 too
        last = gen.net[-1]
        last.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(0))
        last.bias.fill_(0.3)
        out = gen(x, torch.tensor([0, 2]))
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    # a = +1 reaches white and a = -1 black from any pixel: a by hand
    a = torch.tensor([1.0, -1.0, 0.5, -0.5])
    v = torch.tensor([0.2, 0.2, 0.6, 0.6])
    by_hand = torch.tensor([1.0, 0.0, 0.8, 0.3])
    torch.testing.assert_close(v + a * torch.where(a >= 0, 1 - v, v), by_hand)


def test_additive_output_learns_from_the_first_step() -> None:
    # zero-initialised last layer: only it has a gradient at step 0, and it is non-zero
    gen = Generator(num_classes=3, base_channels=4, num_residual=1)
    x = torch.rand(2, 3, 16, 16)
    gen(x, torch.tensor([0, 1])).mean().backward()
    assert gen.net[-1].weight.grad.abs().sum() > 0
