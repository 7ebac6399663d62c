"""Ensemble sources through the store (round trip), the CLI, and the audits on a tiny run."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from concilium.cli.main import app
from concilium.ensemble import LogitEnsemble
from concilium.ensemble.averaging import ens_avg
from concilium.explain import explain
from concilium.jobs.ensemble import ENSEMBLERS, CnnOptions, EnsAvgOptions, run_ensemble
from concilium.store import ExplanationStore, Run, read_maps

TINY_CNN = {"base_channels": 4, "depth": 1, "epochs": 3, "patience": 3, "batch_size": 8}


def test_ens_avg_round_trip_through_the_store(tiny_run):
    result = run_ensemble(tiny_run, "ens-avg", EnsAvgOptions(normalisation="l2"))
    assert {(e.source, e.method) for e in result.entries} == {("ens-avg", "saliency"),
                                                              ("ens-avg", "gradcam")}
    store = ExplanationStore(tiny_run, mode="r")
    members = torch.stack([store.get(m, "saliency").read() for m in ("m0", "m1")])
    stored = store.get("ens-avg", "saliency")
    torch.testing.assert_close(stored.read(), ens_avg(members, normalisation="l2"))
    assert stored.sample_ids == store.get("m0", "saliency").sample_ids
    assert stored.params["inputs"] == {m: store.get(m, "saliency").params_hash for m in ("m0", "m1")}
    # same settings again: the same entry, nothing duplicated
    again = run_ensemble(tiny_run, "ens-avg", {"normalisation": "l2"})
    assert again.entries[0].params_hash == result.entries[0].params_hash
    assert len(ExplanationStore(tiny_run).entries().query("source == 'ens-avg'")) == 2


def test_method_ensembles_write_combined_sources(tiny_run):
    run_ensemble(tiny_run, "aggregate", {"reducer": "max"})
    run_ensemble(tiny_run, "krr", {"folds": 2, "pixels_per_image": 8})
    (tiny_run / "results").mkdir(exist_ok=True)
    data = Run.open(tiny_run).data
    val = [i for i, s in zip(data.ids, data.splits, strict=True) if s == "val"][0]
    test = [i for i, s in zip(data.ids, data.splits, strict=True) if s == "test"][0]
    # review D17: the weights come from the held-out val rows; the test rows (where the
    # ensemble is scored) rank the methods the other way and must not count
    pd.DataFrame({"sample": [val, val, test, test], "label": 0, "source": "m0",
                  "method": ["saliency", "gradcam"] * 2, "metric": "relevance_mass",
                  "value": [0.2, 0.6, 0.9, 0.0], "params_hash": "x"}
                 ).to_parquet(tiny_run / "results" / "metrics.parquet")
    w = run_ensemble(tiny_run, "weighted")
    assert w.tables["weights"].set_index("method").weight.to_dict() == {"gradcam": 1.0,
                                                                         "saliency": 0.0}
    assert w.entries[0].params["weight_split"] == "val"
    with pytest.raises(ValueError, match="'train' rows"):
        run_ensemble(tiny_run, "weighted", {"weight_split": "train", "source": "w2"})
    store = ExplanationStore(tiny_run, mode="r")
    for source in ("aggregate", "krr", "weighted"):
        maps = store.get(source, "gradcam+saliency").read()
        assert maps.shape == (32, 32, 32) and torch.isfinite(maps).all()


def test_cnn_kind_trains_saves_and_reapplies(tiny_run):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    store = ExplanationStore(tiny_run, mode="r")
    probs = store.get("cnn", "gradcam+saliency").read()
    logits = store.get("cnn:logit", "gradcam+saliency").read()
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert (tiny_run / "results" / "cnn_history.parquet").is_file()
    saved = tiny_run / "ensemblers" / "cnn"
    again = run_ensemble(tiny_run, "cnn", {"ensembler": str(saved), "source": "cnn:again"})
    torch.testing.assert_close(again.entries[0].read(), probs)
    with pytest.raises(ValueError, match="trained on methods"):
        run_ensemble(tiny_run, "cnn", {"ensembler": str(saved), "methods": ["saliency"],
                                         "source": "cnn:k1"})


def test_consensus_kind_tables(tiny_run):
    result = run_ensemble(tiny_run, "consensus", {"correct_only": False,
                                                  "similarity": "spearman"})
    table = result.tables["consensus"]
    assert set(table.columns) >= {"member", "method", "consensus_score", "accuracy",
                                  "localisation", "similarity"}
    assert len(table) == 4 and (table.similarity == "spearman").all()
    assert (tiny_run / "results" / "consensus_correlations.parquet").is_file()


def test_ens_logit_kind_explains_the_averaged_logit_model(tiny_run):
    result = run_ensemble(tiny_run, "ens-logit", {"methods": ["saliency"]})
    run = Run.open(tiny_run, load_models=True)
    entry = result.entries[0]
    assert entry.source == "ens-logit" and entry.params["members"] == ["m0", "m1"]
    # the stored maps are the saliency of the model whose logits average the members' logits,
    # with the members' stored saliency parameters (an independent call of the library)
    member = run.store.get("m0", "saliency")
    p = member.params
    x, labels = run.data.images[:4], run.data.labels[:4]
    expected = explain(LogitEnsemble([run.models["m0"], run.models["m1"]]).eval(), x, labels,
                       method="saliency", reduction=p["reduction"], baseline=p["baseline"],
                       **p["method_params"])
    torch.testing.assert_close(entry.read([0, 1, 2, 3]), expected, atol=1e-5, rtol=1e-4)
    # and it is not the mean of the members' maps, nor one member's map
    assert not torch.allclose(entry.read([0, 1, 2, 3]), member.read([0, 1, 2, 3]), atol=1e-4)


def test_members_with_different_image_sets_are_refused(tiny_run):
    store = ExplanationStore(tiny_run)
    other = store.entry("m9", "saliency", {"x": 1}, [f"other{i}" for i in range(32)], shape=(32, 32))
    other.write(0, torch.zeros(32, 32, 32))
    ctx = Run.open(tiny_run)
    with pytest.raises(ValueError, match="different image sets"):
        read_maps(store, "m9", "saliency", ctx.data.ids)
    with pytest.raises(ValueError, match="not in this run"):
        run_ensemble(tiny_run, "ens-avg", {"members": ["m0", "m9"]})
    with pytest.raises(ValueError, match="valid names"):
        run_ensemble(tiny_run, "median-vote")
    assert "cnn" in ENSEMBLERS


def test_cli_ensemble_and_audit(tiny_run):
    runner = CliRunner()
    out = runner.invoke(app, ["ensemble", str(tiny_run), "--kind", "cnn", "--epochs", "2"])
    assert out.exit_code == 0, out.output
    assert "cnn/gradcam+saliency" in out.output
    (tiny_run / "results").mkdir(exist_ok=True)
    pd.DataFrame({"sample": 0, "label": [0, 1, 0], "source": ["m0", "m1", "ens-avg"],
                  "method": "saliency", "metric": "mask_correlation", "value": [0.1, 0.3, 0.4],
                  "params_hash": "x"}).to_parquet(tiny_run / "results" / "metrics.parquet")
    out = runner.invoke(app, ["audit", str(tiny_run), "--bias-sources", "m0,cnn"])
    assert out.exit_code == 0, out.output
    per_class = pd.read_parquet(tiny_run / "results" / "per_class.parquet")
    assert set(per_class.columns) >= {"class", "dice", "iou", "flagged"}
    bias = pd.read_parquet(tiny_run / "results" / "bias.parquet")
    # the watermark is drawn on class 1 only
    assert set(bias.label) == {1} and set(bias.source) == {"m0", "cnn"}
    paper = pd.read_parquet(tiny_run / "results" / "paper_table.parquet").iloc[0]
    assert paper.exp_avg == pytest.approx(0.2) and paper.ens_avg == pytest.approx(0.4)
    out = runner.invoke(app, ["ensemble", str(tiny_run), "--kind", "nope"])
    assert out.exit_code != 0


def test_cnn_kind_needs_train_and_val_rows(tiny_run):
    ctx = Run.open(tiny_run)
    ctx.data.splits = ["test"] * len(ctx.data)
    with pytest.raises(ValueError, match="--split all"):
        ENSEMBLERS.get("cnn").run(ctx, CnnOptions(**TINY_CNN))
