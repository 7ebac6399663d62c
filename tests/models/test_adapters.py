"""timm/torchvision adapters: a clear error when the package is missing (as here), and the
wrapping logic checked against small stand-in packages that expose the same entry points."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from concilium.models import create_model
from concilium.models.adapters import create_adapter, find_last_conv


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_missing_library_is_a_clear_error(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec(library) is not None:
        monkeypatch.setitem(sys.modules, library, None)  # importing it now raises ImportError
    with pytest.raises(ValueError, match=rf"needs the '{library}' package.*pip install {library}"):
        create_model(f"{library}:resnet18", num_classes=3)


@pytest.mark.parametrize("arch", ["keras:resnet", "timm:", "onnx:x"])
def test_unknown_adapter(arch: str) -> None:
    with pytest.raises(ValueError, match="adapters are 'timm:<name>'"):
        create_model(arch, num_classes=3)


class _TinyTimmNet(nn.Module):
    """Mimics a timm classifier: ``num_features``, ``reset_classifier``, pooled output."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.conv_head = nn.Conv2d(4, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 6
        self.fc: nn.Module = nn.Linear(6, 1000)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(6, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv_head(self.act(self.stem(x)))).flatten(1))


def _fake_timm() -> types.ModuleType:
    module = types.ModuleType("timm")
    calls: list[dict] = []

    def create(name: str, *, pretrained: bool, in_chans: int) -> nn.Module:
        calls.append({"name": name, "pretrained": pretrained, "in_chans": in_chans})
        return _TinyTimmNet(in_chans)

    module.create_model = create  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


class _TinyVGG(nn.Module):
    """Mimics a torchvision VGG: ``features``, ``avgpool``, ``classifier`` ending in Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _fake_torchvision() -> types.ModuleType:
    module = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def get_model(name: str, *, weights: object) -> nn.Module:
        assert weights is None  # never ask torchvision to download
        return _TinyVGG()

    models.get_model = get_model  # type: ignore[attr-defined]
    module.models = models  # type: ignore[attr-defined]
    return module


def test_timm_adapter_wraps_the_feature_extractor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    timm = _fake_timm()
    monkeypatch.setitem(sys.modules, "timm", timm)
    torch.manual_seed(0)
    source = _TinyTimmNet(3)
    weights = tmp_path / "w.pth"
    torch.save(source.state_dict(), weights)
    model = create_model("timm:tiny", num_classes=3, num_attributes=2, weights=weights).eval()
    assert timm.calls == [{"name": "tiny", "pretrained": False, "in_chans": 3}]
    assert model.gradcam_layer == "backbone.net.conv_head"
    assert isinstance(model.gradcam_module(), nn.Conv2d)
    x = torch.rand(2, 3, 16, 16)
    logits, attrs = model.forward_all(x)
    assert logits.shape == (2, 3) and attrs.shape == (2, 2)
    # the loaded library weights are the backbone: features equal the source's pooled features
    expected = source.pool(source.conv_head(source.act(source.stem(x)))).flatten(1)
    assert torch.allclose(model.features(x), expected)


def test_timm_gradcam_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", _fake_timm())
    model = create_adapter("timm:tiny", num_classes=3, gradcam_layer="stem")
    assert model.gradcam_layer == "backbone.net.stem"
    with pytest.raises(ValueError, match="is not a module of timm:tiny; last conv layers"):
        create_adapter("timm:tiny", num_classes=3, gradcam_layer="layer9")


def test_torchvision_adapter_strips_the_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision())
    model = create_model("torchvision:vgg11", num_classes=4).eval()
    assert model.feature_dim == 5  # the input width of the last Linear
    assert model.gradcam_layer == "backbone.net.features.2"
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 4)
    with pytest.raises(ValueError, match="take 3-channel images"):
        create_model("torchvision:vgg11", num_classes=4, in_channels=1)


def test_find_last_conv_without_convs() -> None:
    with pytest.raises(ValueError, match="has no Conv2d layer"):
        find_last_conv(nn.Sequential(nn.Linear(2, 2)))
