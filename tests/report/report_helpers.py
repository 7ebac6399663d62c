"""Report test helpers: tables with the documented column names, built by hand."""

from __future__ import annotations

import html as html_lib
import re

import numpy as np
import pandas as pd

from concilium.report.data import AttributeCard, AttributeFinding, GalleryItem, ReportData
from concilium.report.figures import GalleryCell
from concilium.report.view import fmt

EVIL = "<script>alert(1)</script>"
EVIL_ATTRIBUTE = "<i>beak</i>_long"
"""An attribute name with markup: the report must show it as text."""
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
        attributes=[AttributeFinding(EVIL_ATTRIBUTE, 0.8, rng.standard_normal((16, 16)), "beak",
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
            "per_class": pd.DataFrame({"label": [0, 1], "class": ["plain", EVIL], "n": [5, 1],
                                       "dice": [0.7, 0.2], "iou": [0.6, 0.1],
                                       "flag_threshold": [0.5, 0.5],
                                       "flagged": [False, True]}),
            "bias": pd.DataFrame({"source": ["m0", "m0"], "method": ["saliency", "saliency"],
                                  "label": [0, 1], "class": ["plain", EVIL], "n": [5, 1],
                                  "share": [0.4, 0.05], "area": [0.1, 0.1],
                                  "enrichment": [4.0, 0.5], "flagged": [True, False],
                                  "region": ["watermark", "watermark"]}),
            "subsets": pd.DataFrame({"subset": ["gradcam+saliency", "gradcam", "saliency"],
                                     "k": [2, 1, 1], "left_out": ["", "saliency", "gradcam"],
                                     "test_dice": [0.61, 0.55, 0.42],
                                     "test_iou": [0.5, 0.4, 0.3], "val_dice": [0.6, 0.5, 0.4],
                                     "epochs": [3, 3, 3], "dice_drop": [0.0, 0.06, 0.19]}),
            "anonymisation": pd.DataFrame({"mode": ["original", "product", "map"],
                                           "val_accuracy": [0.9, 0.8, 0.6],
                                           "test_accuracy": [0.91, 0.77, 0.58],
                                           "n_train": [20, 20, 20], "n_test": [8, 8, 8]}),
            "one_vs_one": pd.DataFrame({"baseline": ["zero", "ganmex"],
                                        "source": ["saliency", "saliency"], "n": [8, 8],
                                        "relevance_mass": [0.31, 0.47],
                                        "relevance_mass_sem": [0.02, 0.03]}),
        },
        gallery=[GalleryItem("s0", EVIL, image, mask, cells)],
        attribute_cards=[card],
    )


def section_html(html: str, section_id: str) -> str:
    """The HTML of one ``<section id=...>`` of the report."""
    start = html.index(f'<section id="{section_id}">')
    return html[start:html.index("</section>", start)]


def table_rows(fragment: str) -> list[list[list[str]]]:
    """Every table of an HTML fragment: its body rows as lists of unescaped cell texts (bold
    markup dropped)."""
    out = []
    for body in re.findall(r"<tbody>(.*?)</tbody>", fragment, flags=re.S):
        rows = []
        for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
            rows.append([html_lib.unescape(re.sub(r"</?b>", "", c)).strip() for c in cells])
        out.append(rows)
    return out


def formatted(frame: pd.DataFrame) -> list[list[str]]:
    """A table's rows as the report prints them (:func:`concilium.report.sections.fmt`)."""
    return [[fmt(v) for v in row] for row in frame.itertuples(index=False)]
