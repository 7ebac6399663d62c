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


def report_command(run_dir: Path, **flags: Any) -> None:
    """Write the self-contained HTML report of a run and its JSON summary (reads only; the
    attribute cards are written by `concilium audit`)."""
    from rich.console import Console

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


# The flags come from ReportOptions: one typer parameter per field (the command takes them as
# **flags, and typer reads this signature).
report_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="The run directory (the --out of a run).")),
    *model_flags({"report": ReportOptions}),
])
app.command("report")(report_command)
