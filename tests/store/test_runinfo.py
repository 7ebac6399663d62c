"""RUN/run.json: save/load, merging later calls, split selection, model fingerprints."""

from __future__ import annotations

import json

import pytest
import torch

from concilium._util import state_fingerprint as model_fingerprint
from concilium.data.dataset import ImageDataset
from concilium.data.specs import FolderDataset, SyntheticDataset
from concilium.data.synthetic import SynthConfig, generate
from concilium.store.manifest import RunInfo, select_split


def tiny_dataset(n: int = 6) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset(
        images=torch.rand(n, 3, 4, 4, generator=g),
        labels=torch.arange(n) % 2,
        masks=torch.zeros(n, 4, 4, dtype=torch.bool),
        ids=[f"x{i}" for i in range(n)],
        splits=["train", "test", "test", "val", "test", "train"][:n],
        class_names=["a", "b"],
    )


def info(**update) -> RunInfo:
    base = {
        "dataset": FolderDataset(path="/data"),
        "dataset_fingerprint": "f00",
        "split": "test",
        "sample_ids": ["x1", "x2"],
        "models_dir": "/models",
        "member_ids": ["m0"],
        "member_fingerprints": {"m0": "w0"},
        "methods": ["saliency"],
    }
    base.update(update)
    return RunInfo(**base)


def test_save_and_load_round_trip(tmp_path):
    saved = info(limit=2, target="contrast:1", seed=3)
    saved.save(tmp_path / "run")
    assert RunInfo.load(tmp_path / "run") == saved
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]  # no temp file left


def test_merge_adds_members_and_methods():
    merged = info().merged_with(
        info(member_ids=["m0", "m1"], member_fingerprints={"m0": "w0", "m1": "w1"},
             methods=["gradcam", "saliency"], device="cuda")
    )
    assert merged.member_ids == ["m0", "m1"]
    assert merged.methods == ["saliency", "gradcam"]
    assert merged.member_fingerprints == {"m0": "w0", "m1": "w1"} and merged.device == "cuda"


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"split": "val"}, "split"),
        ({"limit": 1}, "limit"),
        ({"dataset_fingerprint": "other"}, "dataset_fingerprint"),
        ({"target": "pred"}, "target"),
        ({"member_fingerprints": {"m0": "retrained"}}, "other weights"),
    ],
)
def test_merge_refuses_a_different_run(update, match):
    with pytest.raises(ValueError, match=match):
        info().merged_with(info(**update))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="concilium explain"):
        RunInfo.load(tmp_path)
    (tmp_path / "run.json").write_text('{"split": "test"}')
    with pytest.raises(ValueError, match="not a valid run record"):
        RunInfo.load(tmp_path)


def test_select_split_keeps_dataset_order_and_limit():
    data = tiny_dataset()
    assert select_split(data, "test", None).ids == ["x1", "x2", "x4"]
    assert select_split(data, "test", 2).ids == ["x1", "x2"]
    assert select_split(data, "all", 4).ids == ["x0", "x1", "x2", "x3"]
    with pytest.raises(ValueError, match=r"split 'val' is empty \(train: 1, val: 0, test: 1\)"):
        select_split(data.subset([0, 1]), "val", None)
    with pytest.raises(ValueError, match="unknown split"):
        select_split(data, "dev", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        select_split(data, "test", 0)


def test_model_fingerprint_sees_weights_only_by_value():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2))
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2))
    assert model_fingerprint(a) != model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b[0].bias[0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)


def test_synthetic_dataset_spec_rebuilds_the_same_data():
    config = SynthConfig(n=12, size=32, seed=4)
    spec = SyntheticDataset(config=config.model_dump(mode="json"))
    saved = RunInfo.model_validate_json(info(dataset=spec).model_dump_json())
    assert saved.dataset.load().fingerprint() == generate(config).fingerprint()
    with pytest.raises(ValueError, match="config"):
        SyntheticDataset()


def test_a_run_json_from_before_the_dataset_registry_loads(tmp_path):
    saved = json.loads(info().model_dump_json())
    saved["dataset"] = {"kind": "folder", "path": "/data", "size": None, "seed": 0, "config": None}
    (tmp_path / "run.json").write_text(json.dumps(saved))
    loaded = RunInfo.load(tmp_path)
    assert loaded.dataset == FolderDataset(path="/data")
    assert loaded == info(created=saved["created"])


def test_a_record_with_models_dir_reads_as_one_folder_source(tmp_path):
    old = info()  # written with the older key models_dir
    assert old.models == ["/models"] and old.models_dir == "/models"
    path = tmp_path / "run" / "run.json"
    old.save(tmp_path / "run")
    raw = json.loads(path.read_text())
    raw["models_dir"] = raw.pop("models")[0]  # a run.json from before member sources
    path.write_text(json.dumps(raw))
    assert RunInfo.load(tmp_path / "run") == old
    with pytest.raises(ValueError, match="other settings .*models"):
        old.merged_with(RunInfo(**{**old.model_dump(), "models": ["/models", "hf:/vit"]}))
