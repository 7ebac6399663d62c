"""One claim engine (review ensembling D4): the report's findings section and summary.json
show the same findings, decided by concilium.metrics.claims, with the issue's keys."""

from __future__ import annotations

import html as html_lib
import json

import pandas as pd
from report_helpers import make_metrics, make_report_data, section_html

from concilium.metrics.claims import FINDING_KEYS, Finding
from concilium.report import render_html
from concilium.report.render import _jsonable
from concilium.report.summary import findings


def test_report_and_summary_json_show_the_same_findings():
    data = make_report_data()
    data.metrics = pd.concat([make_metrics(0).assign(seed=0), make_metrics(1).assign(seed=1)],
                             ignore_index=True)
    html, summary = render_html(data)
    found = findings(data.metrics, data.tables, card=data.dataset)
    assert [tuple(d) for d in summary["findings"]] == [FINDING_KEYS] * len(found)
    assert summary["findings"] == json.loads(json.dumps(
        [_jsonable(f.as_dict()) for f in found]))
    assert any(f.seeds == 2 and f.test for f in found)  # decided over both seeds
    part = html_lib.unescape(section_html(html, "findings"))
    for f in found:
        assert f"{f.claim}: {f.verdict}." in part
        if f.verdict != "not measured":
            assert f"n = {f.n}, seeds = {f.seeds}, p = " in f.numbers()
            assert f.numbers() in part
        if f.test:
            assert f"Test: {f.test}." in part


def test_summary_json_findings_read_back_as_the_same_findings():
    data = make_report_data()
    _, summary = render_html(data)
    found = findings(data.metrics, data.tables, card=data.dataset)
    back = [Finding.from_dict(d) for d in summary["findings"]]
    assert [json.dumps(b.as_dict()) for b in back] == [json.dumps(f.as_dict()) for f in found]
    assert [b.numbers() for b in back] == [f.numbers() for f in found]  # what `demo` prints
