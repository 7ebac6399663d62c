"""`concilium explain` end to end on a tiny folder dataset and two tiny saved members, plus the
orchestrator's resume and validation before compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from concilium.data.dataset import ImageDataset
from concilium.data.folder import write_folder
from concilium.jobs.explain import explain_to_store
from concilium.models.members import load_members
from concilium.store import (
    ExplanationStore,
    Run,
    RunInfo,
    select_split,
)
from tiny_members import chunk_files, save_small_cnn_members

N, HW = 8, 16
METHODS = "saliency,gradient_shap"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explain")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, HW, HW, generator=g)
    data = ImageDataset(
        images=(images * 255).round() / 255,  # exactly representable in 8-bit PNG
        labels=torch.arange(N) % 2,
        masks=torch.rand(N, HW, HW, generator=g) > 0.5,
        ids=[f"s{i}" for i in range(N)],
        splits=["train", "train"] + ["test"] * (N - 2),
        class_names=["a", "b"],
    )
    write_folder(data, root / "data")
    save_small_cnn_members(data, root / "models")
    return root / "data", root / "models"


def invoke(args: list[str]):
    """Run the command; a fixed --batch-size skips the (seconds-long) timing probe."""
    from typer.testing import CliRunner

    from concilium.cli.main import app

    return CliRunner().invoke(app, ["explain", *map(str, args), "--batch-size", "8"])


def test_cli_end_to_end_then_rerun_reuses(setup, tmp_path):
    data, models = setup
    run = tmp_path / "run"
    args = [data, "--models", models, "--out", run, "--methods", METHODS, "--limit", "5",
            "--chunk-size", "2", "--seed", "3"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    table = ExplanationStore(run).entries()
    assert sorted(zip(table.source, table.method, strict=True)) == [
        ("m0", "gradient_shap"), ("m0", "saliency"), ("m1", "gradient_shap"), ("m1", "saliency")]
    assert table.complete.all() and (table.n == 5).all()
    info = RunInfo.load(run)
    assert info.sample_ids == ["s2", "s3", "s4", "s5", "s6"] and info.member_ids == ["m0", "m1"]
    opened = Run.open(run, load_models=True)
    assert opened.data.ids == info.sample_ids and list(opened.models) == ["m0", "m1"]
    entry = ExplanationStore(run).get("m1", "saliency")
    assert entry.meta["batch_size"] == 8 and entry.meta["model_card"]["member_id"] == "m1"
    assert entry.params["method_params"] == {"abs": True} and entry.params["seed"] == 3
    maps = entry.read()
    assert maps.shape == (5, HW, HW) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("c/*") if p.is_file()}
    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert "0 computed, 0 resumed, 4 reused" in again.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("c/*") if p.is_file()} == before


def test_interrupted_run_resumes_to_identical_arrays(setup, tmp_path, monkeypatch):
    """Killed between two writes of one chunk (saliency written, input x gradient not), then
    resumed: byte-identical to an uninterrupted run, shared pass and stochastic method included."""
    from concilium.data.folder import load_folder
    from concilium.store.entry import Entry

    data_dir, models = setup
    data = select_split(load_folder(data_dir), "test", None)
    members = load_members(models)
    kwargs = {"seed": 5, "chunk_size": 2, "batch_size": 8, "meta": {"dataset_fingerprint": "x"}}
    methods = ["saliency", "input_x_gradient", "gradient_shap"]
    explain_to_store(ExplanationStore(tmp_path / "clean"), data, members, methods, **kwargs)

    real_write = Entry.write
    writes = []

    def dying_write(self, start, maps):
        if len(writes) == 4:  # chunk 0: 3 writes; chunk 1: saliency, then the kill
            raise KeyboardInterrupt
        writes.append((self.method, start))
        real_write(self, start, maps)

    monkeypatch.setattr(Entry, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        explain_to_store(ExplanationStore(tmp_path / "killed"), data, members, methods, **kwargs)
    monkeypatch.setattr(Entry, "write", real_write)
    assert writes[-1] == ("saliency", 2)
    reports = explain_to_store(ExplanationStore(tmp_path / "killed"), data, members, methods,
                               **kwargs)
    status = {(r.source, r.method): (r.status, r.chunks_computed) for r in reports}
    assert status[("m0", "saliency")] == ("resumed", 1)
    assert status[("m0", "input_x_gradient")] == ("resumed", 2)
    assert status[("m1", "gradient_shap")] == ("computed", 3)
    assert chunk_files(tmp_path / "clean") == chunk_files(tmp_path / "killed")


def test_an_error_while_computing_keeps_every_finished_chunk(setup, tmp_path):
    from concilium.data.folder import load_folder

    data = select_split(load_folder(setup[0]), "test", None)
    members = load_members(setup[1])
    events = []

    def stop_after_two(event):
        events.append(event)
        if len(events) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two chunks of m0

    with pytest.raises(KeyboardInterrupt):
        explain_to_store(ExplanationStore(tmp_path), data, members, ["saliency", "gradient_shap"],
                         chunk_size=2, batch_size=8, on_chunk=stop_after_two)
    table = ExplanationStore(tmp_path).entries().set_index(["source", "method"])
    assert table.loc[("m0", "saliency"), "chunks_done"] == 2
    assert table.loc[("m0", "gradient_shap"), "chunks_done"] == 2
    assert table.loc[("m1", "saliency"), "chunks_done"] == 0


def test_probed_batch_size_is_recorded_and_kept_on_resume(setup, tmp_path, monkeypatch):
    """Without --batch-size the probe runs once per run and architecture and its choice is
    kept in the store and in each entry; a resumed run uses it even when the probe (timing-based)
    would now choose otherwise."""
    import concilium.jobs.explain_plan
    from concilium.data.folder import load_folder
    from concilium.explain.batching import Plan as BatchPlan
    from concilium.jobs.explain_plan import plan_members

    data = select_split(load_folder(setup[0]), "test", None)
    members = load_members(setup[1])
    chosen = {"rows": 4}
    probes = []

    def fake_probe(model, images, **kwargs):
        probes.append(images.shape)
        return BatchPlan(chosen["rows"], chosen["rows"], 1, 10_000)

    monkeypatch.setattr(concilium.jobs.explain_plan, "probe", fake_probe)
    store = ExplanationStore(tmp_path)
    args = {"method_options": {}, "target": "label", "reduction": "sum", "baseline": "zero",
            "seed": 0, "dtype": "float32", "chunk_size": 2, "device": torch.device("cpu"),
            "meta": {}}
    first = plan_members(store, data, members[:1], ["saliency"], batch_size=None, **args)
    assert first[0].batch_sizes == {"saliency": 4} and len(probes) == 1
    assert first[0].entries["saliency"].meta["batch_size"] == 4
    chosen["rows"] = 32  # a new process would probe differently: the run keeps its choice
    again = plan_members(ExplanationStore(tmp_path), data, members, ["saliency", "gradcam"],
                         batch_size=None, **args)
    assert [p.batch_sizes for p in again] == [{"saliency": 4, "gradcam": 4}] * 2
    assert len(probes) == 1  # same architecture: no second probe, for m1 either
    other = ExplanationStore(tmp_path / "other")
    assert plan_members(other, data, members[:1], ["saliency"], batch_size=None,
                        **args)[0].batch_sizes == {"saliency": 32}
    forced = plan_members(store, data, members, ["saliency"], batch_size=6, **args)
    assert forced[0].batch_sizes == {"saliency": 6}


def test_changed_param_makes_new_entries(setup, tmp_path):
    data, models = setup
    base = [data, "--models", models, "--out", tmp_path, "--methods", "gradient_shap",
            "--limit", "2"]
    assert invoke(base).exit_code == 0
    assert invoke([*base, "--param", "gradient_shap.n_samples=3"]).exit_code == 0
    table = ExplanationStore(tmp_path).entries()
    assert len(table) == 4 and table.params.str.contains('"n_samples":3').sum() == 2
    with pytest.raises(ValueError, match="2 entries match m0/gradient_shap"):
        ExplanationStore(tmp_path).get("m0", "gradient_shap")


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        (["--methods", "saliency,nope"], ValueError, "unknown explanation method 'nope'"),
        (["--target", "7"], ValueError, "out of range"),
        (["--target", "attr:beak"], ValueError, "attribute head"),
        (["--split", "val"], ValueError, "split 'val' is empty"),
        (["--split", "dev"], ValueError, "--split"),
        (["--param", "saliency.nope=1"], ValueError, "nope"),
        (["--param", "gradcam.layer=x"], ValueError, "not in --methods"),
        (["--param", "saliency"], ValueError, "method.key=value"),
        (["--reduction", "mean"], ValueError, "--reduction"),
        (["--baseline", "fog"], ValueError, "unknown baseline"),
        (["--limit", "0"], ValueError, "--limit"),
        (["--device", "tpu"], ValueError, "--device"),
    ],
)
def test_bad_inputs_fail_before_any_compute(setup, tmp_path, extra, error, match):
    from concilium.cli.explain import run_explain

    data, models = setup
    options = {"methods": "saliency", "split": "test", "target": "label", "reduction": "sum",
               "baseline": "zero", "limit": None, "device": "cpu", "param": []}
    key = None
    for item in extra:
        if item.startswith("--"):
            key = item[2:]
        elif key == "param":
            options["param"] = [item]
        elif key == "limit":
            options["limit"] = int(item)
        else:
            options[key] = item
    with pytest.raises(error, match=match):
        run_explain(data, models=models, out=tmp_path / "run", quiet=True, batch_size=8,
                    **options)
    assert not (tmp_path / "run" / "explanations.zarr").exists()


def test_missing_folders(setup, tmp_path):
    from concilium.cli.explain import run_explain

    data, models = setup
    with pytest.raises(FileNotFoundError, match="models folder"):
        run_explain(data, models=tmp_path / "none", out=tmp_path / "run", quiet=True)
    with pytest.raises(FileNotFoundError, match="data folder"):
        run_explain(tmp_path / "none", models=models, out=tmp_path / "run", quiet=True)


def test_other_settings_into_same_run_refused(setup, tmp_path):
    data, models = setup
    assert invoke([data, "--models", models, "--out", tmp_path, "--methods", "saliency",
                   "--limit", "2"]).exit_code == 0
    result = invoke([data, "--models", models, "--out", tmp_path, "--methods", "saliency",
                     "--limit", "3"])
    assert result.exit_code != 0
    assert "use a new --out" in str(result.exception)


def test_opening_a_run_refuses_changed_data_or_weights(setup, tmp_path):
    data, models = setup
    assert invoke([data, "--models", models, "--out", tmp_path, "--methods", "saliency",
                   "--limit", "2"]).exit_code == 0
    info = RunInfo.load(tmp_path)
    info.model_copy(update={"member_fingerprints": {"m0": "0" * 16}}).save(tmp_path)
    with pytest.raises(ValueError, match="member m0 .* other weights"):
        Run.open(tmp_path, load_models=True)
    assert Run.open(tmp_path).data.ids == ["s2", "s3"]
    info.model_copy(update={"dataset_fingerprint": "0" * 16}).save(tmp_path)
    with pytest.raises(ValueError, match="dataset of .* changed"):
        Run.open(tmp_path)


def test_library_entry_point_validates_before_creating_entries(setup, tmp_path):
    from concilium.data.folder import load_folder

    data = select_split(load_folder(setup[0]), "test", None)
    members = load_members(setup[1])
    store = ExplanationStore(tmp_path)
    bad = [
        ({"reduction": "mean"}, "reduction must be one of"),
        ({"target": "9"}, "out of range"),
        ({"method_options": {"gradcam": {}}}, "not being run"),
        ({"baseline": "fog"}, "unknown baseline"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            explain_to_store(store, data, members, ["saliency"], batch_size=8, **kwargs)
    with pytest.raises(ValueError, match="unique"):
        explain_to_store(store, data, [members[0], members[0]], ["saliency"], batch_size=8)
    assert store.entries().empty
