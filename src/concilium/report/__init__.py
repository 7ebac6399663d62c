"""The self-contained HTML report of a run (``RUN/report.html``) and its machine summary
(``RUN/summary.json``).

Example:
    >>> from concilium.report import write_report
    >>> write_report("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from concilium.metrics.claims import Finding
from concilium.report.data import ReportData
from concilium.report.load import DEFAULT_GALLERY_METRICS, load_report_data
from concilium.report.render import render_html, save
from concilium.report.sections import SECTIONS
from concilium.report.summary import findings

__all__ = [
    "SECTIONS",
    "Finding",
    "ReportData",
    "findings",
    "load_report_data",
    "render_html",
    "save",
    "write_report",
]


def write_report(
    run_dir: str | Path,
    *,
    title: str | None = None,
    gallery_images: int = 4,
    gallery_members: int = 3,
    gallery_metrics: Sequence[str] = DEFAULT_GALLERY_METRICS,
    members_view: Literal["pooled", "each", "both"] = "pooled",
) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/summary.json`` from what the run holds.

    The report only reads: the jobs (``concilium explain``, ``ensemble``, ``evaluate``,
    ``audit``) write what it shows. Sections whose inputs are missing (no metrics yet, no
    attribute cards, no GANMEX) say so in one line, with the command that writes them. See
    :func:`concilium.report.load.load_report_data` for the arguments.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: a bad argument (e.g. ``gallery_images < 0``).
    """
    for name, value in (("gallery_images", gallery_images), ("gallery_members", gallery_members)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0; got {value!r}")
    if members_view not in ("pooled", "each", "both"):
        raise ValueError(f"members_view must be one of pooled, each, both; got {members_view!r}")
    data = load_report_data(
        run_dir, title=title, gallery_images=gallery_images, gallery_members=gallery_members,
        gallery_metrics=tuple(gallery_metrics), members_view=members_view,
    )
    return save(data, run_dir)
