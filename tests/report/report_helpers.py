"""Report test helpers: tables with the documented column names, built by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from concilium.report.data import AttributeCard, AttributeFinding, GalleryItem, ReportData
from concilium.report.figures import GalleryCell

EVIL = "<script>alert(1)</script>"
METHODS = ("saliency", "gradcam")
SOURCES = ("m0", "m1", "m2", "ens-avg", "ens-logit", "consensus")


def make_metrics(seed: int = 0, n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n):
        for src in SOURCES:
            for method in METHODS:
                for metric in ("relevance_mass", "mask_correlation", "deletion", "sparseness"):
                    rows.append({"sample": f"s{s}", "label": s % 2, "source": src,
                                 "method": method, "metric": metric, "value": rng.random(),
                                 "params_hash": "abc"})
        for metric in ("relevance_mass", "deletion"):
            rows.append({"sample": f"s{s}", "label": s % 2, "source": "cnn", "method": "cnn",
                         "metric": metric, "value": rng.random(), "params_hash": "abc"})
    return pd.DataFrame(rows)


META = pd.DataFrame({
    "metric": ["relevance_mass", "mask_correlation", "deletion", "sparseness"],
    "category": ["localisation", "localisation", "faithfulness", "complexity"],
    "higher_is_better": [True, True, False, True],
})



def make_report_data() -> ReportData:
    rng = np.random.default_rng(1)
    image = rng.random((16, 16, 3))
    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    cells = [GalleryCell(m, s, rng.standard_normal((16, 16)), "rm 0.50")
             for m in METHODS for s in ("m0", "m1", "ens-avg")]
    card = AttributeCard(
        sample_id="s0", predicted=EVIL, probability=0.9, image=image,
        class_map=rng.standard_normal((16, 16)),
        attributes=[AttributeFinding("beak_long", 0.8, rng.standard_normal((16, 16)), "beak",
                                     0.6, 0.3)],
    )
    return ReportData(
        title="test report",
        dataset={"kind": "synthetic", "class_names": ["plain", EVIL], "size": 16,
                 "rare_class_name": EVIL, "watermark_class_name": "plain"},
        class_counts=pd.DataFrame({"train": [5, 1], "test": [2, 1]}, index=["plain", EVIL]),
        members=pd.DataFrame({"member_id": ["m0", "m1", "m2"], "arch": ["small-cnn"] * 3,
                              "val_accuracy": [0.9, 0.8, 0.95]}),
        metrics=make_metrics(),
        meta=META.copy(),
        tables={
            "consensus": pd.DataFrame({"member": ["m0", "m1", "m2"],
                                       "consensus_score": [0.5, 0.4, 0.7],
                                       "accuracy": [0.9, 0.8, 0.95]}),
            "per_class": pd.DataFrame({"class": ["plain", EVIL], "dice": [0.7, 0.2],
                                       "flagged": [False, True], "threshold": [0.5, 0.5]}),
            "bias": pd.DataFrame({"class": ["plain", EVIL], "mass_share": [0.4, 0.05],
                                  "flagged": [True, False]}),
        },
        gallery=[GalleryItem("s0", EVIL, image, mask, cells)],
        attribute_cards=[card],
    )
