"""Seeding of stochastic methods: the global generators Captum draws from are seeded inside
:func:`seeded` and restored afterwards, on CPU and on an accelerator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concilium.explain import explain
from concilium.explain.engine import seeded

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device")


def test_seeded_draws_like_a_global_seed_and_restores_the_state():
    torch.manual_seed(1)
    np.random.seed(1)
    before_torch, before_np = torch.get_rng_state(), np.random.get_state()[1].copy()
    with seeded(42, torch.device("cpu")):
        a, b = torch.rand(5), np.random.rand(3)
    assert torch.equal(torch.get_rng_state(), before_torch)
    assert np.array_equal(np.random.get_state()[1], before_np)
    torch.manual_seed(42)
    np.random.seed(42)
    assert torch.equal(a, torch.rand(5)) and np.array_equal(b, np.random.rand(3))


def test_seeded_restores_the_state_after_an_error():
    before = torch.get_rng_state()
    with pytest.raises(KeyError), seeded(3, torch.device("cpu")):
        torch.rand(4)
        raise KeyError("boom")
    assert torch.equal(torch.get_rng_state(), before)


@CUDA
def test_a_cpu_explanation_leaves_the_cuda_generators_alone(net, images):
    before = torch.cuda.get_rng_state_all()
    explain(net, images, "pred", method="smoothgrad", n_samples=4, batch_size=16,
            generator=torch.Generator().manual_seed(0))
    after = torch.cuda.get_rng_state_all()
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))


@CUDA
def test_a_cuda_explanation_is_seeded_and_restores_the_cuda_generator(make_net, images):
    model = make_net().cuda()
    x = images.cuda()
    before_cpu, before_cuda = torch.get_rng_state(), torch.cuda.get_rng_state()

    def run(seed: int) -> torch.Tensor:
        return explain(model, x, "pred", method="smoothgrad", n_samples=4, batch_size=16,
                       generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert first.is_cuda
    assert torch.equal(first, run(0)) and not torch.equal(first, run(1))
    assert torch.equal(torch.get_rng_state(), before_cpu)
    assert torch.equal(torch.cuda.get_rng_state(), before_cuda)
