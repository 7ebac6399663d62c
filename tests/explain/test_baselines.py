"""Baselines: checks over every registered entry, hand values, spec parsing, and the provider
protocol. A new baseline is picked up by the registry checks without editing this file."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor

from concilium.explain import (
    BASELINES,
    BaselineProvider,
    MeanBaseline,
    baseline_name,
    explain,
    parse_baseline,
    resolve_baselines,
)


def _x():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_the_documented_baselines_are_registered():
    assert {"black", "blur", "mean", "tensor", "uniform", "zero"} <= set(BASELINES.names())


def _build(name: str) -> BaselineProvider:
    """An instance of ``name`` with its defaults; a required tensor argument gets a per-channel
    value in ``[0, 1]`` (as ``MeanBaseline(mean)`` takes)."""
    factory = BASELINES.get(name)
    required = {}
    for pname, param in inspect.signature(factory).parameters.items():
        if param.default is not inspect.Parameter.empty or param.kind in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
        ):
            continue
        if param.annotation not in (Tensor, "Tensor"):
            raise TypeError(f"baseline {name!r}: give parameter {pname!r} a default, or teach "
                            "this test how to build it")
        required[pname] = torch.tensor([0.2, 0.5, 0.9])
    return factory(**required)


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_gives_one_reference_per_image_in_range(name):
    x = torch.rand(3, 3, 9, 7, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 0])
    provider = _build(name)
    assert isinstance(provider, BaselineProvider)
    out = resolve_baselines(provider, x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1, "a baseline of [0, 1] images must stay in [0, 1]"
    assert torch.equal(out, resolve_baselines(_build(name), x, t)), "not deterministic"
    assert repr(provider), "a baseline needs a repr: it names the baseline in store metadata"


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_plugs_into_explain(name, net, images):
    maps = explain(net, images, "pred", method="integrated_gradients", n_steps=4,
                   baseline=_build(name), batch_size=16)
    assert maps.shape == (4, 16, 16) and torch.isfinite(maps).all()


def test_zero_and_black_by_hand():
    x = _x()
    x[1] += 0.5
    t = torch.zeros(2, dtype=torch.long)
    assert torch.equal(parse_baseline("zero")(x, t), torch.zeros_like(x))
    black = parse_baseline("black")(x, t)
    assert torch.equal(black[0], torch.full_like(x[0], float(x[0].min())))
    assert torch.equal(black[1], torch.full_like(x[1], float(x[1].min())))


def test_blur_keeps_constants_and_mass():
    t = torch.zeros(1, dtype=torch.long)
    const = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(parse_baseline("blur:sigma=1.5")(const, t), const, atol=1e-6)
    delta = torch.zeros(1, 1, 21, 21)
    delta[0, 0, 10, 10] = 1.0
    out = parse_baseline("blur:sigma=2")(delta, t)
    assert abs(out.sum().item() - 1.0) < 1e-5
    assert out[0, 0, 10, 10] == out.max() and out[0, 0, 10, 12] < out[0, 0, 10, 11]
    # separable Gaussian by hand: the centre weight is (1 / sum_k exp(-k^2/8))^2
    k = torch.exp(-0.5 * (torch.arange(-6, 7.0) / 2) ** 2)
    assert abs(out[0, 0, 10, 10].item() - (1 / k.sum().item()) ** 2) < 1e-6


def test_uniform_is_seeded_and_in_range():
    x, t = _x(), torch.zeros(2, dtype=torch.long)
    a = parse_baseline("uniform:low=0.2,high=0.4,seed=3")(x, t)
    assert torch.equal(a, parse_baseline("uniform:low=0.2,high=0.4,seed=3")(x, t))
    assert not torch.equal(a, parse_baseline("uniform:low=0.2,high=0.4,seed=4")(x, t))
    assert a.min() >= 0.2 and a.max() <= 0.4


def test_uniform_from_a_generator_draws_anew_and_leaves_the_seed_path():
    x, t = _x(), torch.zeros(2, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    a = parse_baseline("uniform:low=0.2,high=0.4", generator=g)
    first, second = a(x, t), a(x, t)
    assert not torch.equal(first, second)  # a fresh draw per call
    assert first.min() >= 0.2 and second.max() <= 0.4
    # without a generator, unchanged: the same noise for the same shape
    assert torch.equal(parse_baseline("uniform")(x, t), parse_baseline("uniform")(x, t))


def test_image_mean_by_hand():
    x, t = _x(), torch.zeros(2, dtype=torch.long)
    out = parse_baseline("image_mean")(x, t)
    for i in range(2):
        assert torch.allclose(out[i], torch.full_like(x[i], float(x[i].mean())))


def test_mean_and_tensor_broadcast():
    x, t = _x(), torch.zeros(2, dtype=torch.long)
    m = MeanBaseline(torch.tensor([0.1, 0.2, 0.3]))
    out = resolve_baselines(m, x, t)
    assert torch.allclose(out[1, :, 4, 4], torch.tensor([0.1, 0.2, 0.3]))
    img = torch.rand(3, 8, 8)
    assert torch.equal(resolve_baselines(img, x, t)[0], img)
    with pytest.raises(ValueError, match=r"does not broadcast"):
        resolve_baselines(torch.rand(3, 4, 4), x, t)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("bluur", r"unknown baseline 'bluur'; valid names: black, blur"),
        ("blur:radius=3", r"'blur' takes sigma=<float>"),
        ("blur:sigma=abc", r"sigma must be a float"),
        ("blur:sigma=-1", r"sigma must be > 0"),
        ("zero:x=1", r"takes no parameters"),
        ("mean", r"needs a tensor"),
        ("uniform:low=1,high=0", r"low < high"),
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_baseline(spec)


def test_names_are_stable():
    assert baseline_name("blur:sigma=4") == "blur:sigma=4"
    assert baseline_name("zero") == "zero"


class _Counterfactual:
    """A provider that depends on the target, as GANMEX's does."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, targets):
        self.seen.append(targets.clone())
        return images * 0 + targets.view(-1, 1, 1, 1).to(images.dtype) / 10


def test_provider_plugs_in_per_image_and_target(net, images):
    provider = _Counterfactual()
    assert isinstance(provider, BaselineProvider)
    labels = torch.tensor([0, 1, 2, 1])
    attr = explain(net, images, "label", labels=labels, method="integrated_gradients",
                   baseline=provider, reduction=None, n_steps=32, batch_size=64)
    assert torch.equal(provider.seen[0], labels)
    same = explain(net, images, labels, method="integrated_gradients",
                   baseline=provider(images, labels), reduction=None, n_steps=32, batch_size=64)
    assert torch.allclose(attr, same, atol=1e-7)


def test_provider_returning_wrong_shape(net, images):
    with pytest.raises(ValueError, match=r"must return \(N, C, H, W\)"):
        explain(net, images, 0, method="occlusion", baseline=lambda x, t: x[:1])
    with pytest.raises(TypeError, match=r"baseline must be"):
        explain(net, images, 0, method="occlusion", baseline=3)
