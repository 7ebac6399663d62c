"""``evaluate_run`` stores exactly what :func:`concilium.metrics.evaluate` gives on the stored
maps and the run's data, scored by the model its documented rule names:

* a member source (``m0``, ``m1``): that member;
* ``ens-logit``: the :class:`~concilium.ensemble.LogitEnsemble` of all members;
* any other ensemble source (``ens-avg``, ...): the first member, ``m0``;

and metrics that re-run the explanation method are skipped, with a note, for ensemble sources
other than ``ens-logit``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from concilium.data.specs import SyntheticDataset
from concilium.data.synthetic import SynthConfig, generate
from concilium.ensemble import LogitEnsemble
from concilium.explain import explain
from concilium.jobs.ensemble import run_ensemble
from concilium.jobs.evaluate import entry_metric_seed, evaluate_run
from concilium.metrics import METRICS as METRIC_SPECS
from concilium.metrics import evaluate
from concilium.models import MemberCard, create_model, save_member
from concilium.store import ExplanationStore, Run, read_metrics
from concilium.store.manifest import RunInfo

HW = 32
PARAMS = {
    "deletion": {"step": 25},                                  # model-bound, deterministic
    "faithfulness_correlation": {"nr_runs": 4, "subset_size": 64},  # model-bound, stochastic
    "max_sensitivity": {"nr_samples": 2},                      # needs the explanation method
}
METRICS = ["relevance_mass", *PARAMS]  # relevance_mass: mask only


def _make_run(root: Path) -> Path:
    cfg = SynthConfig(n=16, size=HW, num_classes=2, seed=0, split_fractions=(0.5, 0.25, 0.25))
    data = generate(cfg)
    for i in range(2):
        torch.manual_seed(10 + i)
        model = create_model("small-cnn", num_classes=2)
        card = MemberCard(member_id=f"m{i}", arch="small-cnn", num_classes=2,
                          class_names=data.class_names, image_size=(HW, HW), seed=i,
                          diversity="seed", epochs=0, gradcam_layer=model.gradcam_layer,
                          data_fingerprint=data.fingerprint())
        save_member(model, card, root / "models" / f"m{i}")
    run = root / "run"
    store = ExplanationStore(run)
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        maps = data.masks.float() * (1 + i) + 0.5 * torch.randn(len(data), HW, HW, generator=gen)
        params = {"method": "saliency", "method_params": {}, "target": "label",
                  "reduction": "sum", "baseline": "zero", "seed": 0}
        entry = store.entry(f"m{i}", "saliency", params, data.ids, shape=(HW, HW),
                            chunk_size=16, meta={"dataset_fingerprint": data.fingerprint()})
        entry.write(0, maps)
    RunInfo(dataset=SyntheticDataset(config=cfg.model_dump(mode="json", exclude_unset=True)),
            dataset_fingerprint=data.fingerprint(), split="all", sample_ids=data.ids,
            models_dir=str((root / "models").resolve()), member_ids=["m0", "m1"],
            methods=["saliency"]).save(run)
    return run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run_dir = _make_run(tmp_path_factory.mktemp("evaluate_values"))
    run_ensemble(run_dir, "ens-avg")
    run_ensemble(run_dir, "ens-logit")
    report = evaluate_run(run_dir, METRICS, params=PARAMS, seed=3)
    return run_dir, report, read_metrics(run_dir)


def _stored(table: pd.DataFrame, source: str, metric: str) -> pd.Series:
    rows = table[(table.source == source) & (table.method == "saliency")
                 & (table.metric == metric)]
    return rows.set_index("sample").value


def _direct(run: Run, source: str, metric: str, model, *, seed: int = 3) -> pd.Series:
    """``evaluate`` called by hand on the stored maps of the test split."""
    data = run.data.subset("test")  # evaluate_run scores the test split by default
    _, entry = run.read_maps(source, "saliency")
    maps = entry.read(entry.rows_of(data.ids))
    params = PARAMS.get(metric, {})
    gen = None
    if METRIC_SPECS.get(metric).stochastic:
        gen = torch.Generator().manual_seed(
            entry_metric_seed(seed, source, "saliency", entry.params_hash))
    values = evaluate(metric, maps, images=data.images, labels=data.labels,
                      masks=data.masks, model=model, generator=gen, explainer=_saliency, **params)
    return pd.Series(values.tolist(), index=data.ids)


def _saliency(model, images, targets):
    """The method every map of the run was made with (deterministic: no generator needed)."""
    return explain(model, images, targets, method="saliency", reduction="sum", baseline="zero")


@pytest.fixture(scope="module")
def run(evaluated):
    return Run.open(evaluated[0], load_models=True)


def _model_by_rule(run: Run, source: str):
    if source == "ens-logit":
        return LogitEnsemble([run.models["m0"], run.models["m1"]]).eval()
    return run.models[source if source in run.models else "m0"]


@pytest.mark.parametrize(("source", "metric"), [
    *((s, m) for s in ("m0", "m1", "ens-avg", "ens-logit")
      for m in ("relevance_mass", "deletion", "faithfulness_correlation")),
    ("m1", "max_sensitivity"), ("ens-logit", "max_sensitivity"),  # the method re-run on the model
])
def test_stored_value_equals_evaluate_with_the_rules_model(evaluated, run, source, metric):
    _, _, table = evaluated
    stored = _stored(table, source, metric)
    expected = _direct(run, source, metric, _model_by_rule(run, source))
    assert list(stored.index) == list(expected.index)  # the test split, in store order
    assert len(stored) == len(run.data.subset("test")) > 0
    torch.testing.assert_close(torch.tensor(stored.to_numpy()), torch.tensor(expected.to_numpy()),
                               rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize(("source", "not_this"), [
    ("m1", ["m0"]),            # a member is scored by itself
    ("ens-avg", ["m1"]),       # any other ensemble source by m0
    ("ens-logit", ["m0", "m1"]),  # ens-logit by the logit ensemble, not a member
])
def test_the_scoring_model_is_the_one_the_rule_names(evaluated, run, source, not_this):
    """The deletion scores of the same maps differ per model, so the stored value tells which
    model scored it."""
    stored = torch.tensor(_stored(evaluated[2], source, "deletion").to_numpy())
    for other in not_this:
        wrong = torch.tensor(_direct(run, source, "deletion", run.models[other]).to_numpy())
        assert not torch.allclose(stored, wrong, rtol=1e-4, atol=1e-6), (
            f"{source} looks scored by {other}")


def test_explainer_metrics_only_for_sources_with_one_method(evaluated):
    _, report, table = evaluated
    scored = set(table[table.metric == "max_sensitivity"].source)
    assert scored == {"m0", "m1", "ens-logit"}
    assert any(n.startswith("ens-avg/saliency/max_sensitivity: skipped") for n in report.notes)


def test_the_split_selects_the_scored_rows(tmp_path):
    """``split`` picks the explained rows of that split (the default, test, keeps the rows an
    ensembler may have been fitted on out of the scores); ``all`` scores every explained row."""
    run_dir = _make_run(tmp_path)
    info = RunInfo.load(run_dir)
    splits = dict(zip(info.sample_ids, Run.open(run_dir).data.splits, strict=True))
    assert len(set(splits.values())) > 1, "the fixture must explain several splits"
    for split in ("test", "train", "all"):
        out = tmp_path / f"scored-{split}"
        shutil.copytree(run_dir, out)
        evaluate_run(out, ["relevance_mass"], split=split)
        scored = set(pd.read_parquet(out / "results" / "metrics.parquet")["sample"])
        expected = {s for s, sp in splits.items() if split == "all" or sp == split}
        assert scored == expected


def test_a_batch_relative_metric_is_scored_on_the_whole_split(tmp_path):
    """``consistency`` compares an image with the other images of its call: chunking the split
    would change it, so it is evaluated in one call whatever ``chunk`` says."""
    run_dir = _make_run(tmp_path)
    params = {"discretise": "first_n_sign", "n": 1}  # the sign of one pixel: many matches
    evaluate_run(run_dir, ["consistency"], chunk=3, split="all", params={"consistency": params})
    stored = torch.tensor(_stored(read_metrics(run_dir), "m0", "consistency").to_numpy())
    run = Run.open(run_dir, load_models=True)
    _, entry = run.read_maps("m0", "saliency")
    maps, model = entry.read(entry.rows_of(run.data.ids)), run.models["m0"]

    def scores(rows):
        return evaluate("consistency", maps[rows], images=run.data.images[rows],
                        labels=run.data.labels[rows], model=model, **params)

    whole = scores(slice(None))
    chunked = torch.cat([scores(slice(i, i + 3)) for i in range(0, len(maps), 3)])
    assert not torch.allclose(whole, chunked, equal_nan=True), "chunking must matter here"
    torch.testing.assert_close(stored, whole, equal_nan=True)
