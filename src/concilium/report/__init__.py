"""The self-contained HTML report of a run (``RUN/report.html``) and its machine summary
(``RUN/summary.json``).

Example:
    >>> from concilium.report import write_report
    >>> write_report("runs/demo", {"gallery_images": 2})  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from concilium.metrics.claims import Finding
from concilium.report.data import ReportData
from concilium.report.load import load_report_data
from concilium.report.options import ReportOptions
from concilium.report.registry import SECTIONS
from concilium.report.render import render_html, save
from concilium.report.summary import findings

__all__ = [
    "SECTIONS",
    "Finding",
    "ReportData",
    "ReportOptions",
    "findings",
    "load_report_data",
    "render_html",
    "save",
    "write_report",
]


def write_report(
    run_dir: str | Path, options: ReportOptions | Mapping[str, Any] | None = None
) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/summary.json`` from what the run holds.

    The report only reads: the jobs (``concilium explain``, ``ensemble``, ``evaluate``,
    ``audit``) write what it shows. Sections whose inputs are missing (no metrics yet, no
    attribute cards, no GANMEX) say so in one line, with the command that writes them.

    Args:
        run_dir: the run directory.
        options: :class:`ReportOptions` or a mapping of its fields (default: its defaults).

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: an unknown option (naming the valid ones) or a bad value (e.g.
            ``gallery_images < 0``).
    """
    return save(load_report_data(run_dir, options), run_dir)
