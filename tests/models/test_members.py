"""Member folders: safetensors + card round trip, numeric member order, valid ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from concilium.models import (
    MemberCard,
    create_model,
    load_member,
    load_members,
    read_card,
    save_member,
)


def _card(member_id: str = "m0", **overrides: object) -> MemberCard:
    fields = dict(
        member_id=member_id,
        arch="small-cnn",
        num_classes=3,
        class_names=["a", "b", "c"],
        num_attributes=2,
        attribute_names=["x", "y"],
        image_size=(32, 32),
        seed=7,
        diversity="seed",
        val_accuracy=0.75,
        epochs=2,
        gradcam_layer="backbone.features.conv4",
        data_fingerprint="abc123",
    )
    fields.update(overrides)
    return MemberCard(**fields)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=3, num_attributes=2).eval()


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = _model()
    # non-trivial batch-norm statistics, so that buffers are part of the round trip
    with torch.no_grad():
        model.train()
        model(torch.rand(8, 3, 32, 32) * 3)
        model.eval()
    save_member(model, _card(), tmp_path / "m0")
    loaded, card = load_member(tmp_path / "m0")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a, a_attr = model.forward_all(x)
        b, b_attr = loaded.forward_all(x)
    assert torch.equal(a, b) and torch.equal(a_attr, b_attr)
    assert not loaded.training
    assert card == _card()


def test_files_and_card_contents(tmp_path: Path) -> None:
    save_member(_model(), _card(), tmp_path / "m0")
    assert sorted(p.name for p in (tmp_path / "m0").iterdir()) == ["card.json", "model.safetensors"]
    data = json.loads((tmp_path / "m0" / "card.json").read_text())
    required = {
        "member_id",
        "arch",
        "num_classes",
        "class_names",
        "num_attributes",
        "attribute_names",
        "in_channels",
        "image_size",
        "seed",
        "diversity",
        "val_accuracy",
        "epochs",
        "gradcam_layer",
        "data_fingerprint",
        "concilium_version",
    }
    assert required <= set(data)
    assert data["class_names"] == ["a", "b", "c"] and data["seed"] == 7
    assert data["image_size"] == [32, 32] and data["diversity"] == "seed"


def test_card_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValueError):
        _card(colour="red")
    with pytest.raises(ValueError):
        _card(diversity="dropout")
    with pytest.raises(ValueError):
        _card(num_classes=0)


@pytest.mark.parametrize("good", ["m0", "m12", "backbone"])
def test_card_accepts_member_ids_and_the_backbone(good: str) -> None:
    assert _card(good).member_id == good


@pytest.mark.parametrize("bad", ["m", "m-1", "M0", "member0", "ens-avg", "m0 "])
def test_card_rejects_other_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="member_id must be m0, m1, ..."):
        _card(bad)


def test_load_members_sorts_numerically_and_skips_the_backbone(tmp_path: Path) -> None:
    model = _model()
    for i in (10, 2, 0, 1, 9):
        save_member(model, _card(f"m{i}", seed=i), tmp_path / f"m{i}")
    save_member(model, _card("backbone"), tmp_path / "backbone")
    (tmp_path / "m3").mkdir()  # a member folder without a card: unfinished, not listed
    (tmp_path / "notes.txt").write_text("x")
    members = load_members(tmp_path)
    assert [card.member_id for _, card in members] == ["m0", "m1", "m2", "m9", "m10"]


def test_load_members_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_members(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no member"):
        load_members(tmp_path)
    (tmp_path / "m0").mkdir()
    with pytest.raises(FileNotFoundError, match="card.json"):
        read_card(tmp_path / "m0")
    (tmp_path / "m0" / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid member card"):
        read_card(tmp_path / "m0")


def test_weights_that_do_not_fit_the_card_are_refused(tmp_path: Path) -> None:
    save_member(_model(), _card(num_classes=3), tmp_path / "m0")
    card_path = tmp_path / "m0" / "card.json"
    card_path.write_text(_card(num_classes=4, class_names=list("abcd")).model_dump_json())
    with pytest.raises(ValueError, match="shape mismatch.*head.weight"):
        load_member(tmp_path / "m0")


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    save_member(_model(), _card(), tmp_path / "m0")
    save_member(_model(1), _card(), tmp_path / "m0")  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "m0").iterdir()) == ["card.json", "model.safetensors"]
