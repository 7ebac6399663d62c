"""Render the built sections as one self-contained HTML page (Jinja2, autoescaped) and the same
numbers as ``summary.json``; :func:`save` writes both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from concilium import __version__
from concilium._util import atomic_write, atomic_write_text
from concilium.metrics.informative import RULE as INFORMATIVE_RULE
from concilium.metrics.tables import paper_table
from concilium.report.build import Report, build_sections
from concilium.report.data import ReportData
from concilium.report.summary import best_per_metric


def summary_of(data: ReportData, report: Report) -> dict:
    """The machine summary (``summary.json``) of a built report; strict JSON (no NaN)."""
    stats = report.stats
    return {
        "title": data.title,
        "concilium_version": __version__,
        "dataset": _jsonable(data.dataset),
        "members": [] if data.members is None else _jsonable(data.members.to_dict("records")),
        "explanations": [] if stats is None else _jsonable(stats.to_dict("records")),
        "best_per_metric": {} if stats is None else best_per_metric(stats, data.meta),
        "findings": [_jsonable(f.as_dict()) for f in report.findings],
        "recommendation": None if report.recommendation is None
        else _jsonable(report.recommendation.as_dict()),
        "uninformative_metrics": {"rule": INFORMATIVE_RULE,
                                  "metrics": report.context.uninformative},
        "paper_table": [] if data.metrics is None
        else _jsonable(paper_table(data.metrics).to_dict("records")),
        "missing_sections": {s.id: s.missing for s in report.sections if s.missing},
    }


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    return str(obj)


def render_html(data: ReportData) -> tuple[str, dict]:
    """Render the report page and its machine summary.

    Returns:
        ``(html, summary)``.
    """
    report = build_sections(data)
    env = Environment(
        loader=PackageLoader("concilium.report", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    )
    html = env.get_template("report.html").render(
        title=data.title, sections=report.sections, version=__version__,
    )
    return html, summary_of(data, report)


def save(data: ReportData, out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``summary.json`` into ``out_dir``; returns the report's path."""
    out = Path(out_dir)
    html, summary = render_html(data)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    path = out / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
