"""The anonymisation study: information removed (SSIM/PSNR), out-of-sample E* only (review D3),
E* from maps of the predicted class (review S1), several seeds."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from concilium.data.dataset import ImageDataset
from concilium.ensemble.audit import (
    anonymisation_study,
    anonymisation_summary,
    anonymise,
    information_removed,
)
from concilium.ensemble.cnn import CNNEnsembler
from concilium.explain import explain
from concilium.jobs.anonymisation import study_estar
from concilium.jobs.audit import run_audit
from concilium.jobs.ensemble import run_ensemble
from concilium.store import Run, write_source

TINY_CNN = {"base_channels": 4, "depth": 1, "epochs": 2, "patience": 2, "batch_size": 8}


def _dataset(n: int = 24, size: int = 16) -> ImageDataset:
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 2
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return ImageDataset(images=images, labels=labels, masks=masks,
                        ids=[f"s{i}" for i in range(n)], splits=splits, class_names=["a", "b"])


@pytest.mark.parametrize("channels", [1, 3])
def test_information_removed_hand_cases(channels):
    x = torch.rand(4, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    ssim, psnr = information_removed(x, anonymise(x, torch.rand(4, 16, 16), "original"))
    np.testing.assert_allclose(ssim, 1.0)
    assert np.isnan(psnr).all()  # nothing removed: an infinite PSNR is written NaN
    zeros = anonymise(x, torch.zeros(4, 16, 16), "product")
    assert not zeros.any()
    ssim, psnr = information_removed(x, zeros)
    mse = (x.double() ** 2).flatten(1).mean(1).numpy()
    np.testing.assert_allclose(psnr, 10 * np.log10(1 / mse), rtol=1e-9)
    assert (ssim < 0.05).all()
    half = anonymise(x, torch.full((4, 16, 16), 0.5), "product")
    s_half, p_half = information_removed(x, half)
    assert (s_half > ssim).all() and (p_half > psnr).all()  # less removed than the zeros
    with pytest.raises(ValueError, match=r"both be \(N, C, H, W\)"):
        information_removed(x, x[:2])


def test_study_refuses_in_sample_estar():
    # review D3: E* fitted on the train/val rows must not feed the study
    data = _dataset()
    emaps = torch.rand(24, 16, 16, generator=torch.Generator().manual_seed(1))
    fitted = [i for i, s in zip(data.ids, data.splits, strict=True) if s != "test"]
    with pytest.raises(ValueError, match=r"--kind cnn --crossfit 5"):
        anonymisation_study(data, emaps, epochs=1, seeds=[0], in_sample_ids=fitted)
    table = anonymisation_study(data, emaps, modes=("product",), epochs=1, seeds=[0],
                                in_sample_ids=fitted, allow_in_sample=True)
    assert table.in_sample.all()
    clean = anonymisation_study(data, emaps, modes=("product",), epochs=1, seeds=[0],
                                in_sample_ids=["not-a-row"])
    assert not clean.in_sample.any()


def test_study_seeds_are_deterministic_and_summarised():
    data = _dataset()
    emaps = torch.rand(24, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(modes=("original", "product"), epochs=1, seeds=[3, 4], target="pred (stored)")
    a = anonymisation_study(data, emaps, **kw)
    b = anonymisation_study(data, emaps, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert list(zip(a["mode"], a["seed"], strict=True)) == [
        ("original", 3), ("original", 4), ("product", 3), ("product", 4)]
    assert set(a.target) == {"pred (stored)"}
    assert math.isnan(a.psnr[a["mode"] == "original"].iloc[0])
    assert (a.ssim[a["mode"] == "original"] == 1).all()
    assert (a.ssim[a["mode"] == "product"] < 1).all()
    s = anonymisation_summary(a)
    assert list(s["mode"]) == ["original", "product"] and (s.seeds == 2).all()
    for mode, g in a.groupby("mode"):
        row = s[s["mode"] == mode].iloc[0]
        assert row.test_accuracy == pytest.approx(g.test_accuracy.mean())
        assert row.test_accuracy_sd == pytest.approx(g.test_accuracy.std(ddof=1), nan_ok=True)


@pytest.fixture
def cnn_run(tiny_run):
    run_ensemble(tiny_run, "cnn", TINY_CNN)
    return tiny_run


def test_audit_skips_the_study_on_in_sample_estar(cnn_run):
    # an entry without fit_ids (before cross-fitting): train and val rows are in-sample
    with pytest.warns(UserWarning, match=r"anonymisation study skipped.*--crossfit 5"):
        tables = run_audit(cnn_run, {"anonymisation": True, "attribute_cards": 0,
                                     "region": "outside"})
    assert "anonymisation" not in tables and "per_class" in tables
    assert not (cnn_run / "results" / "anonymisation.parquet").exists()


def test_estar_is_rederived_for_the_predicted_class(cnn_run):
    # review S1: the run explained target="label"; the study's E* explains the predicted class
    run = Run.open(cnn_run, load_models=True)
    model, data = run.models["m0"], run.data
    ens = CNNEnsembler.load(cnn_run / "ensemblers" / "cnn")

    def estar(target):
        maps = {m: explain(model, data.images, target, method=m, labels=data.labels)
                for m in ens.card.methods}
        return ens.predict(maps)[1]

    pred, label = estar("pred"), estar("label")
    assert not torch.allclose(pred, label, atol=1e-5, rtol=1e-4)  # the targets differ here
    got = study_estar(cnn_run, "cnn")
    assert got.target == "pred (re-derived)"
    torch.testing.assert_close(got.maps, pred, atol=1e-5, rtol=1e-4)
    assert sorted(got.in_sample_ids) == sorted(
        i for i, s in zip(data.ids, data.splits, strict=True) if s != "test")
    stored = study_estar(cnn_run, "cnn", rederive=False)
    assert stored.target == "label (stored)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = run_audit(cnn_run, {"anonymisation": True, "anonymisation_in_sample": True,
                                     "anonymisation_seeds": 2, "anonymisation_epochs": 1,
                                     "attribute_cards": 0, "region": "outside"})
    runs, summary = tables["anonymisation_seeds"], tables["anonymisation"]
    assert len(runs) == 6 and set(runs.seed) == {0, 1}
    assert set(summary.target) == {"pred (re-derived)"} and summary.in_sample.all()
    assert {"ssim", "psnr", "test_accuracy_sd"} <= set(summary.columns)


def test_cross_fitted_estar_goes_through_each_rows_own_ensembler(cnn_run):
    # the crossfit contract: fit_ids empty, folds name the ensembler that produced each row
    run_ensemble(cnn_run, "cnn", {**TINY_CNN, "seed": 1, "source": "cnn2"})
    run = Run.open(cnn_run, load_models=True)
    entry = run.store.get("cnn", "gradcam+saliency")
    ids = list(run.data.ids)
    folds = [{"dir": "ensemblers/cnn", "ids": ids[::2]}, {"dir": "ensemblers/cnn2", "ids": ids[1::2]}]
    write_source(run.store, "cnn:cf", entry.method, entry.read(), sample_ids=ids,
                 params={**entry.params, "fit_ids": [], "crossfit": 2, "folds": folds},
                 meta=entry.meta)
    got = study_estar(cnn_run, "cnn:cf")
    assert got.in_sample_ids == [] and got.target == "pred (re-derived)"
    model, data = run.models["m0"], run.data
    expected = torch.empty(len(ids), 32, 32)
    for k, fold in enumerate(folds):
        ens = CNNEnsembler.load(cnn_run / fold["dir"])
        rows = torch.arange(k, len(ids), 2)
        maps = {m: explain(model, data.images[rows], "pred", method=m, labels=data.labels[rows])
                for m in ens.card.methods}
        expected[rows] = ens.predict(maps)[1]
    torch.testing.assert_close(got.maps, expected, atol=1e-5, rtol=1e-4)
    tables = run_audit(cnn_run, {"anonymisation": True, "estar_source": "cnn:cf",
                                 "anonymisation_seeds": 1, "anonymisation_epochs": 1,
                                 "attribute_cards": 0, "region": "outside"})
    assert not tables["anonymisation"].in_sample.any()
