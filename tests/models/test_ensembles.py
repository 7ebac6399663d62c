"""Ensemble training: determinism, every diversity, multitask, resume, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors.torch import load_file

from concilium.data.dataset import ImageDataset
from concilium.models import (
    DIVERSITIES,
    AttributeView,
    create_model,
    load_member,
    load_members,
    read_card,
    train_ensemble,
)
from concilium.models import ensembles as ensembles_module
from concilium.models import fit as fit_module
from concilium.models.members import Diversity

QUICK = dict(epochs=1, batch_size=16, progress=False)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


# every diversity ---------------------------------------------------------------------------

NEEDS = {"arch": {"archs": ["small-cnn", "vgg11-small"]}}
"""Arguments a diversity cannot do without; any other diversity is trained with the defaults."""


def test_the_diversity_type_names_every_registered_diversity() -> None:
    # the Literal types the card field and train_ensemble(diversity=...), which config files are
    # checked against; the registry is what train_ensemble runs
    assert sorted(get_args(Diversity)) == DIVERSITIES.names()


@pytest.mark.parametrize("diversity", DIVERSITIES.names())
def test_every_diversity_trains_distinct_members_deterministically(
    diversity: str, tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    kwargs = dict(members=2, diversity=diversity, seed=2, **NEEDS.get(diversity, {}), **QUICK)
    cards = train_ensemble(tiny_dataset, out=tmp_path / "a", **kwargs)
    again = train_ensemble(tiny_dataset, out=tmp_path / "b", **kwargs)
    assert [c.member_id for c in cards] == ["m0", "m1"]
    assert [c.seed for c in cards] == [3, 4]
    assert all(c.diversity == diversity and c.val_accuracy is not None for c in cards)
    strip = {"train_seconds"}
    assert [c.model_dump(exclude=strip) for c in cards] == [
        c.model_dump(exclude=strip) for c in again
    ]
    for m in ("m0", "m1"):  # the same seed gives the same weights, bit for bit
        a, b = _weights(tmp_path / "a" / m), _weights(tmp_path / "b" / m)
        assert a.keys() == b.keys() and _same(a, b)
    x = tiny_dataset.images[:8]
    with torch.no_grad():
        logits = [model(x) for model, _ in load_members(tmp_path / "a")]
    assert all(torch.isfinite(z).all() for z in logits)
    assert not torch.allclose(logits[0], logits[1])  # the two members really differ


def test_weight_decay_is_a_parameter_of_the_ensemble(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    for name, decay in (("default", None), ("explicit", 5e-4), ("strong", 0.5)):
        extra = {} if decay is None else {"weight_decay": decay}
        train_ensemble(tiny_dataset, out=tmp_path / name, members=1, diversity="seed", **extra,
                       **QUICK)
    default, explicit, strong = (_weights(tmp_path / n / "m0") for n in ("default", "explicit",
                                                                        "strong"))
    assert _same(default, explicit)  # the default is 5e-4, as before it was a parameter
    assert not _same(default, strong, "head.")


# determinism and diversity -----------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_ensemble(
            tiny_dataset, out=tmp_path / name, members=1, diversity="seed", seed=seed, **QUICK
        )
    a, b, c = (_weights(tmp_path / n / "m0") for n in "abc")
    assert _same(a, b)
    assert not _same(a, c, "backbone.features.conv1")


def test_head_diversity_shares_the_backbone_heads_differ(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    cards = train_ensemble(
        tiny_dataset,
        out=tmp_path,
        members=2,
        diversity="head",
        finetune="head",
        finetune_epochs=1,
        seed=5,
        **QUICK,
    )
    backbone = _weights(tmp_path / "backbone")
    m0, m1 = _weights(tmp_path / "m0"), _weights(tmp_path / "m1")
    # head-only fine-tuning: the members' backbones (batch-norm statistics included) are the
    # shared backbone, bit for bit; their heads were drawn from different seeds
    assert _same(m0, backbone, "backbone.") and _same(m1, backbone, "backbone.")
    assert not torch.equal(m0["head.weight"], m1["head.weight"])
    assert not torch.equal(m0["head.weight"], backbone["head.weight"])
    assert [c.seed for c in cards] == [6, 7]
    assert read_card(tmp_path / "backbone").member_id == "backbone"
    assert all(c.backbone_epochs == 1 and c.finetune == "head" for c in cards)
    assert [c.member_id for _, c in load_members(tmp_path)] == ["m0", "m1"]


def test_head_diversity_full_finetune_starts_from_the_backbone(
    tiny_dataset: ImageDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[dict[str, torch.Tensor]] = []
    real_fit = fit_module._fit

    def recording_fit(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(fit_module, "_fit", recording_fit)
    train_ensemble(tiny_dataset, out=tmp_path, members=2, diversity="head", seed=0, **QUICK)
    backbone = _weights(tmp_path / "backbone")
    assert len(starts) == 3  # the backbone, then two members
    for start in starts[1:]:
        assert _same(start, backbone, "backbone.")  # same backbone init ...
    assert not torch.equal(starts[1]["head.weight"], starts[2]["head.weight"])  # ... new heads
    assert not _same(_weights(tmp_path / "m0"), backbone, "backbone.")  # all weights tuned


def test_bootstrap_members_differ_and_are_reproducible(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    train_ensemble(tiny_dataset, out=tmp_path / "a", members=2, diversity="bootstrap", **QUICK)
    train_ensemble(tiny_dataset, out=tmp_path / "b", members=1, diversity="bootstrap", **QUICK)
    a0, a1, b0 = (_weights(tmp_path / p) for p in ("a/m0", "a/m1", "b/m0"))
    assert _same(a0, b0)
    assert not _same(a0, a1, "backbone.")


def test_arch_diversity_cycles_through_the_committee(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    cards = train_ensemble(
        tiny_dataset,
        out=tmp_path,
        members=3,
        diversity="arch",
        archs=["small-cnn", "vgg11-small"],
        **QUICK,
    )
    assert [c.arch for c in cards] == ["small-cnn", "vgg11-small", "small-cnn"]
    models = load_members(tmp_path)
    assert [c.gradcam_layer for _, c in models] == [m.gradcam_layer for m, _ in models]
    assert all(c.val_accuracy is not None and 0 <= c.val_accuracy <= 1 for c in cards)


def test_multitask_members_have_a_trained_attribute_head(
    tiny_dataset: ImageDataset, tmp_path: Path
) -> None:
    cards = train_ensemble(
        tiny_dataset, out=tmp_path, members=1, diversity="seed", attributes=True, **QUICK
    )
    card = cards[0]
    assert card.num_attributes == len(tiny_dataset.attribute_names) > 0
    assert card.attribute_names == tiny_dataset.attribute_names
    assert card.val_attribute_accuracy is not None and 0 <= card.val_attribute_accuracy <= 1
    model, _ = load_member(tmp_path / "m0")
    x = tiny_dataset.images[:2]
    assert AttributeView(model)(x).shape == (2, card.num_attributes)
    # the attribute head moved away from its initialisation: the BCE term reached it
    with torch.random.fork_rng():
        torch.manual_seed(1)
        init = create_model("small-cnn", num_classes=3, num_attributes=card.num_attributes)
    assert not torch.equal(init.attribute_head.weight, model.attribute_head.weight)


# resume ------------------------------------------------------------------------------------


def _count_fits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_fit = fit_module._fit

    def counting_fit(model, *args, **kwargs):
        calls.append(kwargs["description"])
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(fit_module, "_fit", counting_fit)
    return calls


def test_resume_skips_finished_members(
    tiny_dataset: ImageDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_ensemble(tiny_dataset, out=tmp_path, members=3, diversity="seed", **QUICK)
    before = {m: (tmp_path / m / "model.safetensors").read_bytes() for m in ("m0", "m1")}
    # killed between the weights and the card of m2 (the card is written last)
    (tmp_path / "m2" / "card.json").unlink()
    (tmp_path / "m2" / ".model.safetensors.x.tmp").write_bytes(b"partial")
    calls = _count_fits(monkeypatch)
    cards = train_ensemble(tiny_dataset, out=tmp_path, members=3, diversity="seed", **QUICK)
    assert calls == ["m2 (small-cnn)"]
    assert [c.member_id for c in cards] == ["m0", "m1", "m2"]
    for m, data in before.items():
        assert (tmp_path / m / "model.safetensors").read_bytes() == data
    assert (tmp_path / "m2" / "card.json").is_file()


def test_killed_run_resumes_at_the_first_unfinished_member(
    tiny_dataset: ImageDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = ensembles_module.save_member

    def dying_save(model, card, directory):
        if card.member_id == "m1":
            raise KeyboardInterrupt  # the user pressed Ctrl-C while m1 was being saved
        return real_save(model, card, directory)

    monkeypatch.setattr(ensembles_module, "save_member", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(tiny_dataset, out=tmp_path, members=3, diversity="head", **QUICK)
    assert (tmp_path / "m0" / "card.json").is_file()
    assert not (tmp_path / "m1" / "card.json").exists()
    monkeypatch.setattr(ensembles_module, "save_member", real_save)
    calls = _count_fits(monkeypatch)
    cards = train_ensemble(tiny_dataset, out=tmp_path, members=3, diversity="head", **QUICK)
    assert calls == ["m1 fine-tune (small-cnn)", "m2 fine-tune (small-cnn)"]  # backbone reused
    assert [c.member_id for c in cards] == ["m0", "m1", "m2"]


def test_resume_with_other_settings_is_refused(tiny_dataset: ImageDataset, tmp_path: Path) -> None:
    train_ensemble(tiny_dataset, out=tmp_path, members=1, diversity="seed", **QUICK)
    with pytest.raises(ValueError, match="already holds a member with arch='small-cnn'"):
        train_ensemble(
            tiny_dataset, out=tmp_path, members=1, diversity="seed", arch="vgg11-small", **QUICK
        )
    with pytest.raises(ValueError, match="already holds a member with seed=1"):
        train_ensemble(tiny_dataset, out=tmp_path, members=1, diversity="seed", seed=9, **QUICK)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 2}, "backbone_epochs=1"),  # the same fine-tuning epochs: max(1, 2 // 5)
        ({"finetune": "head"}, "finetune='all'"),
    ],
)
def test_resuming_a_finished_head_ensemble_with_other_settings_is_refused(
    tiny_dataset: ImageDataset, tmp_path: Path, change: dict, match: str
) -> None:
    settings = dict(members=1, diversity="head", finetune_epochs=1, **QUICK)
    train_ensemble(tiny_dataset, out=tmp_path, **settings)
    with pytest.raises(ValueError, match=f"already holds a member with {match}"):
        train_ensemble(tiny_dataset, out=tmp_path, **{**settings, **change})


# bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"arch": "resnet19"},
            ValueError,
            r"unknown architecture 'resnet19'; valid names: .*small-cnn",
        ),
        ({"members": 0}, ValueError, "members must be >= 1"),
        ({"members": 2.5}, TypeError, "members must be an int"),
        ({"diversity": "arch"}, ValueError, "needs the architectures"),
        (
            {"diversity": "arch", "archs": ["small-cnn"], "arch": "small-cnn"},
            ValueError,
            "leave arch",
        ),
        (
            {"diversity": "seed", "archs": ["small-cnn"]},
            ValueError,
            "only used with diversity 'arch'",
        ),
        (
            {"diversity": "arch", "archs": ["small-cnn", "nope"]},
            ValueError,
            "unknown architecture 'nope'",
        ),
        ({"diversity": "dropout"}, ValueError, "diversity must be one of"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"lr": -1.0}, ValueError, "lr must be >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"finetune": "some"}, ValueError, "finetune must be"),
        ({"finetune_backbone_scale": -0.1}, ValueError, "finetune_backbone_scale must be >= 0"),
        ({"attribute_weight": float("nan")}, ValueError, "attribute_weight must be >= 0"),
        ({"device": "tpu"}, ValueError, "device must be 'cpu' or 'cuda'"),
    ],
)
def test_bad_arguments_raise_before_training(
    tiny_dataset: ImageDataset, tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        train_ensemble(tiny_dataset, out=tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_cuda_asked_without_cuda(tiny_dataset: ImageDataset, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("hardware: checks the error on a machine WITHOUT CUDA, and this one has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_ensemble(tiny_dataset, out=tmp_path, device="cuda", progress=False)


def test_attributes_without_dataset_attributes(tiny_dataset: ImageDataset, tmp_path: Path) -> None:
    bare = tiny_dataset.subset(list(range(len(tiny_dataset))))
    bare.attributes, bare.attribute_names = None, []
    with pytest.raises(ValueError, match="needs a dataset with attributes"):
        train_ensemble(bare, out=tmp_path, attributes=True, progress=False)


