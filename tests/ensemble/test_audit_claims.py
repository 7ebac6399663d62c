"""The rare-class claim decided on the per-class audit's bootstrap interval (review D5)."""

import numpy as np
import pandas as pd
import pytest
import torch

from concilium.ensemble.audit import per_class_quality
from concilium.jobs.audit import run_audit
from concilium.metrics.claims import rare_class_claim, watermark_claim
from concilium.store import ExplanationStore, Run


def _table(low, high, n=20, reason="interval"):
    return pd.DataFrame({"label": [0, 1], "class": ["plain", "rare"], "n": [40, n],
                         "dice": [0.8, (low + high) / 2], "dice_low": [0.75, low],
                         "dice_high": [0.85, high], "flag_threshold": 0.6,
                         "flagged": [False, high < 0.6], "reason": ["interval", reason]})


@pytest.mark.parametrize(("low", "high", "verdict"), [
    (0.2, 0.5, "held"), (0.65, 0.9, "not held"), (0.3, 0.7, "inconclusive")])
def test_rare_class_claim_uses_the_interval(low, high, verdict):
    f = rare_class_claim(_table(low, high), target="rare")
    assert f.verdict == verdict, f
    assert (f.ci_low, f.ci_high) == (low, high) and f.test


def test_rare_class_claim_too_few_images_is_inconclusive():
    f = rare_class_claim(_table(0.1, 0.2, n=3, reason="fewer than 10 images: not flagged"),
                         target="rare")
    assert f.verdict == "inconclusive" and "fewer than 10" in f.detail


def test_rare_class_claim_on_the_audit_table():
    """End to end: the audit's table of a class whose E* misses the mask holds the claim."""
    labels = torch.arange(40) % 2
    masks = torch.zeros(40, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    probs = masks.float()
    probs[labels == 1] = (~masks[labels == 1]).float()
    probs[::4, 0, 0] = 1.0  # some spread in class 0's Dice
    table = per_class_quality(probs, masks, labels, class_names=["plain", "rare"])
    assert rare_class_claim(table, target="rare").verdict == "held"
    assert rare_class_claim(table, target="plain").verdict == "not held"


def test_watermark_claim_skips_logit_sources():
    """Review D6(b): cnn:logit's |logit| mass sits on confident background; its flags must not
    count for or against the watermark claim."""
    rows = [{"source": f"m{i}", "method": "saliency", "label": 1, "class": "striped",
             "flagged": True} for i in range(8)]
    rows += [{"source": "cnn:logit", "method": m, "label": 1, "class": "striped",
              "flagged": False} for m in ("a", "b", "c", "d", "e", "f", "g", "h", "i")]
    f = watermark_claim(pd.DataFrame(rows), target="striped", rng=np.random.default_rng(0))
    assert f.verdict == "held" and f.n == 8, f


def test_bias_audit_skips_logit_sources_by_default(tiny_run):
    data = Run.open(tiny_run).data
    store = ExplanationStore(tiny_run)
    entry = store.entry("cnn:logit", "saliency", {"output": "logit"}, data.ids, shape=(32, 32),
                        chunk_size=16, meta={"dataset_fingerprint": data.fingerprint()})
    entry.write(0, torch.randn(len(data.ids), 32, 32))
    bias = run_audit(tiny_run, {"region": "outside"})["bias"]
    assert "cnn:logit" not in set(bias.source) and {"m0", "m1"} <= set(bias.source)
    bias = run_audit(tiny_run, {"region": "outside", "bias_sources": ["cnn:logit"]})["bias"]
    assert set(bias.source) == {"cnn:logit"}


def test_watermark_claim_p_value_is_the_exact_binomial_tail():
    import numpy as np
    import pandas as pd

    from concilium.metrics.claims import watermark_claim

    bias = pd.DataFrame({"source": ["m0"] * 6, "method": list("abcdef"), "label": 1,
                         "class": "striped", "flagged": [True] * 5 + [False]})
    f = watermark_claim(bias, target="striped", rng=np.random.default_rng(0))
    assert f.n == 6 and f.p_value == (1 + 6) / 2**6  # P(X >= 5), X ~ Binomial(6, 1/2)
