"""The statistics behind every paired claim (concilium.metrics._paired via
concilium.metrics.claims): exact and Monte Carlo sign-flip p-values by hand, the
intersection-union p of a claim of several comparisons, and claims decided over several seeds
(images paired and resampled within their seed, per-seed estimates in the detail)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from concilium.metrics import _paired as P
from concilium.metrics import claims as C
from concilium.report.summary import findings


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _alignment_table(margins: dict[str, np.ndarray], seed: int | None = None) -> pd.DataFrame:
    """Per metric, a consensus ``margins`` above the middle of three members, image by image."""
    rows = []
    for metric, m in margins.items():
        base = np.linspace(0.4, 0.6, len(m))
        for i, value in enumerate(base):
            for src, v in (("m0", value - 0.1), ("m1", value), ("m2", value + 0.1),
                           ("consensus", value + m[i])):
                rows.append({"sample": f"s{i}", "source": src, "method": "smoothgrad",
                             "metric": metric, "value": float(v)})
    table = pd.DataFrame(rows)
    return table if seed is None else table.assign(seed=seed)


def test_sign_flip_p_is_exact_on_hand_examples():
    assert P.sign_flip_p(np.array([0.1, 0.2, 0.3, 0.4]), rng=_rng()) == 1 / 16
    # flips of 1, -1, 2, 3 with a sum >= 5: (+, +, +, +) = 7, (-, +, +, +) = 5, (+, -, +, +) = 5
    assert P.sign_flip_p(np.array([1.0, -1.0, 2.0, 3.0]), rng=_rng()) == 3 / 16
    assert P.sign_flip_p(np.array([-0.1, -0.2, -0.3, -0.4]), rng=_rng()) == 1.0
    assert math.isnan(P.sign_flip_p(np.array([]), rng=_rng()))


def test_sign_flip_p_beyond_the_exact_range_is_monte_carlo_with_the_correction():
    d = np.linspace(0.1, 1.0, 40)  # every flip but the identity has a smaller mean
    assert P.sign_flip_p(d, rng=_rng()) == 1 / (P.N_FLIPS + 1)
    null = np.tile([1.0, -1.0], 20)  # observed mean 0: about half the flips reach it
    p = P.sign_flip_p(null, rng=np.random.default_rng(3))
    assert 0.5 < p < 0.65
    assert p == P.sign_flip_p(null, rng=np.random.default_rng(3))
    assert p != P.sign_flip_p(null, rng=np.random.default_rng(4))


def test_claim_p_value_is_exact_for_four_images():
    f = C.consensus_alignment_claim(_alignment_table({"auc": np.full(4, 0.05)}), rng=_rng(),
                                    metric_names=("auc",))
    assert f.p_value == 1 / 16 and f.n == 4 and f.seeds == 1
    assert "sign-flip" in f.test and "intersection-union" in f.test


def test_claim_of_several_comparisons_takes_the_largest_p():
    t = _alignment_table({"auc": np.full(4, 0.05),
                          "average_precision": 0.01 * np.array([1.0, -1.0, 2.0, 3.0])})
    f = C.consensus_alignment_claim(t, rng=_rng(), metric_names=("auc", "average_precision"))
    assert f.p_value == pytest.approx(3 / 16)


def test_per_image_margin_of_a_median_is_the_median_columns():
    x = np.array([[1.0, 0.0, 0.5, 2.0], [2.0, 0.2, 0.4, 3.0]])
    block = P.Block("b", x, lambda mu: mu[..., 0] - np.median(mu[..., 1:], axis=-1))
    assert P.per_image_margins(block) == pytest.approx(x[:, 0] - x[:, 2])


# -- seeds -----------------------------------------------------------------------------------


def _two_seeds() -> pd.DataFrame:
    return pd.concat([_alignment_table({"auc": np.full(6, 0.1)}, seed=0),
                      _alignment_table({"auc": np.full(10, 0.3)}, seed=1)], ignore_index=True)


def test_a_claim_over_two_seeds_counts_them_and_gives_each_seeds_estimate():
    f = C.consensus_alignment_claim(_two_seeds(), rng=_rng(), metric_names=("auc",))
    assert f.seeds == 2 and f.n == 16
    assert f.estimate == pytest.approx((6 * 0.1 + 10 * 0.3) / 16)
    assert "per seed: 0 +0.100, 1 +0.300 (spread +0.100..+0.300)" in f.detail
    # each seed's margin is constant: resampling within the seeds cannot move the mean
    assert f.ci_low == pytest.approx(f.estimate) and f.ci_high == pytest.approx(f.estimate)


def test_bootstrap_never_mixes_seeds():
    x = np.r_[np.zeros(3), np.ones(5)][:, None]
    strata = [np.arange(3), np.arange(3, 8)]
    means = P.bootstrap_means(x, _rng(), 500, strata)
    assert np.allclose(means, 5 / 8)
    assert np.ptp(P.bootstrap_means(x, _rng(), 500)) > 0.3  # pooled resampling would move


def test_a_nan_drops_the_image_within_its_seed_only():
    t = _two_seeds()
    t.loc[(t["seed"] == 0) & (t["sample"] == "s0") & (t["source"] == "m1"), "value"] = math.nan
    f = C.consensus_alignment_claim(t, rng=_rng(), metric_names=("auc",))
    assert f.n == 15 and f.seeds == 2  # seed 1's s0 is kept


def test_same_sample_names_in_two_seeds_are_different_images():
    wide = P.wide_table(_two_seeds(), "auc")
    assert wide.index.names == ["seed", "sample"] and len(wide) == 16


def test_a_missing_seed_is_an_error():
    t = _two_seeds()
    t.loc[0, "seed"] = math.nan
    with pytest.raises(ValueError, match="seed column has missing values"):
        C.consensus_alignment_claim(t, rng=_rng(), metric_names=("auc",))


def test_finding_keys_are_the_issues():
    f = C.consensus_alignment_claim(_two_seeds(), rng=_rng(), metric_names=("auc",))
    assert tuple(f.as_dict()) == C.FINDING_KEYS
    assert set(C.FINDING_KEYS) == {"claim", "metric", "estimate", "ci_low", "ci_high", "n",
                                   "seeds", "test", "p_value", "verdict", "rule", "threshold",
                                   "detail"}


# -- experiments/claims.py decides once over the stacked seeds, like the report -----------------


def _experiment():
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("claims_experiment_seeds",
                                                  root / "experiments" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiment_decides_each_claim_once_over_all_seeds():
    experiment = _experiment()
    runs = {}
    for seed, margin in ((0, 0.1), (1, 0.3)):
        committee = _alignment_table({m: np.full(8, margin) + np.tile([0.01, -0.01], 4)
                                      for m in ("auc", "average_precision", "mask_correlation")})
        members = pd.DataFrame({"member": ["a", "b", "c", "d", "e"],
                                "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9 - seed / 10],
                                "consensus_score": [0.1, 0.2, 0.3, 0.4, 0.5]})
        runs[seed] = {"committee": committee, "members": members}
    found = dict(experiment.decide(runs, seed=0))
    assert set(found) == {"2a", "2b accuracy", "2b localisation"}
    stacked = pd.concat([r["committee"].assign(seed=s) for s, r in runs.items()],
                        ignore_index=True)
    report = next(f for f in findings(None, {"committee_metrics": stacked})
                  if f.claim.startswith("The consensus aligns"))
    assert json.dumps(found["2a"].as_dict()) == json.dumps(report.as_dict())
    assert found["2a"].seeds == 2 and found["2a"].n == 16
    assert "per seed: 0 +0.100, 1 +0.300" in found["2a"].detail
    assert found["2b accuracy"].n == 10  # the members of both seeds, named apart
    assert found["2b localisation"].verdict == "not measured"  # no localisation column


def _seeded(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as two seeds: seed 1 a copy of seed 0 with the same sample names."""
    return pd.concat([table.assign(seed=0), table.assign(seed=1)], ignore_index=True)


def _averaging_seeds() -> pd.DataFrame:
    rows = [{"sample": f"s{i}", "source": src, "method": "saliency",
             "metric": "mask_correlation", "value": v + 0.01 * i}
            for i in range(6) for src, v in (("m0", 0.1), ("m1", 0.2), ("ens-avg", 0.4))]
    return _seeded(pd.DataFrame(rows))


SEEDED_CLAIMS = {
    "consensus alignment": lambda: C.consensus_alignment_claim(
        _seeded(_alignment_table({"auc": np.linspace(0.05, 0.1, 6)})), rng=_rng(),
        metric_names=("auc",)),
    "cnn": lambda: C.cnn_claim(_seeded(pd.DataFrame(
        [{"sample": f"s{i}", "source": s, "method": m, "metric": "relevance_mass",
          "value": v + 0.01 * i}
         for i in range(6) for s, m, v in (("cnn", "cnn", 0.5), ("m0", "a", 0.2),
                                          ("m0", "b", 0.3))])), rng=_rng(),
        beat_best=("relevance_mass",), beat_median=()),
    "averaging": lambda: C.averaging_claim(_averaging_seeds(), rng=_rng()),
    "averaging best member": lambda: C.averaging_best_member_claim(
        _averaging_seeds(), rng=_rng(), metric_names=("mask_correlation",)),
}


@pytest.mark.parametrize("decide", list(SEEDED_CLAIMS.values()), ids=list(SEEDED_CLAIMS))
def test_every_paired_claim_is_decided_over_the_seeds(decide):
    f = decide()
    assert f.seeds == 2 and f.n == 12 and "per seed: 0 " in f.detail
