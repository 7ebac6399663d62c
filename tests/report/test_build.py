"""The HTML report: every section present, missing inputs said in one line, strings escaped."""

from __future__ import annotations

import html as html_lib
import json
import re

import pandas as pd
import pytest
from report_helpers import EVIL, formatted, make_report_data, section_html, table_rows
from scipy import stats as sps

from concilium.metrics.tables import paper_table
from concilium.report import SECTIONS, ReportData, render_html
from concilium.report.sections import BAR_SECTIONS, MEMBER_COLUMNS
from concilium.report.summary import explanation_stats, family_scores, findings
from concilium.report.view import fmt


def test_every_section_heading_and_figures(saved_report):
    _, html, summary = saved_report
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in html
    assert summary["missing_sections"] == {}  # the hand-built data fills every section
    assert 'class="missing"' not in html
    # family intervals, forest plot, rank heat map, gallery, radar, scatter, five bar charts,
    # one attribute card
    assert html.count("data:image/png;base64,") == 3 + 1 + 1 + 1 + len(BAR_SECTIONS) + 1
    assert " ↑" in html and " ↓" in html
    assert not re.search(r"<(link|script)[^>]*(src|href)=\"?http", html)  # offline


@pytest.mark.parametrize("spec", BAR_SECTIONS, ids=lambda s: s.section)
def test_bar_sections_show_their_table(saved_report, spec):
    _, html, _ = saved_report
    table = make_report_data().tables[spec.table]
    part = section_html(html, spec.section)
    assert table_rows(part) == [formatted(table)]
    assert part.count("data:image/png;base64,") == 1
    if "flagged" in table.columns:
        flagged = sorted(str(c) for c in table.loc[table["flagged"], spec.label])
        assert f"Flagged ({len(flagged)}): {', '.join(flagged)}." in html_lib.unescape(part)


def test_metrics_and_paper_sections_show_the_statistics(saved_report):
    _, html, summary = saved_report
    data = make_report_data()
    stats = explanation_stats(data.metrics)
    shown = {}
    for rows in table_rows(section_html(html, "metrics")):
        for row in rows:
            shown.setdefault(row[0], []).extend(row[1:])
    hib = dict(zip(data.meta["metric"], data.meta["higher_is_better"], strict=True))
    for expl, group in stats.groupby("explanation"):
        expected = {f"{fmt(r.mean)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
                    for r in group.itertuples()}
        assert expected <= set(shown[expl])
    for metric, expl in summary["best_per_metric"].items():
        g = stats[stats["metric"] == metric]
        best = g.loc[g["mean"].idxmax() if hib[metric] else g["mean"].idxmin(), "explanation"]
        assert expl == best
    paper = paper_table(data.metrics)
    rows = table_rows(section_html(html, "paper"))[0]
    arrow = {True: " ↑", False: " ↓"}
    assert rows == [[str(r.method), f"{r.metric}{arrow[hib[r.metric]]}", fmt(r.ens_avg),
                     fmt(r.exp_avg), fmt(r.ens_logit), str(r.n_members)]
                    for r in paper.itertuples()]
    radar = table_rows(section_html(html, "radar"))[0]
    informs = stats[~stats["metric"].isin(summary["uninformative_metrics"]["metrics"])]
    assert radar == formatted(family_scores(informs, data.meta).dropna(how="all").reset_index())


def test_other_sections_show_their_inputs(saved_report):
    _, html, _ = saved_report
    data = make_report_data()
    consensus = data.tables["consensus"]
    part = section_html(html, "consensus")
    assert table_rows(part) == [formatted(consensus)]
    r = sps.pearsonr(consensus["consensus_score"], consensus["accuracy"])[0]
    assert f"(r = {fmt(r)}, 95% interval" in part  # claim 2b, decided by metrics.claims
    assert part.count("<img") == 1  # the scatter plots
    assert table_rows(section_html(html, "models")) == [formatted(
        data.members[[c for c in MEMBER_COLUMNS if c in data.members.columns]])]
    counts = table_rows(section_html(html, "dataset"))[1]
    assert counts == formatted(data.class_counts.reset_index())
    card = data.attribute_cards[0]
    a = card.attributes[0]
    assert table_rows(section_html(html, "attributes")) == [[[
        card.sample_id, a.name, fmt(a.probability), a.part, fmt(a.mass), fmt(a.class_mass)]]]
    found = findings(data.metrics, data.tables, card=data.dataset)
    assert section_html(html, "findings").count("<li") == len(found)
    assert section_html(html, "gallery").count("data:image/png;base64,") == len(data.gallery)


def test_class_name_script_is_escaped(saved_report):
    _, html, _ = saved_report
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_missing_inputs_say_so_without_crashing():
    html, summary = render_html(ReportData(title="empty"))
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in html
    assert "No metrics table: run `concilium evaluate RUN`" in html
    assert "No consensus table: run `concilium ensemble RUN --kind consensus`" in html
    assert "No attribute cards: run `concilium audit RUN`" in html
    assert set(summary["missing_sections"]) == set(SECTIONS) - {"findings"}


def test_unexpected_table_columns_fall_back_to_a_table():
    data = ReportData(tables={"bias": pd.DataFrame({"odd": ["x"], "columns": [1.5]})})
    html, _ = render_html(data)
    part = section_html(html, "bias")
    assert "<th>odd</th>" in part and table_rows(part) == [[["x", "1.500"]]]
    assert "lacks the columns share, class" in part


def test_save_writes_strict_json(saved_report):
    path, _, _ = saved_report
    assert path.name == "report.html" and path.stat().st_size > 10_000
    text = (path.parent / "summary.json").read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert {"findings", "explanations", "best_per_metric", "paper_table"} <= set(summary)
    assert summary["dataset"]["class_names"][1] == EVIL
