"""``concilium report RUN``: write ``RUN/report.html`` and ``RUN/summary.json``.

The work is done by :func:`concilium.report.write_report`; the flags are the fields of
:class:`concilium.report.ReportOptions` (help text from their descriptions).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from concilium.cli.app import app
from concilium.cli.options import given_options, model_flags
from concilium.cli.paths import RUN, folder_of
from concilium.report import ReportOptions, write_report


def report_command(run_dir: Path, screenshot: Path | None = None, **flags: Any) -> None:
    """Write the self-contained HTML report of a run and its JSON summary (reads only; the
    attribute cards are written by `concilium audit`); with --screenshot, also a PNG of its
    first two screens at 1280 x 800 drawn by headless Chromium."""
    from rich.console import Console

    from concilium.report.screenshot import screenshot as take_screenshot

    options = given_options(flags, ReportOptions, what="the report")
    run_dir = folder_of(run_dir, RUN)
    if run_dir.is_dir() and not (run_dir / RUN.marker).is_file() and not any(
        run_dir.glob("results/*.parquet")
    ):
        raise FileNotFoundError(
            f"{run_dir} is not a run (no run.json, no results/); pass the --out of "
            "`concilium explain` or `concilium run`"
        )
    path = write_report(run_dir, options)
    Console().print(f"report: [bold]{path}[/]  summary: {path.parent / 'summary.json'}")
    if screenshot is not None:
        Console().print(f"screenshot: {take_screenshot(path, screenshot)}")


# The flags come from ReportOptions: one typer parameter per field (the command takes them as
# **flags, and typer reads this signature).
report_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="The run directory (the --out of a run).")),
    inspect.Parameter("screenshot", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                      default=typer.Option(None, help="Also save a PNG of the report's first "
                                           "two screens (1280 x 1600) drawn by headless "
                                           "Chromium.")),
    *model_flags({"report": ReportOptions}),
])
app.command("report")(report_command)
