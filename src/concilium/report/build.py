"""Build every registered section of a report (:data:`~concilium.report.registry.SECTIONS`,
filled by :mod:`~concilium.report.sections` and :mod:`~concilium.report.overview`)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from concilium.metrics.claims import Finding
from concilium.metrics.recommend import Recommendation
from concilium.report import overview as _overview  # noqa: F401  (registers its sections)
from concilium.report import sections as _sections  # noqa: F401  (registers its sections)
from concilium.report.context import Context, build_context
from concilium.report.data import ReportData
from concilium.report.registry import SECTIONS
from concilium.report.view import Section


@dataclass
class Report:
    """The built report: its sections and the shared numbers behind them."""

    sections: list[Section]
    context: Context

    @property
    def stats(self) -> pd.DataFrame | None:
        """Per-explanation statistics (``None`` without metrics)."""
        return self.context.stats

    @property
    def findings(self) -> list[Finding]:
        """The headline findings."""
        return self.context.findings

    @property
    def recommendation(self) -> Recommendation | None:
        """The ranked explanations (``None`` without metrics)."""
        return self.context.recommendation


def build_sections(data: ReportData) -> Report:
    """Every registered section in report order, each table named ``<section id>-<k>`` (its
    CSV download's file name)."""
    ctx = build_context(data)
    sections = []
    for spec in SECTIONS.specs():
        section = spec.build(data, ctx)
        for k, table in enumerate(section.tables, start=1):
            table.name = table.name or f"{section.id}-{k}"
        sections.append(section)
    return Report(sections, ctx)
