"""The verdict rules of the headline claims (concilium.metrics.claims), defined once.

Hand-built tables on which each claim is held, not held and inconclusive; the paired image rule;
seeding; and a check that the report (report.summary.findings) and experiments/claims.py decide
with the same functions, so that the verdict that used to flip between them cannot any more.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from concilium.metrics import claims as C
from concilium.report.summary import findings

ROOT = Path(__file__).resolve().parents[2]
N = 30
WAVE = np.tile([-0.05, 0.05], N // 2)  # zero-mean per-image spread


def _tidy(values: dict[tuple[str, str, str], np.ndarray]) -> pd.DataFrame:
    """``(source, method, metric) -> per-image values`` as a tidy metrics table."""
    return pd.DataFrame([
        {"sample": f"s{i}", "label": i % 2, "source": s, "method": m, "metric": metric,
         "value": float(v)}
        for (s, m, metric), vs in values.items() for i, v in enumerate(vs)
    ])


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _same(a: C.Finding, b: C.Finding) -> bool:
    return json.dumps(a.as_dict()) == json.dumps(b.as_dict())  # NaN == NaN here


# Per case: how far the claimed source sits from its reference, per image.
SHIFTS = {"held": np.full(N, 0.1) + WAVE, "not held": np.full(N, -0.1) + WAVE,
          "inconclusive": 2 * WAVE}


def _averaging_table(shift: np.ndarray) -> pd.DataFrame:
    base = np.linspace(0.2, 0.5, N)
    values = {}
    for method in ("saliency", "gradcam"):
        values[("m0", method, "mask_correlation")] = base - 0.05
        values[("m1", method, "mask_correlation")] = base + 0.05
        values[("ens-avg", method, "mask_correlation")] = base + shift
    return _tidy(values)


def _consensus_table(shift: np.ndarray) -> pd.DataFrame:
    base = np.linspace(0.5, 0.7, N)
    values = {}
    for metric in ("auc", "average_precision", "mask_correlation"):
        for i, offset in enumerate((-0.1, 0.0, 0.1)):
            values[(f"m{i}", "smoothgrad", metric)] = base + offset
        values[("consensus", "smoothgrad", metric)] = base + shift
    return _tidy(values)


def _cnn_table(shift: np.ndarray) -> pd.DataFrame:
    base = np.linspace(0.3, 0.6, N)
    values = {}
    for metric, hib in (("relevance_mass", 1), ("iou", 1), ("pointing_game", 1), ("deletion", -1)):
        values[("m0", "saliency", metric)] = base
        values[("m0", "gradcam", metric)] = base - 0.1 * hib
        values[("cnn", "cnn", metric)] = base + hib * shift
    return _tidy(values)


def _points(r_sign: float) -> pd.DataFrame:
    x = np.linspace(0.1, 0.9, 12)
    y = 0.5 + r_sign * (x - 0.5) + np.tile([0.02, -0.02], 6)
    if r_sign == 0:
        y = 0.5 + np.tile([0.3, -0.3, -0.3, 0.3], 3)
    return pd.DataFrame({"member": [f"m{i}" for i in range(12)], "consensus_score": x,
                         "accuracy": y})


def _bias(flags: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"source": "m0", "method": [f"method{i}" for i in range(len(flags))],
                         "label": 1, "class": "striped", "enrichment": 3.0, "flagged": flags})


CASES = {
    "averaging": lambda v: C.averaging_claim(_averaging_table(SHIFTS[v]), rng=_rng()),
    "consensus alignment": lambda v: C.consensus_alignment_claim(_consensus_table(SHIFTS[v]),
                                                                 rng=_rng()),
    "consensus accuracy": lambda v: C.consensus_accuracy_claim(
        _points({"held": 1.0, "not held": -1.0, "inconclusive": 0.0}[v])),
    "cnn": lambda v: C.cnn_claim(_cnn_table(SHIFTS[v]), rng=_rng()),
    "rare class": lambda v: C.rare_class_claim(pd.DataFrame({
        "label": [0, 5], "class": ["plain", "rare"], "n": [20, 3],
        "dice": [0.8, {"held": 0.3, "not held": 0.9, "inconclusive": 0.72}[v]],
        "flag_threshold": 0.72, "flagged": [False, v == "held"]}), target="rare"),
    "watermark": lambda v: C.watermark_claim(_bias({"held": [True] * 12, "not held": [False] * 12,
                                                    "inconclusive": [True, False] * 6}[v]),
                                             target="striped", rng=_rng()),
}


@pytest.mark.parametrize("verdict", ["held", "not held", "inconclusive"])
@pytest.mark.parametrize("claim", sorted(CASES))
def test_each_claim_is_held_not_held_and_inconclusive(claim, verdict):
    f = CASES[claim](verdict)
    assert f.verdict == verdict, f
    assert f.rule and f.detail and f.n > 0
    if math.isfinite(f.ci_low):
        assert f.ci_low <= f.estimate <= f.ci_high
        inside = f.ci_low <= f.threshold <= f.ci_high
        assert inside == (verdict == "inconclusive")


def test_verdict_of_interval_touching_the_threshold_is_inconclusive():
    assert C.verdict_of(0.0, 0.3, 0.0) == "inconclusive"
    assert C.verdict_of(-0.3, 0.0, 0.0) == "inconclusive"
    assert C.verdict_of(math.nan, math.nan, 0.0) == "inconclusive"
    assert C.verdict_of(0.1, 0.2, 0.5, held_when="below") == "held"


def test_averaging_estimate_is_the_worst_methods_paired_gain_by_hand():
    t = _tidy({
        ("m0", "a", "mask_correlation"): [0.1, 0.2, 0.3, 0.4],
        ("m1", "a", "mask_correlation"): [0.3, math.nan, 0.5, 0.6],   # drops image 1 of a
        ("ens-avg", "a", "mask_correlation"): [0.5, 9.0, 0.4, 0.6],
        ("m0", "b", "mask_correlation"): [0.1, 0.1, 0.1, 0.1],
        ("m1", "b", "mask_correlation"): [0.3, 0.3, 0.3, 0.3],
        ("ens-avg", "b", "mask_correlation"): [0.5, 0.5, 0.5, math.nan],
    })
    f = C.averaging_claim(t, rng=_rng())
    # a: Exp-Avg 0.2, -, 0.4, 0.5 vs Ens-Avg 0.5, -, 0.4, 0.6 -> +0.1333 on 3 images
    # b: Exp-Avg 0.2 x 3 vs Ens-Avg 0.5 x 3 -> +0.3
    assert f.estimate == pytest.approx(0.4 / 3)
    assert f.n == 3 and "a +0.133 (3 images)" in f.detail and "b +0.300 (3 images)" in f.detail


def test_lower_is_better_metrics_flip_the_margin():
    shift = SHIFTS["held"]
    f = C.cnn_claim(_cnn_table(shift), rng=_rng())
    assert f.verdict == "held"  # the deletion AUC of E* is lower, i.e. better
    deletion_worse = _cnn_table(shift)
    rows = (deletion_worse["source"] == "cnn") & (deletion_worse["metric"] == "deletion")
    deletion_worse.loc[rows, "value"] += 0.5
    assert C.cnn_claim(deletion_worse, rng=_rng()).verdict == "not held"


def test_a_comparison_without_paired_images_keeps_a_claim_from_holding():
    t = _cnn_table(SHIFTS["held"])
    t.loc[(t["metric"] == "deletion") & (t["source"] == "cnn"), "value"] = math.nan
    f = C.cnn_claim(t, rng=_rng())
    assert f.verdict == "inconclusive" and "no paired image: deletion" in f.detail


def test_bootstrap_uses_only_the_generator_passed():
    t = _averaging_table(SHIFTS["inconclusive"])
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    a = C.averaging_claim(t, rng=np.random.default_rng(5))
    np.random.seed(2)
    b = C.averaging_claim(t, rng=np.random.default_rng(5))
    assert _same(a, b)
    np.random.seed(1)
    assert (np.random.get_state()[1] == state).all()
    c = C.averaging_claim(t, rng=np.random.default_rng(6))
    assert (c.ci_low, c.ci_high) != (a.ci_low, a.ci_high) and c.estimate == a.estimate


def test_missing_inputs_are_not_measured():
    for f in (C.averaging_claim(None, rng=_rng()), C.consensus_alignment_claim(None, rng=_rng()),
              C.consensus_accuracy_claim(None), C.cnn_claim(None, rng=_rng()),
              C.rare_class_claim(None, target="rare"), C.rare_class_claim(None, target=None),
              C.watermark_claim(None, target="w", rng=_rng())):
        assert f.verdict == "not measured" and math.isnan(f.estimate) and f.detail


def test_watermark_control_is_paired_by_explanation():
    biased = _bias([True] * 10 + [False] * 2)
    control = _bias([False] * 12)
    f = C.watermark_claim(biased, target="striped", control=control, rng=_rng())
    assert f.estimate == pytest.approx(10 / 12) and "control: 0/12" in f.detail
    f = C.watermark_claim(biased, target="striped", control=_bias([True] * 12), rng=_rng())
    assert f.estimate == pytest.approx(-2 / 12) and f.verdict == "not held"


# -- one definition: the report and experiments/claims.py ---------------------------------------


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("claims_experiment",
                                                  ROOT / "experiments" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLIP_POINTS = pd.DataFrame({"member": [f"m{i}" for i in range(6)],
                            "consensus_score": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                            "accuracy": [0.6, 0.55, 0.5, 0.45, 0.4, 0.9]})
"""Pearson r = +0.30 but Spearman rho = -0.14 (docs/FINDINGS.md measured r = +0.02, rho = -0.53):
the report's old rule (r > 0) said held, the experiment's (r > 0 and rho > 0) said not held."""


def _claim(found, start: str):
    """The one finding whose claim starts with ``start`` (positions shift as claims are added)."""
    hits = [f for f in found if f.claim.startswith(start)]
    assert len(hits) == 1, [f.claim for f in found]
    return hits[0]


def test_the_consensus_accuracy_verdict_no_longer_flips(experiment):
    committee = _consensus_table(SHIFTS["held"])
    report = findings(None, {"committee_metrics": committee, "consensus": FLIP_POINTS})
    ours = experiment.verdicts_consensus(committee, FLIP_POINTS, seed=0)
    align, accuracy = _claim(report, "The consensus aligns"), _claim(report, "Consensus score correlates positively with member")
    assert _same(align, ours[0]) and _same(accuracy, ours[1])
    assert accuracy.estimate == pytest.approx(0.3004, abs=1e-4)
    assert "Spearman rho = -0.143" in accuracy.detail
    assert accuracy.verdict == "inconclusive"  # r > 0, but its interval includes 0


@pytest.mark.parametrize("verdict", ["held", "not held", "inconclusive"])
def test_report_and_experiment_give_the_same_findings(experiment, verdict):
    shift = SHIFTS[verdict]
    metrics = pd.concat([_averaging_table(shift), _cnn_table(shift)], ignore_index=True)
    per_class = pd.DataFrame({"label": [0, 5], "class": ["plain", "rare"], "n": [9, 2],
                              "dice": [0.8, 0.5], "flag_threshold": 0.72,
                              "flagged": [False, True]})
    report = findings(metrics, {"per_class": per_class}, card={"rare_class_name": "rare"})
    ours = experiment.verdicts_averaging(metrics, seed=0)
    paper, deciding = _claim(report, "Ens-Avg beats Exp-Avg"), _claim(report, "Ens-Avg beats the")
    assert _same(paper, ours[0]) and _same(deciding, ours[1])
    cnn = _claim(report, "The CNN ensembler")
    assert _same(cnn, experiment.verdict_cnn(_cnn_table(shift), seed=0))
    audit = experiment.verdicts_audit(per_class, _bias([True] * 4), _bias([False] * 4),
                                      rare="rare", watermark="striped", seed=0)
    assert _same(_claim(report, "The rare class"), audit[0])
    assert paper.verdict == cnn.verdict == verdict
    assert experiment.watermark_claim is C.watermark_claim


def test_experiment_has_no_verdict_logic_of_its_own():
    text = (ROOT / "experiments" / "claims.py").read_text()
    for pattern in ("HELD", "held_", "def better"):
        assert pattern not in text, pattern
