"""The ensemble-size figure of claim 1 under the paper table."""

import pandas as pd
import pytest
from report_helpers import make_report_data

from concilium.report.context import build_context
from concilium.report.figures import ensemble_size_figure
from concilium.report.sections import section_paper


def _curves() -> pd.DataFrame:
    return pd.DataFrame([{"metric": metric, "method": method, "k": k, "mean": 0.1 * k,
                          "low": 0.1 * k - 0.05, "high": 0.1 * k + 0.05}
                         for metric in ("iou", "mask_correlation")
                         for method in ("saliency", "gradcam") for k in (1, 2, 3)])


def test_figure_is_an_image_and_names_missing_columns():
    assert ensemble_size_figure(_curves()).startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match=r"lacks columns \['high', 'low'\]"):
        ensemble_size_figure(_curves().drop(columns=["low", "high"]))


def test_paper_section_shows_the_curve_only_when_ens_avg_wrote_it():
    data = make_report_data()
    before = len(section_paper(data, build_context(data)).figures)
    data.tables["ensemble_size"] = _curves()
    s = section_paper(data, build_context(data))
    assert len(s.figures) == before + 1 and "algebraic" in s.figures[-1].caption
