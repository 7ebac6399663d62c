"""Checkpoints and cards from a hostile or damaged source (issue 16): a safetensors file with a
huge or malformed header, wrong dtypes, shapes or offsets, non-finite weights; a member card with
wrong types or enormous fields. Each is refused with a ValueError naming the file; nothing is
unpickled, nothing hangs or exhausts memory."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from concilium.models.architectures import create_model
from concilium.models.members import MemberCard, load_member, read_card, save_member
from concilium.models.weights import load_state_dict_file, load_weights_into


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


@pytest.fixture
def member(tmp_path):
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=2)
    card = MemberCard(member_id="m0", arch="small-cnn", num_classes=2, class_names=["a", "b"],
                      image_size=(16, 16), seed=0, diversity="seed", epochs=0,
                      gradcam_layer=model.gradcam_layer, data_fingerprint="x")
    return save_member(model.eval(), card, tmp_path / "m0")


def _rewrite(member, edit) -> None:
    path = member / "model.safetensors"
    header, body = _split(path.read_bytes())
    path.write_bytes(edit(header, body))


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


HOSTILE = {
    "huge header length": lambda h, b: _join(h, b, length=2**63),
    "header longer than the file": lambda h, b: _join(h, b, length=10**9),
    "malformed header JSON": lambda h, b: _join(json.dumps(h).encode()[:-5] + b"}}{", b),
    "header not an object": lambda h, b: _join(b"[1, 2, 3]", b),
    "unknown dtype": lambda h, b: _join({**h, _first(h): {**h[_first(h)], "dtype": "XYZ"}}, b),
    "shape not matching the bytes": lambda h, b: _join(
        {**h, _first(h): {**h[_first(h)], "shape": [10**12]}}, b),
    "offsets out of range": lambda h, b: _join(
        {**h, _first(h): {**h[_first(h)], "data_offsets": [0, 10**12]}}, b),
    "reversed offsets": lambda h, b: _join(
        {**h, _first(h): {**h[_first(h)], "data_offsets": [8, 4]}}, b),
    "truncated body": lambda h, b: _join(h, b[: len(b) // 2]),
    "empty file": lambda h, b: b"",
    "garbage": lambda h, b: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_safetensors_headers_are_refused_naming_the_file(member, case):
    _rewrite(member, HOSTILE[case])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_member(member)


@pytest.mark.parametrize("dtype", ["I64", "BOOL", "U8"])
def test_integer_weights_for_float_parameters_are_refused(member, tmp_path, dtype):
    state = load_state_dict_file(member / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    torch_dtype = {"I64": torch.int64, "BOOL": torch.bool, "U8": torch.uint8}[dtype]
    state[name] = state[name].to(torch_dtype)
    save_file(state, str(member / "model.safetensors"))
    with pytest.raises(ValueError, match=f"{name}.*{str(torch_dtype).removeprefix('torch.')}"):
        load_member(member)


def test_float64_weights_are_read_into_the_float32_model(member):
    state = {k: v.double() if v.is_floating_point() else v
             for k, v in load_state_dict_file(member / "model.safetensors").items()}
    save_file(state, str(member / "model.safetensors"))
    model, _ = load_member(member)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(member, value):
    state = load_state_dict_file(member / "model.safetensors")
    name = next(k for k, v in state.items() if k.endswith("weight"))
    state[name][..., 0] = value
    save_file(state, str(member / "model.safetensors"))
    with pytest.raises(ValueError, match=f"{name}.*not finite"):
        load_member(member)


def test_load_weights_into_names_the_source(member):
    net = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="not finite"):
        load_weights_into(net, {"weight": torch.full((1, 2), float("nan")),
                                "bias": torch.zeros(1)}, source="somewhere")


# --- cards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_classes", "two"), ("num_classes", -3), ("class_names", "ab"), ("image_size", [16]),
     ("epochs", None), ("member_id", "<script>"), ("diversity", "heads"),
     ("in_channels", 10**30), ("arch", 3), ("unknown_field", 1)],
)
def test_cards_with_wrong_types_are_refused_naming_the_field(member, field, value):
    card = json.loads((member / "card.json").read_text())
    card[field] = value
    (member / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=f"(?s)card.json.*{field}"):
        read_card(member)


def test_an_enormous_card_is_refused_before_it_is_read(member):
    card = json.loads((member / "card.json").read_text())
    card["class_names"] = ["x" * 10**7, "y" * 10**7]
    (member / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="bytes, more than a member card may hold"):
        read_card(member)


@pytest.mark.parametrize("text", [b"", b"[" * 100_000, b"\xff\xfe{", b"null", b'{"a": 1e999}'])
def test_cards_that_are_not_json_objects_are_refused(member, text):
    (member / "card.json").write_bytes(text)
    with pytest.raises(ValueError, match="card.json is not a valid member card"):
        read_card(member)


def test_a_long_field_is_cut_in_the_message(member):
    card = json.loads((member / "card.json").read_text())
    card["num_classes"] = "9" * 100_000 + "x"
    (member / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError) as info:
        read_card(member)
    assert len(str(info.value)) < 5000


@pytest.mark.parametrize("layer", ["nope", "", "features.99", "<img src=x onerror=alert(1)>"])
def test_a_card_naming_no_gradcam_layer_is_refused_with_the_candidates(member, layer):
    """Found by benchmarks/soak_hostile.py (cases 68, 86): a KeyError traceback before."""
    card = json.loads((member / "card.json").read_text())
    card["gradcam_layer"] = layer
    (member / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="names no module of this model; its convolutional"):
        load_member(member)
