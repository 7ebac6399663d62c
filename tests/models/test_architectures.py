"""The architecture registry: every entry builds a ConciliumNet of the right shapes, with a
real last-conv GradCAM layer and Captum-safe (non-inplace, unshared) ReLU modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concilium.models import ARCHITECTURES, AttributeView, ConciliumNet, create_model
from concilium.models.members import MemberCard, save_member

ARCHS = ARCHITECTURES.names()


def _build(name: str, **kwargs: int) -> ConciliumNet:
    torch.manual_seed(0)
    return create_model(name, num_classes=kwargs.pop("num_classes", 5), **kwargs)


def test_registry_holds_the_issue_architectures() -> None:
    assert {"small-cnn", "resnet18", "vgg11-small"} <= set(ARCHS)


@pytest.mark.parametrize("name", ARCHS)
def test_output_shapes_and_attribute_head(name: str) -> None:
    model = _build(name, num_attributes=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        cls, attrs = model.forward_all(x)
        view = AttributeView(model)(x)
    assert logits.shape == (2, 5)
    assert torch.equal(cls, logits)
    assert attrs is not None and attrs.shape == (2, 4)
    assert torch.equal(view, attrs)
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        alone = model(x[1:])
    assert torch.allclose(alone, logits[1:], atol=1e-5)  # one image's logits ignore the batch
    assert not torch.allclose(logits[0], logits[1])  # ... and depend on the image


@pytest.mark.parametrize("name", ARCHS)
def test_gradcam_layer_is_the_last_conv_with_a_spatial_map(name: str) -> None:
    model = _build(name).eval()
    module = model.gradcam_module()
    assert isinstance(module, nn.Conv2d)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    # the documented layer is the last conv of the main path (ResNet shortcuts are 1x1 projections)
    main = [n for n in convs if "shortcut" not in n]
    assert model.gradcam_layer == main[-1]
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0][-1] >= 2 and seen[0][-2] >= 2  # a map GradCAM can upsample


@pytest.mark.parametrize("name", ARCHS)
def test_relus_are_modules_not_inplace_and_each_used_once(name: str) -> None:
    model = _build(name).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    calls: dict[int, int] = {}
    handles = [
        m.register_forward_hook(lambda m, _i, _o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))
        for m in relus
    ]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert sorted(calls.values()) == [1] * len(relus)  # a shared ReLU would be called twice


def test_small_cnn_has_about_100k_parameters() -> None:
    n = sum(p.numel() for p in _build("small-cnn", num_classes=10).parameters())
    assert 90_000 <= n <= 110_000


def test_resnet18_has_the_resnet18_parameter_count() -> None:
    # 11.17M for 10 classes with the CIFAR stem (the ImageNet stem's 7x7 conv has 9.4k more)
    n = sum(p.numel() for p in _build("resnet18", num_classes=10).parameters())
    assert n == 11_173_962


def test_deeplift_runs_on_small_cnn() -> None:
    # Captum's DeepLift replaces the gradient of every nn.ReLU module; it fails or is wrong with
    # in-place or functional ReLUs. Completeness: attributions sum to f(x) - f(baseline).
    from captum.attr import DeepLift

    model = _build("small-cnn").eval().double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    base = torch.zeros_like(x)
    attr, delta = DeepLift(model).attribute(
        x, baselines=base, target=1, return_convergence_delta=True
    )
    assert attr.shape == x.shape
    assert delta.abs().max() < 1e-6


def test_unknown_architecture_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet19'.*small-cnn.*vgg11"):
        create_model("resnet19", num_classes=3)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_classes": 0}, ValueError),
        ({"num_classes": 3, "num_attributes": -1}, ValueError),
        ({"num_classes": 3, "in_channels": 0}, ValueError),
        ({"num_classes": 3.0}, TypeError),
    ],
)
def test_bad_sizes_raise(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        create_model("small-cnn", **kwargs)


def test_arch_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="arch must be a string"):
        create_model(None, num_classes=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ARCHS)
def test_single_channel_images(name: str) -> None:
    model = _build(name, in_channels=1).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits[0, 0].backward()
    # the logit reads its own image's pixels and not the other image's (eval mode: no batch mixing)
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() == 0
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 3, 32, 32))  # a 3-channel image does not fit a 1-channel network


def test_weights_file_round_trip_and_mismatch(tmp_path) -> None:
    model = _build("small-cnn").eval()
    card = MemberCard(
        member_id="m0",
        arch="small-cnn",
        num_classes=5,
        class_names=list("abcde"),
        image_size=(32, 32),
        seed=0,
        diversity="seed",
        epochs=1,
        gradcam_layer=model.gradcam_layer,
        data_fingerprint="x",
    )
    save_member(model, card, tmp_path / "m0")
    weights = tmp_path / "m0" / "model.safetensors"
    torch.manual_seed(1)  # a different random init, overwritten by the file
    again = create_model("small-cnn", num_classes=5, weights=weights).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    with pytest.raises(ValueError, match="do not fit"):
        create_model("small-cnn", num_classes=7, weights=weights)
