"""The one-vs-one study of a run: a generator per member, tables the report reads, generators
resumed and scores reused on a second call, and the [ganmex] section of an experiment."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from concilium.data import SynthConfig, generate
from concilium.jobs.one_vs_one import OneVsOneOptions, contrast_pairs, run_one_vs_one
from concilium.models import create_model, train_member
from concilium.models.members import MemberCard, save_member
from concilium.pipeline.config import parse_config
from concilium.store import read_table

TINY = dict(steps=2, checkpoint_every=1, batch_size=4, base_channels=4, num_residual=1,
            critic_channels=4, val_size=8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovo")
    ds = generate(SynthConfig(n=160, size=32, seed=0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("small-cnn", num_classes=ds.num_classes)
    result = train_member(model, ds, epochs=3, seed=0)
    card = MemberCard(member_id="m0", arch="small-cnn", num_classes=ds.num_classes,
                      class_names=ds.class_names, image_size=ds.image_size, seed=0,
                      diversity="seed", val_accuracy=result.val_accuracy, epochs=3,
                      gradcam_layer=model.gradcam_layer, data_fingerprint=ds.fingerprint())
    save_member(model, card, root / "models" / "m0")
    return root, ds, model.eval()


def test_contrast_pairs_are_correct_partners_and_seeded(bench):
    _, ds, model = bench
    rows, t = contrast_pairs(model, ds, seed=1, limit=5, pairs="all")
    again, t2 = contrast_pairs(model, ds, seed=1, limit=5, pairs="all")
    assert rows == again and torch.equal(t, t2)
    with torch.no_grad():
        pred = model(ds.images[rows]).argmax(1)
    assert torch.equal(pred, ds.labels[rows]) and not (t == ds.labels[rows]).any()


def test_study_writes_the_tables_and_a_second_call_reuses_everything(bench, monkeypatch):
    root, ds, _ = bench
    run = root / "run"
    options = OneVsOneOptions(generator=TINY, seeds=[0, 1], limit=3, split="train", pairs="all",
                              params={"integrated_gradients": {"n_steps": 2}}, step=5.0,
                              randomisation=False)
    tables = run_one_vs_one(run, dataset=ds, models_dir=root / "models", options=options)
    summary = read_table(run, "one_vs_one")
    assert set(summary["baseline"]) == {"x*", "ganmex", "zero", "blur", "uniform", "mean"}
    x_star = summary.set_index("baseline").loc["x*"]
    assert x_star["relevance_mass"] == pytest.approx(1.0) and x_star["n_seeds"] == 2
    claims = read_table(run, "one_vs_one_claims")
    assert set(claims["metric"]) == {"relevance_mass", "auc", "aopc_morf", "aopc_lerf",
                                     "aopc_gap"}
    assert set(claims["verdict"]) <= {"holds", "not shown", "reversed"}
    quality = read_table(run, "one_vs_one_generator").iloc[0]
    assert 0 <= quality["in_region"] <= 1 and quality["l1"] >= 0
    pd.testing.assert_frame_equal(tables["one_vs_one"], summary, check_dtype=False)
    history = pd.read_csv(run / "ganmex" / "m0" / "validation.csv")
    assert history["counterfactual_l1"].notna().all()  # validated against x*

    import concilium.jobs.one_vs_one as job

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    weights = run / "ganmex" / "m0" / "generator.safetensors"
    stamp = weights.stat().st_mtime_ns
    monkeypatch.setattr(job, "member_scores", boom)
    again = run_one_vs_one(run, dataset=ds, models_dir=root / "models", options=options)
    pd.testing.assert_frame_equal(again["one_vs_one"], summary, check_dtype=False)
    assert weights.stat().st_mtime_ns == stamp  # the finished generator was not trained again
    other = options.model_copy(update={"generator": {**TINY, "l_sim": 5.0}})
    with pytest.raises(ValueError, match="option l_sim"):
        run_one_vs_one(run, dataset=ds, models_dir=root / "models", options=other)


def test_ganmex_section_of_an_experiment():
    config = parse_config({"ganmex": {"seeds": [3], "generator": {"steps": 5}}})
    options = config.ganmex.study_options()
    assert options.seeds == [3] and options.ganmex_options().steps == 5
    assert parse_config({}).ganmex is None  # the stage is off unless asked for
    with pytest.raises(ValueError, match=r"\[ganmex\] unknown key 'sedes'"):
        parse_config({"ganmex": {"sedes": [0]}})
    with pytest.raises(ValueError, match="default, reference"):
        parse_config({"ganmex": {"preset": "paper"}})


def test_randomisation_regenerates_the_ganmex_baseline_when_asked(bench, tmp_path):
    from concilium.jobs.one_vs_one import member_scores, train_generator
    from concilium.models.members import load_member

    root, ds, _ = bench
    model, card = load_member(root / "models" / "m0")
    gen_dir = train_generator(model, card, ds, tmp_path / "gen", OneVsOneOptions(
        generator=TINY).ganmex_options())
    common = dict(seeds=[0], limit=2, split="train", pairs="all", step=10.0,
                  params={"integrated_gradients": {"n_steps": 2}})
    rows = member_scores(model, gen_dir, ds, OneVsOneOptions(**common), classifier_card=card)
    mprt = rows[(rows["metric"] == "mprt") & (rows["baseline"] == "ganmex")]["value"]
    assert mprt.isna().all()  # untestable without regeneration
    rows = member_scores(model, gen_dir, ds, OneVsOneOptions(**common, regenerate_steps=1),
                         classifier_card=card)
    mprt = rows[(rows["metric"] == "mprt") & (rows["baseline"] == "ganmex")]["value"]
    assert mprt.notna().all()
