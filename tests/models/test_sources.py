"""Member sources: hf:DIR, timm:/torchvision:NAME@WEIGHTS, python:MODULE:FACTORY, members folders.

Real transformers, timm and torchvision models (tiny configurations, random weights saved
locally); every loaded member is checked against the library model called by hand on the same
preprocessed inputs, and every bad source is a clear error.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from transformers import (
    BertConfig,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from concilium.models import (
    SOURCE_KINDS,
    Preprocessing,
    SourceModel,
    as_member,
    describe_sources,
    load_sources,
    parse_source,
    to_logits,
)
from concilium.models.hub import class_names_of

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device")
NAMES = ["a", "b", "c"]


def tiny_vit_config(size: int = 32, labels: list[str] | None = None) -> ViTConfig:
    labels = labels or ["c", "a", "b"]
    return ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, num_labels=len(labels),
                     id2label=dict(enumerate(labels)),
                     label2id={n: i for i, n in enumerate(labels)})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny ViT (hf), a timm and a torchvision resnet18, saved as users keep them."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    vit = ViTForImageClassification(tiny_vit_config()).eval()
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "vit")
    tm = timm.create_model("resnet18", num_classes=3).eval()
    save_file(tm.state_dict(), str(root / "timm.safetensors"),
              metadata={"class_names": json.dumps(["b", "c", "a"])})
    tv = torchvision.models.resnet18(num_classes=3).eval()
    save_file(tv.state_dict(), str(root / "tv.safetensors"))
    return {"root": root, "vit": vit, "timm": tm, "tv": tv}


def test_every_kind_is_registered() -> None:
    assert set(SOURCE_KINDS.names()) >= {"folder", "hf", "timm", "torchvision", "python"}


@pytest.mark.parametrize("kind", SOURCE_KINDS.names())
def test_every_kind_parses_its_example_and_round_trips(kind: str) -> None:
    entry = SOURCE_KINDS.get(kind)
    source = parse_source(entry.example)
    assert source.kind == kind
    assert parse_source(source.text) == source
    assert entry.syntax in str(pytest.raises(ValueError, parse_source, "").value)


@pytest.mark.parametrize(("text", "kind", "target", "weights"), [
    ("hf:/m/vit", "hf", "/m/vit", None),
    ("timm:resnet50@/w/r.safetensors", "timm", "resnet50", "/w/r.safetensors"),
    ("torchvision:vit_b_16@/w/v.safetensors", "torchvision", "vit_b_16", "/w/v.safetensors"),
    ("python:pkg.nets:build", "python", "pkg.nets:build", None),
    ("/m/members", "folder", "/m/members", None),
    ("folder:/m/members", "folder", "/m/members", None),
])
def test_parse(text: str, kind: str, target: str, weights: str | None) -> None:
    s = parse_source(text)
    assert (s.kind, s.target, s.weights) == (kind, target, weights)
    assert parse_source(s.text) == s  # the recorded text parses back to the same source


@pytest.mark.parametrize(("text", "match"), [
    ("timm:resnet50", r"needs a local weights file.*timm:resnet50@/path/to/model.safetensors"),
    ("torchvision:resnet18@", "has '@' but no weights file"),
    ("timm:@/w.safetensors", "names no model"),
    ("python:justamodule", "python:MODULE:FACTORY"),
    ("hf:", "hf:DIR"),
    ("", "member source is empty"),
])
def test_bad_source_strings(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_source(text)


def test_typo_in_kind_names_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown member source kind 'tim'.*hf:DIR"):
        load_sources(f"tim:resnet18@{tmp_path}/w.safetensors", class_names=NAMES)
    with pytest.raises(FileNotFoundError, match=r"models folder .*nowhere not found.*hf:DIR"):
        load_sources(str(tmp_path / "nowhere"), class_names=NAMES)


def test_to_logits_reads_every_output_form() -> None:
    x = torch.randn(2, 3)
    vit_out = ViTForImageClassification(tiny_vit_config()).eval()(torch.rand(2, 3, 32, 32))
    assert to_logits(vit_out) is vit_out.logits
    for out in (x, (x, None), [x], {"logits": x, "aux": 1}):
        assert to_logits(out) is x
    with pytest.raises(TypeError, match="cannot find class logits.*'features'"):
        to_logits({"features": x})
    with pytest.raises(TypeError, match=r"must be \(N, classes\)"):
        to_logits(torch.randn(2, 3, 4))


def test_wrapper_normalises_resizes_and_orders_by_hand() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    pre = Preprocessing(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), input_size=(4, 4))
    model = SourceModel(net, pre, order=[2, 0, 1])
    x = torch.rand(2, 3, 8, 8)
    small = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear",
                                            align_corners=False, antialias=True)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 2.0])
    expected = net((small - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))[:, [2, 0, 1]]
    torch.testing.assert_close(model(x), expected)
    x.requires_grad_(True)
    model(x)[:, 0].sum().backward()  # the gradient reaches the user's pixels through the resize
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_hf_member_equals_the_library_model_on_preprocessed_inputs(zoo: dict) -> None:
    (model, card), = load_sources(f"hf:{zoo['root'] / 'vit'}", class_names=NAMES)
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    ref = zoo["vit"](pixel_values=(x - mean) / std).logits
    # the model's classes are c, a, b; the data's a, b, c: columns follow the data
    torch.testing.assert_close(model(x), ref[:, [1, 2, 0]], rtol=1e-4, atol=1e-5)
    assert card.class_names == NAMES and card.model_class_names == ["c", "a", "b"]
    assert card.input_size == (32, 32) and card.mean == pytest.approx([0.4, 0.5, 0.6])
    assert card.arch == "hf:ViTForImageClassification"
    assert card.gradcam_layer is None  # a ViT's only conv is its patch embedding
    assert not model.training


def test_timm_and_torchvision_members_equal_the_library_models(zoo: dict) -> None:
    root = zoo["root"]
    members = load_sources([f"timm:resnet18@{root / 'timm.safetensors'}",
                            f"torchvision:resnet18@{root / 'tv.safetensors'}"], class_names=NAMES)
    assert [c.member_id for _, c in members] == ["m0", "m1"]
    x = torch.rand(2, 3, 64, 64)
    big = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear",
                                          align_corners=False, antialias=True)
    imagenet = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    pre = (big - imagenet[0]) / imagenet[1]
    (tm, tcard), (tv, vcard) = members
    with torch.no_grad():
        # timm's file names its classes b, c, a (safetensors metadata): reordered to a, b, c
        torch.testing.assert_close(tm(x), zoo["timm"](pre)[:, [2, 0, 1]], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tv(x), zoo["tv"](pre), rtol=1e-4, atol=1e-4)
    assert tcard.gradcam_layer == "net.layer4.1.conv2" and vcard.gradcam_layer == tcard.gradcam_layer
    assert "timm pretrained_cfg" in tcard.preprocessing
    assert "torchvision weights meta" in vcard.preprocessing
    rows = describe_sources([f"timm:resnet18@{root / 'timm.safetensors'}",
                             f"hf:{root / 'vit'}"])
    assert [(r["member_id"], r["arch"]) for r in rows] == [
        ("m0", "timm:resnet18"), ("m1", "hf:ViTForImageClassification")]


def test_class_mismatch_names_both_lists(zoo: dict) -> None:
    with pytest.raises(ValueError, match=r"model has 3 classes \[c, a, b\].*data has 3 \[a, b, x\]"
                                         r".*only in the model: \[c\].*only in the data: \[x\]"):
        load_sources(f"hf:{zoo['root'] / 'vit'}", class_names=["a", "b", "x"])
    with pytest.raises(ValueError, match=r"has 3 classes, the data has 2 \(\[a, b\]\)"):
        load_sources(f"torchvision:resnet18@{zoo['root'] / 'tv.safetensors'}",
                     class_names=["a", "b"])


def test_missing_and_pickled_weights(zoo: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file .*nope.safetensors.* not found"):
        load_sources(f"timm:resnet18@{tmp_path / 'nope.safetensors'}", class_names=NAMES)
    pt = tmp_path / "r18.pt"
    torch.save(zoo["timm"].state_dict(), pt)
    with pytest.raises(ValueError, match="not a .safetensors file; concilium never unpickles"):
        load_sources(f"timm:resnet18@{pt}", class_names=NAMES)
    hf = tmp_path / "vit-bin"
    zoo["vit"].config.save_pretrained(hf)
    torch.save(zoo["vit"].state_dict(), hf / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled checkpoint \\(pytorch_model.bin\\).*"
                                         "safe_serialization=True"):
        load_sources(f"hf:{hf}", class_names=NAMES)
    empty = tmp_path / "vit-none"
    zoo["vit"].config.save_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_sources(f"hf:{empty}", class_names=NAMES)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sources(f"hf:{tmp_path}", class_names=NAMES)


def test_configs_that_are_not_image_classifiers(tmp_path: Path) -> None:
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="describes a 'bert' model.*not an image classifier"):
        load_sources(f"hf:{tmp_path / 'bert'}", class_names=NAMES)
    ViTModel(tiny_vit_config()).save_pretrained(tmp_path / "headless")
    with pytest.raises(ValueError, match="ViTModel, which has no classification head"):
        load_sources(f"hf:{tmp_path / 'headless'}", class_names=NAMES)


def test_library_errors(zoo: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timm has no model 'resnet5O'.*close: .*resnet50"):
        load_sources(f"timm:resnet5O@{zoo['root'] / 'timm.safetensors'}", class_names=NAMES)
    with pytest.raises(ValueError, match="torchvision has no model"):
        load_sources(f"torchvision:resnet1000@{zoo['root'] / 'tv.safetensors'}",
                     class_names=NAMES)
    headless = tmp_path / "headless.safetensors"
    save_file({k: v for k, v in zoo["tv"].state_dict().items() if not k.startswith("fc.")},
              str(headless))
    with pytest.raises(ValueError, match="no classifier fc.weight"):
        load_sources(f"torchvision:resnet18@{headless}", class_names=NAMES)
    with pytest.raises(ValueError, match="do not fit"):  # a resnet34 file for a resnet18
        load_sources(f"timm:resnet34@{zoo['root'] / 'timm.safetensors'}", class_names=NAMES)


def test_placeholder_labels_are_no_names() -> None:
    assert class_names_of({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is None
    assert class_names_of({"id2label": {"1": "dog", "0": "cat"}}) == ["cat", "dog"]


def test_python_factory_and_as_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usernets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build():
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(4, 3))
            net.class_names = ["b", "a", "c"]
            return net
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usernets", raising=False)
    torch.manual_seed(1)
    net = __import__("usernets").build()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    (model, card), = load_sources(f"python:usernets:build@{tmp_path / 'w.safetensors'}",
                                  class_names=NAMES)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model(x), net(x)[:, [1, 0, 2]])
    assert card.gradcam_layer == "net.0" and card.arch == "python:Sequential"
    wrapped, card2 = as_member(net, class_names=NAMES, model_class_names=["b", "a", "c"],
                               gradcam_layer="0", member="m4")
    torch.testing.assert_close(wrapped(x), net(x)[:, [1, 0, 2]])
    assert card2.member_id == "m4" and wrapped.gradcam_module() is net[0]


def test_several_sources_number_their_members(zoo: dict, tiny_members: Path) -> None:
    root = zoo["root"]
    members = load_sources([str(tiny_members), f"hf:{root / 'vit'}"], class_names=NAMES)
    assert [c.member_id for _, c in members] == ["m0", "m1", "m2"]
    assert [c.member_id for _, c in load_sources(str(tiny_members))] == ["m0", "m1"]
    with pytest.raises(ValueError, match="given more than once"):
        load_sources([f"hf:{root / 'vit'}", f"hf:{root / 'vit'}"])


@pytest.fixture(scope="module")
def tiny_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two saved small-cnn members of the classes a, b, c."""
    from concilium.models import MemberCard, create_model, save_member

    root = tmp_path_factory.mktemp("members")
    for i in range(2):
        model = create_model("small-cnn", num_classes=3)
        card = MemberCard(member_id=f"m{i}", arch="small-cnn", num_classes=3, class_names=NAMES,
                          image_size=(32, 32), seed=i, diversity="seed", epochs=0,
                          gradcam_layer=model.gradcam_layer, data_fingerprint="x")
        save_member(model, card, root / f"m{i}")
    return root


@CUDA
def test_sources_load_on_cuda(zoo: dict) -> None:
    (model, _), = load_sources(f"hf:{zoo['root'] / 'vit'}", class_names=NAMES, device="cuda")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x.cuda()).cpu(), model.cpu()(x), rtol=1e-3, atol=1e-4)


def test_hf_preprocessing_follows_the_processor_config(tmp_path: Path) -> None:
    from concilium.models.hub import preprocessing_of

    config = {"image_size": 384}
    none = preprocessing_of(tmp_path, config)  # no preprocessor_config.json
    assert (none.input_size, none.mean) == ((384, 384), None)
    assert "no normalisation" in none.describe()
    cases = [
        ({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
          "do_center_crop": True, "image_mean": [0.1] * 3, "image_std": [0.2] * 3}, (224, 224)),
        ({"size": {"shortest_edge": 256}, "do_center_crop": False, "image_mean": [0.1] * 3,
          "image_std": [0.2] * 3}, (256, 256)),
        ({"size": {"height": 160, "width": 192}, "do_normalize": False,
          "image_mean": [0.1] * 3, "image_std": [0.2] * 3}, (160, 192)),
    ]
    for proc, size in cases:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
        pre = preprocessing_of(tmp_path, config)
        assert pre.input_size == size
        assert pre.mean == (None if proc.get("do_normalize") is False else (0.1,) * 3)


def test_library_preprocessing_is_the_packages_own() -> None:
    from concilium.models.libraries import timm_preprocessing, torchvision_preprocessing

    tv = torchvision_preprocessing(torchvision, "resnet50")
    assert tv.input_size == (224, 224) and tv.mean == pytest.approx((0.485, 0.456, 0.406))
    vit = torchvision_preprocessing(torchvision, "vit_b_16")
    assert vit.input_size == (224, 224)
    cfg = timm.models.get_pretrained_cfg("vit_base_patch16_224").to_dict()
    tm = timm_preprocessing(cfg)
    assert tm.input_size == (224, 224) and tm.mean == pytest.approx(tuple(cfg["mean"]))
