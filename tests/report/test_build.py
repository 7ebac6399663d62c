"""The HTML report: every section present, missing inputs said in one line, strings escaped."""

from __future__ import annotations

import json
import re

import pandas as pd
from report_helpers import EVIL

from concilium.report import SECTIONS, ReportData, render_html


def test_every_section_heading_and_figures(saved_report):
    _, html, summary = saved_report
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in html
    assert html.count("data:image/png;base64,") >= 5  # gallery, radar, scatter, 2 bars, card
    assert "<b>" in html  # best per metric in bold
    assert " ↑" in html and " ↓" in html
    assert summary["best_per_metric"]["deletion"]
    assert not re.search(r"<(link|script)[^>]*(src|href)=\"?http", html)  # offline


def test_class_name_script_is_escaped(saved_report):
    _, html, _ = saved_report
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_missing_inputs_say_so_without_crashing():
    html, summary = render_html(ReportData(title="empty"))
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in html
    assert "No metrics table" in html and "No consensus table" in html
    assert set(summary["missing_sections"]) >= {"gallery", "metrics", "consensus", "bias"}


def test_unexpected_table_columns_fall_back_to_a_table():
    data = ReportData(tables={"bias": pd.DataFrame({"odd": ["x"], "columns": [1.5]})})
    html, _ = render_html(data)
    assert "<th>odd</th>" in html and "1.500" in html


def test_save_writes_strict_json(saved_report):
    path, _, _ = saved_report
    assert path.name == "report.html" and path.stat().st_size > 10_000
    text = (path.parent / "summary.json").read_text()
    assert "NaN" not in text
    summary = json.loads(text)
    assert {"findings", "explanations", "best_per_metric", "paper_table"} <= set(summary)
    assert summary["dataset"]["class_names"][1] == EVIL
