"""Review D1-D3: where E* must exist for the train and val rows, ``crossfit = k`` makes it out of
fold: each fold's ensembler is fitted without the fold's rows and writes E* for exactly them."""

import json

import pytest
import torch

from concilium.ensemble.cnn import CNNEnsembler
from concilium.jobs.ensemble import CnnOptions, run_ensemble
from concilium.jobs.ensemble.cnn import FIT_FILE, crossfit_folds
from concilium.store import ExplanationStore, Run, read_maps

TINY_CNN = {"base_channels": 4, "depth": 1, "epochs": 2, "patience": 2, "batch_size": 8}


def _split_ids(run: Run) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i, s in zip(run.data.ids, run.data.splits, strict=True):
        out.setdefault(s, set()).add(i)
    return out


def test_crossfit_folds_are_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 9 + [1] * 6)
    rows = torch.arange(15)
    folds = crossfit_folds(labels, rows, 3, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(15))
    assert [int((labels[f] == 1).sum()) for f in folds] == [2, 2, 2]
    assert [int((labels[f] == 0).sum()) for f in folds] == [3, 3, 3]
    assert all(torch.equal(a, b) for a, b in zip(folds, crossfit_folds(labels, rows, 3, seed=0),
                                                 strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folds, crossfit_folds(labels, rows, 3, seed=1),
                                                     strict=True))


def test_each_fold_ensembler_is_fitted_without_its_rows_and_wrote_their_e_star(tiny_run):
    run_ensemble(tiny_run, "cnn", {**TINY_CNN, "crossfit": 2})
    run = Run.open(tiny_run)
    splits = _split_ids(run)
    store = ExplanationStore(tiny_run, mode="r")
    probs_entry = store.get("cnn", "gradcam+saliency")
    logit_entry = store.get("cnn:logit", "gradcam+saliency")
    params = probs_entry.params
    assert params["crossfit"] == 2 and params["fit_ids"] == []
    assert logit_entry.params["fit_ids"] == [] and logit_entry.params["folds"] == params["folds"]
    folds = params["folds"]
    assert len(folds) == 3  # two folds, then the full ensembler for the test rows
    assert set(folds[-1]["ids"]) == splits["test"] and folds[-1]["dir"] == "ensemblers/cnn"
    assert set(folds[0]["ids"]) | set(folds[1]["ids"]) == splits["train"] | splits["val"]
    assert not set(folds[0]["ids"]) & set(folds[1]["ids"])
    maps = {m: read_maps(run.store, "m0", m, run.data.ids)[0] for m in ("gradcam", "saliency")}
    stored_p, stored_l = probs_entry.read(), logit_entry.read()
    index = {s: i for i, s in enumerate(run.data.ids)}
    for fold in folds:
        fit = json.loads((tiny_run / fold["dir"] / FIT_FILE).read_text())
        fitted = set(fit["train_ids"]) | set(fit["val_ids"])
        assert not fitted & set(fold["ids"]), f"{fold['dir']} was fitted on rows it predicts"
        assert set(fit["train_ids"]) <= splits["train"] and set(fit["val_ids"]) <= splits["val"]
        rows = torch.tensor([index[s] for s in fold["ids"]])
        ens = CNNEnsembler.load(tiny_run / fold["dir"])
        logits, probs = ens.predict({m: x[rows] for m, x in maps.items()})
        torch.testing.assert_close(stored_l[rows], logits)
        torch.testing.assert_close(stored_p[rows], probs)
    history = (tiny_run / "results" / "cnn_crossfit_history.parquet")
    assert history.is_file() and (tiny_run / "results" / "cnn_history.parquet").is_file()


def test_without_crossfit_the_train_and_val_rows_are_recorded_in_sample(tiny_run):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    splits = _split_ids(Run.open(tiny_run))
    params = ExplanationStore(tiny_run, mode="r").get("cnn:logit", "gradcam+saliency").params
    assert params["crossfit"] == 0
    assert set(params["fit_ids"]) == splits["train"] | splits["val"]
    assert params["folds"] == [{"dir": "ensemblers/cnn", "ids": Run.open(tiny_run).data.ids}]
    # a saved ensembler applied again keeps its fit rows (from its fit.json)
    again = run_ensemble(tiny_run, "cnn", {"ensembler": str(tiny_run / "ensemblers" / "cnn"),
                                           "source": "cnn:again"})
    assert set(again.entries[0].params["fit_ids"]) == splits["train"] | splits["val"]


def test_crossfit_options_are_checked(tiny_run):
    with pytest.raises(ValueError, match="crossfit = 1"):
        CnnOptions(crossfit=1)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        CnnOptions(crossfit=-1)
    with pytest.raises(ValueError, match=r"crossfit = 25: fold \d+ holds 0 rows"):
        run_ensemble(tiny_run, "cnn", {**TINY_CNN, "crossfit": 25})  # 24 train+val rows
    assert not (tiny_run / "ensemblers").exists()  # checked before anything trains


@pytest.mark.parametrize("crossfit", [0, 2])
def test_per_class_audit_reads_every_row_only_when_e_star_is_cross_fitted(tiny_run, crossfit):
    """E* fitted on the train/val rows is audited on the test rows; cross-fitted E* is held out on
    every row, so its per-class audit reads them all (review D1: the rare class has too few test
    rows otherwise)."""
    from concilium.jobs.audit import run_audit

    run_ensemble(tiny_run, "cnn", {**TINY_CNN, "crossfit": crossfit})
    splits = Run.open(tiny_run).data.splits
    quality = run_audit(tiny_run, {"region": "outside", "bias_sources": ["m0"]})["per_class"]
    expected = len(splits) if crossfit else splits.count("test")
    assert quality.n.sum() == expected
    assert quality.rows.iloc[0] == ("all (E* out of fold)" if crossfit else "test")
