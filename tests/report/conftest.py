"""Report fixtures: a ReportData built by hand with the documented column names (no run needed)."""

from __future__ import annotations

import pytest
from report_helpers import make_report_data

from concilium.report.data import ReportData


@pytest.fixture
def report_data() -> ReportData:
    return make_report_data()


@pytest.fixture(scope="session")
def saved_report(tmp_path_factory):
    """The hand-built report rendered once per session: ``(report.html path, html, summary)``."""
    import json

    from concilium.report.render import save

    path = save(make_report_data(), tmp_path_factory.mktemp("run"))
    return path, path.read_text(), json.loads((path.parent / "summary.json").read_text())
