"""Every registered ensembler (``ENSEMBLERS``) on the tiny run: its options model, its entries
(shape, finite, deterministic for a seed), the options of other kinds refused (library and CLI),
and for the cheap kinds the stored values against the tensor-level functions."""

import re

import pandas as pd
import pytest
import torch
from pydantic import BaseModel
from typer.testing import CliRunner

from concilium.cli.main import app
from concilium.cli.options import flag, has_flag
from concilium.ensemble.consensus import consensus
from concilium.ensemble.expectation import averaging_expectation
from concilium.ensemble.reduce import aggregate
from concilium.ensemble.weighted import weighted_ensemble
from concilium.jobs.audit import AuditOptions, run_audit
from concilium.jobs.ensemble import (
    ENSEMBLERS,
    EnsembleOptionsBase,
    ensemble_options,
    ensembler,
    run_ensemble,
)
from concilium.metrics import evaluate
from concilium.store import ExplanationStore, Run

KINDS = ENSEMBLERS.names()
# settings that keep a kind fast on the tiny run (and consensus: its untrained members agree on
# no image, so score every image); a kind not listed runs with its defaults
FAST = {"cnn": {"base_channels": 4, "depth": 1, "epochs": 2, "patience": 2, "batch_size": 8},
        "krr": {"folds": 2, "pixels_per_image": 8}, "consensus": {"correct_only": False}}


@pytest.fixture
def scored_run(tiny_run):
    """The tiny run plus a metrics table (the weighted kind reads relevance_mass from it)."""
    (tiny_run / "results").mkdir(exist_ok=True)
    data = Run.open(tiny_run).data  # the weights come from a held-out val row (review D17)
    val = next(i for i, s in zip(data.ids, data.splits, strict=True) if s == "val")
    pd.DataFrame({"sample": val, "label": 0, "source": "m0", "method": ["saliency", "gradcam"],
                  "metric": "relevance_mass", "value": [0.2, 0.6], "params_hash": "x"}
                 ).to_parquet(tiny_run / "results" / "metrics.parquet")
    return tiny_run


def _foreign(kind: str) -> str:
    """A field of another kind's options model that ``kind`` does not take."""
    own = ENSEMBLERS.get(kind).options.model_fields
    for other in KINDS:
        for name, field in ENSEMBLERS.get(other).options.model_fields.items():
            if name not in own and has_flag(field):
                return name
    raise AssertionError(f"every option of every kind is an option of {kind}")


@pytest.mark.parametrize("kind", KINDS)
def test_options_model_is_strict_and_documented(kind):
    model = ENSEMBLERS.get(kind).options
    assert issubclass(model, EnsembleOptionsBase) and model.model_config["extra"] == "forbid"
    undocumented = [n for n, f in model.model_fields.items() if not f.description]
    assert not undocumented, f"{kind}: fields without a description (the CLI help): {undocumented}"
    assert ENSEMBLERS.get(kind).summary


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_writes_finite_maps_deterministically(scored_run, kind):
    first = run_ensemble(scored_run, kind, FAST.get(kind, {}))
    assert first.entries
    again = run_ensemble(scored_run, kind, {**FAST.get(kind, {}), "source": f"{kind}:again"})
    assert [e.method for e in again.entries] == [e.method for e in first.entries]
    for a, b in zip(first.entries, again.entries, strict=True):
        maps = a.read()
        assert maps.shape == (32, 32, 32) and torch.isfinite(maps).all()
        assert a.params["kind"] == kind and a.meta["ensemble_kind"] == kind
        torch.testing.assert_close(b.read(), maps, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_an_option_of_another_kind_is_refused_naming_the_valid_ones(tiny_run, kind):
    foreign = _foreign(kind)
    valid = sorted(ENSEMBLERS.get(kind).options.model_fields)
    with pytest.raises(ValueError, match=rf"ensembler '{kind}' has no option '{foreign}'.*; "
                                         rf"its options: {re.escape(', '.join(valid))}$"):
        run_ensemble(tiny_run, kind, {foreign: None})
    other = next(ENSEMBLERS.get(k).options for k in KINDS if k != kind)
    with pytest.raises(TypeError, match=f"takes {ENSEMBLERS.get(kind).options.__name__}"):
        ensemble_options(kind, other())
    field = next(ENSEMBLERS.get(k).options.model_fields[foreign] for k in KINDS
                 if foreign in ENSEMBLERS.get(k).options.model_fields)
    value = [] if field.annotation is bool else ["1"]  # a bool is a --x/--no-x switch
    out = CliRunner().invoke(app, ["ensemble", str(tiny_run), "--kind", kind, flag(foreign),
                                   *value])
    assert isinstance(out.exception, ValueError), out.output
    message = str(out.exception)
    assert f"{flag(foreign)} is not an option of --kind {kind}" in message
    assert all(flag(name) in message for name in valid)


def test_cli_help_lists_every_kind_with_its_options_and_their_help():
    out = CliRunner().invoke(app, ["ensemble", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.replace("│", " ").split())
    for kind, spec in ENSEMBLERS.items():
        assert f"{kind}: {spec.summary}" in text
        for name, field in spec.options.model_fields.items():
            assert flag(name) in text and field.description in text, (kind, name)


def test_cli_flags_reach_the_options(tiny_run):
    out = CliRunner().invoke(app, ["ensemble", str(tiny_run), "--kind", "ens-avg", "--methods",
                                   "saliency", "--normalisation", "l2", "--absolute",
                                   "--source", "ens-avg:cli"])
    assert out.exit_code == 0, out.output
    entry = ExplanationStore(tiny_run, mode="r").get("ens-avg:cli", "saliency")
    assert entry.params["normalisation"] == "l2" and entry.params["absolute"] is True


def _members(run, method):
    store = ExplanationStore(run, mode="r")
    return torch.stack([store.get(m, method).read() for m in ("m0", "m1")])


def test_stored_values_equal_the_tensor_level_functions(scored_run):
    store = ExplanationStore(scored_run, mode="r")
    m0 = {m: store.get("m0", m).read() for m in ("gradcam", "saliency")}
    (avg,) = run_ensemble(scored_run, "ens-avg", {"methods": ["saliency"], "reducer":
                                                  "trimmed_mean", "trim": 0.0}).entries
    torch.testing.assert_close(avg.read(), aggregate(_members(scored_run, "saliency"),
                                                     reducer="trimmed_mean", trim=0.0))
    (cons,) = run_ensemble(scored_run, "consensus", {"methods": ["gradcam"],
                                                     "correct_only": False}).entries
    torch.testing.assert_close(cons.read(), consensus(_members(scored_run, "gradcam"),
                                                      absolute=True))
    (agg,) = run_ensemble(scored_run, "aggregate", {"reducer": "median"}).entries
    torch.testing.assert_close(agg.read(), aggregate(m0, reducer="median"))
    weighted = run_ensemble(scored_run, "weighted")
    w = weighted.tables["weights"].set_index("method").weight
    assert w.to_dict() == {"gradcam": 1.0, "saliency": 0.0}  # relevance_mass 0.6 vs 0.2
    torch.testing.assert_close(weighted.entries[0].read(),
                               weighted_ensemble(m0, [w["gradcam"], w["saliency"]]))


def test_trim_reaches_the_ens_avg_reducer(tiny_run):
    a = run_ensemble(tiny_run, "ens-avg", {"reducer": "trimmed_mean", "trim": 0.0,
                                           "methods": ["saliency"]}).entries[0]
    b = run_ensemble(tiny_run, "ens-avg", {"reducer": "trimmed_mean", "trim": 0.4,
                                           "methods": ["saliency"]}).entries[0]
    assert a.params_hash != b.params_hash
    assert a.params["trim"] == 0.0 and b.params["trim"] == 0.4


def test_cnn_refuses_training_options_with_a_saved_ensembler(tiny_run):
    with pytest.raises(ValueError, match=r"drop the training options \['epochs'\]"):
        run_ensemble(tiny_run, "cnn", {"ensembler": str(tiny_run), "epochs": 3})


def test_ensembler_needs_an_options_model():
    class NotOptions(BaseModel):
        pass

    with pytest.raises(TypeError, match="subclass of EnsembleOptionsBase"):
        ensembler("not-registered", options=NotOptions)  # type: ignore[arg-type]
    assert "not-registered" not in ENSEMBLERS


def test_audit_options_are_checked(tiny_run):
    with pytest.raises(ValueError, match=r"the audit has no option 'folds'; its options: "
                                         r"anonymisation, anonymisation_baseline, anonymisation_epochs"):
        run_audit(tiny_run, {"folds": 3})
    with pytest.raises(ValueError, match=r"region: Input should be 'watermark' or 'outside'"):
        run_audit(tiny_run, {"region": "sky"})
    out = CliRunner().invoke(app, ["audit", str(tiny_run), "--region", "outside",
                                   "--bias-sources", "m0"])
    assert out.exit_code == 0, out.output
    bias = pd.read_parquet(tiny_run / "results" / "bias.parquet")
    assert set(bias.source) == {"m0"} and set(bias.region) == {"outside"}
    assert AuditOptions.model_config["extra"] == "forbid"


@pytest.mark.parametrize("absolute", [True, False])
def test_member_localisation_is_on_the_maps_the_vote_saw(tiny_run, absolute):
    """Review D14: with ``absolute=True`` the consensus is built from |maps| but the members'
    localisation was measured on their signed maps; both now use the same maps."""
    result = run_ensemble(tiny_run, "consensus", {"methods": ["saliency"],
                                                  "correct_only": False, "absolute": absolute})
    table = result.tables["consensus"].set_index("member")
    stack, masks = _members(tiny_run, "saliency"), Run.open(tiny_run).data.masks
    for i, m in enumerate(("m0", "m1")):
        signed = float(evaluate("auc", stack[i], masks=masks).nanmean())
        voted = float(evaluate("auc", stack[i].abs() if absolute else stack[i],
                               masks=masks).nanmean())
        assert table.loc[m, "localisation"] == pytest.approx(voted)
        if absolute:
            assert voted != pytest.approx(signed)  # the maps are signed: the choice matters


def test_ens_avg_writes_the_claim_1_tables_from_the_tensor_level_functions(tiny_run):
    run = Run.open(tiny_run)
    out = run_ensemble(tiny_run, "ens-avg", {"methods": ["saliency"], "seed": 3})
    expectation, size = out.tables["averaging_expectation"], out.tables["ensemble_size"]
    stack = _members(tiny_run, "saliency")
    want = averaging_expectation(stack, run.data.masks)
    assert expectation["sample"].tolist() == list(run.data.ids)
    assert expectation["ens_avg"].to_numpy() == pytest.approx(want["ens_avg"].to_numpy())
    assert sorted(size["metric"].unique()) == ["iou", "mask_correlation"]
    assert size["k"].tolist() == [1, 2, 1, 2] and (size["method"] == "saliency").all()
    assert (tiny_run / "results" / "averaging_expectation.parquet").exists()
    # the identity holds only for the mean of signed maps: other settings write no claim tables
    other = run_ensemble(tiny_run, "ens-avg", {"methods": ["saliency"], "reducer": "median"})
    assert other.tables == {}
