"""Claim 1 restated so that it can fail (review ensembling D9, D10): the algebraic label, the
comparisons with the best member, with Exp-Avg on IoU and com_distance, with one member at the
same compute, and the ensemble-size comparison; each hand-checked."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from concilium.metrics import claims as C


def _tidy(values):
    return pd.DataFrame([
        {"sample": f"s{i}", "source": s, "method": m, "metric": metric, "value": float(v)}
        for (s, m, metric), vs in values.items() for i, v in enumerate(vs)
    ])


def _rng():
    return np.random.default_rng(0)


WAVE = np.tile([-0.01, 0.01], 10)


def test_d9_pairing_compares_only_the_common_images():
    # the review's repro: unpaired the gain was -0.175; on the one common image the sources tie
    t = _tidy({(s, "gradcam", "mask_correlation"): v for s, v in (
        ("m0", [0.8, math.nan]), ("m1", [0.8, 0.1]), ("ens-avg", [0.8, 0.1]))})
    f = C.averaging_claim(t, rng=_rng())
    assert f.estimate == pytest.approx(0.0) and f.n == 1
    iou = t.assign(metric="iou")
    assert C.averaging_localisation_claim(iou, rng=_rng()).estimate == pytest.approx(0.0)
    best = C.averaging_best_member_claim(iou, rng=_rng())
    assert best.estimate == pytest.approx(0.0) and best.n == 1


def test_mask_correlation_is_labelled_algebraic_and_iou_is_not():
    base = np.linspace(0.2, 0.5, 20)
    values = {}
    for metric in ("mask_correlation", "iou"):
        values[("m0", "sal", metric)] = base
        values[("m1", "sal", metric)] = base + 0.1
        values[("ens-avg", "sal", metric)] = base + 0.2 + WAVE
    t = _tidy(values)
    expectation = pd.DataFrame({"method": "sal", "ens_avg": [0.6, 0.4], "exp_avg_sigma": 0.3,
                                "expected": [0.5, 0.5]})
    f = C.averaging_claim(t, rng=_rng(), expectation=expectation)
    assert "algebraic" in f.claim and "ALGEBRAIC" in f.rule and "cannot fail" in f.rule
    assert "observed Ens-Avg 0.500, algebra expects 0.500" in f.detail
    g = C.averaging_claim(t, rng=_rng(), metric="iou")
    assert "algebraic" not in g.claim and "ALGEBRAIC" not in g.rule
    with pytest.raises(ValueError, match="cannot decide claim 1"):
        C.averaging_localisation_claim(t, rng=_rng(), metric_names=("mask_correlation",))


@pytest.mark.parametrize("shift, verdict", [(0.15, "held"), (0.05, "not held"),
                                            (0.1, "inconclusive")])
def test_best_member_claim_by_hand(shift, verdict):
    base = np.linspace(0.2, 0.5, 20)
    wave = WAVE * 5 if verdict == "inconclusive" else WAVE
    t = _tidy({("m0", "sal", "iou"): base, ("m1", "sal", "iou"): base + 0.1,
               ("ens-avg", "sal", "iou"): base + shift + wave})
    f = C.averaging_best_member_claim(t, rng=_rng())
    # the best member is m1 (mean + 0.1), so the margin is shift - 0.1
    assert f.estimate == pytest.approx(shift - 0.1, abs=1e-12)
    assert f.verdict == verdict and "vs m1" in f.detail
    # Exp-Avg is base + 0.05: 0.1 beats it though it ties the best member; 0.05 ties Exp-Avg
    exp = C.averaging_localisation_claim(t, rng=_rng(), metric_names=("iou",))
    assert exp.estimate == pytest.approx(shift - 0.05, abs=1e-12)
    assert exp.verdict == ("inconclusive" if shift == 0.05 else "held")


def test_best_member_on_a_lower_is_better_metric_and_chosen_on_other_data():
    base = np.linspace(2.0, 3.0, 20)
    t = _tidy({("m0", "sal", "com_distance"): base + 1, ("m1", "sal", "com_distance"): base - 1,
               ("ens-avg", "sal", "com_distance"): base + WAVE})
    f = C.averaging_best_member_claim(t, rng=_rng())
    assert f.estimate == pytest.approx(-1.0) and f.verdict == "not held"  # m1 is closer
    g = C.averaging_best_member_claim(t, rng=_rng(), best={"sal": "m0"})
    assert g.estimate == pytest.approx(1.0) and g.verdict == "held" and "other data" in g.rule
    with pytest.raises(ValueError, match="pick one of"):
        C.averaging_best_member_claim(t, rng=_rng(), best={"sal": "m7"})


def test_localisation_claim_pairs_exp_avg_by_hand():
    t = _tidy({("m0", "ig", "com_distance"): [1.0, 2.0, 3.0],
               ("m1", "ig", "com_distance"): [3.0, math.nan, 1.0],
               ("ens-avg", "ig", "com_distance"): [1.5, 0.0, 1.0]})
    f = C.averaging_localisation_claim(t, rng=_rng())
    # images 0 and 2 (image 1 has a NaN member): Exp-Avg 2, 2; Ens-Avg 1.5, 1 -> margin +0.75
    assert f.estimate == pytest.approx(0.75) and f.n == 2
    assert "no paired image: iou" in f.detail and f.verdict == "inconclusive"


def test_same_compute_claim_by_hand():
    base = np.linspace(0.2, 0.5, 20)
    t = _tidy({("ens-avg", "smoothgrad", "iou"): base + WAVE,
               ("m0-x5", "smoothgrad", "iou"): base + 0.2,
               ("ens-avg", "integrated_gradients", "iou"): base + 0.3 + WAVE,
               ("m0-x5", "integrated_gradients", "iou"): base})
    f = C.same_compute_claim(t, rng=_rng(), single_source="m0-x5")
    assert f.estimate == pytest.approx(-0.2) and f.verdict == "not held"
    assert C.same_compute_claim(t, rng=_rng(), single_source="m9").verdict == "not measured"


def _curve(source, means, low_high):
    return [{"source": source, "method": "sal", "metric": "iou", "k": k + 1, "mean": m,
             "low": m - low_high, "high": m + low_high} for k, m in enumerate(means)]


def test_ensemble_size_claim_compares_at_the_common_k():
    curves = pd.DataFrame(_curve("head", [0.1, 0.2, 0.3, 0.9], 0.01)
                          + _curve("arch", [0.1, 0.25, 0.3], 0.01))
    f = C.ensemble_size_claim(curves)
    # common K = 3 (arch has 3 members), not head's 4: gains 0.2 and 0.2
    assert f.n == 3 and f.estimate == pytest.approx(0.2) and f.verdict == "held"
    wide = pd.DataFrame(_curve("head", [0.1, 0.2, 0.15], 0.1))
    assert C.ensemble_size_claim(wide).verdict == "inconclusive"
    lower = pd.DataFrame(_curve("head", [0.5, 0.2], 0.01))
    assert C.ensemble_size_claim(lower).verdict == "not held"
    assert C.ensemble_size_claim(None).verdict == "not measured"


def test_deciding_claim_takes_the_weakest_of_best_member_and_exp_avg():
    base = np.linspace(0.2, 0.5, 20)
    t = _tidy({("m0", "sal", "iou"): base, ("m1", "sal", "iou"): base + 0.1,
               ("ens-avg", "sal", "iou"): base + 0.15 + WAVE,
               ("m0", "sal", "mask_correlation"): base, ("m1", "sal", "mask_correlation"): base,
               ("ens-avg", "sal", "mask_correlation"): base - 0.02 + WAVE})
    f = C.averaging_deciding_claim(t, rng=_rng())
    # iou: vs best +0.05, vs Exp-Avg +0.10; mask_correlation vs best -0.02 decides
    assert f.estimate == pytest.approx(-0.02) and f.verdict == "not held"
    assert "cannot fail" in f.rule and "no paired image: com_distance" in f.detail
    g = C.averaging_deciding_claim(t, rng=_rng(), best_metrics=("iou",), exp_avg_metrics=("iou",))
    assert g.estimate == pytest.approx(0.05) and g.verdict == "held"
    with pytest.raises(ValueError, match="cannot decide claim 1"):
        C.averaging_deciding_claim(t, rng=_rng(), exp_avg_metrics=("relevance_mass",))
