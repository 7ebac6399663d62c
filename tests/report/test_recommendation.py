"""The report opens with the recommendation (same rule and ranking as summary.json), folds away
the metrics that do not inform with the reason, and every table downloads as its CSV."""

from __future__ import annotations

import base64
import html as html_lib
import io
import re

import pandas as pd
import pytest
from report_helpers import make_report_data, section_html, table_rows

from concilium.metrics.informative import RULE as INFORMATIVE_RULE
from concilium.metrics.recommend import RULE, recommend
from concilium.report import SECTIONS, render_html
from concilium.report.context import recommendation_table
from concilium.report.registry import SectionRegistry
from concilium.report.summary import explanation_stats
from concilium.report.view import Section


def _constant_sparseness():
    data = make_report_data()
    m = data.metrics
    data.metrics = m.assign(value=m["value"].where(m["metric"] != "sparseness", 0.25))
    return data


def test_the_report_opens_with_the_recommendation(saved_report):
    _, html, summary = saved_report
    assert list(SECTIONS)[0] == "recommendation"
    first = re.search(r'<section id="([^"]+)">', html).group(1)
    assert first == "recommendation"
    data = make_report_data()
    expected = recommend(recommendation_table(explanation_stats(data.metrics), data.meta))
    got = summary["recommendation"]
    assert got["rule"] == RULE and got["front"] == expected.front
    assert [r["explanation"] for r in got["ranking"]] == expected.ranking["explanation"].tolist()
    part = html_lib.unescape(section_html(html, "recommendation"))
    assert RULE in part
    short = table_rows(section_html(html, "recommendation"))[0]
    assert [row[1] for row in short] == expected.ranking["explanation"].head(5).tolist()
    top = expected.ranking.iloc[0]
    fam = expected.families[0]
    assert short[0][3] == (f"{top[fam]:.2f} [{top[f'{fam}_low']:.2f}, "
                           f"{top[f'{fam}_high']:.2f}]")


def test_a_metric_without_spread_is_folded_away_with_the_reason():
    html, summary = render_html(_constant_sparseness())
    assert summary["uninformative_metrics"]["rule"] == INFORMATIVE_RULE
    assert summary["uninformative_metrics"]["metrics"]["sparseness"] == \
        "no spread: every explanation scores 0.25"
    part = html_lib.unescape(section_html(html, "metrics"))
    tables = dict(re.findall(r'<details class="table"><summary>([^<(]+?) \(\d+ rows\)</summary>'
                             r'.*?<thead>(.*?)</thead>', part, flags=re.S))
    assert set(tables) == {"localisation", "faithfulness", "metrics that do not inform"}
    assert "sparseness" in tables["metrics that do not inform"]
    assert not any("sparseness" in head for name, head in tables.items()
                   if name != "metrics that do not inform")
    assert "sparseness: no spread: every explanation scores 0.25." in part
    assert re.search(r"metrics do not inform on this run and are folded away: [^<]*sparseness",
                     part)
    assert "sparseness" not in summary["recommendation"]["ranking"][0]


def _csv_links(fragment: str) -> list[pd.DataFrame]:
    uris = re.findall(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', fragment)
    return [pd.read_csv(io.StringIO(base64.b64decode(u).decode("utf-8"))) for u in uris]


def test_every_table_downloads_as_csv(saved_report):
    _, html, _ = saved_report
    for section in SECTIONS:
        part = section_html(html, section)
        assert part.count("<table>") == len(_csv_links(part)), section
    data = make_report_data()
    (bias_csv,) = _csv_links(section_html(html, "bias"))
    pd.testing.assert_frame_equal(bias_csv, data.tables["bias"], check_dtype=False)
    stats = explanation_stats(data.metrics)
    frames = _csv_links(section_html(html, "metrics"))
    both = pd.concat(frames, ignore_index=True)
    assert len(both) == len(stats)  # every (explanation, metric) once, over the family tables
    assert set(zip(both["explanation"], both["metric"], strict=True)) == \
        set(zip(stats["explanation"], stats["metric"], strict=True))


def test_tables_are_folded_except_the_short_list(saved_report):
    _, html, _ = saved_report
    n_tables = html.count("<table>")
    assert html.count('<details class="table">') == n_tables - 1
    assert '<details class="table">' not in section_html(html, "recommendation").split(
        "<table>")[0]


def test_section_registry_order_and_errors():
    reg = SectionRegistry()

    def build(data, ctx):
        return Section("x", "X")

    reg.register("a", "A")(build)
    reg.register("c", "C")(build)
    reg.register("b", "B", after="a")(build)
    reg.register("z", "Z", first=True)(build)
    assert list(reg.items()) == [("z", "Z"), ("a", "A"), ("b", "B"), ("c", "C")]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "again")(build)
    with pytest.raises(ValueError, match="known: z, a, b, c"):
        reg.register("d", "D", after="nope")(build)
