"""``concilium audit RUN``: what the ensembles reveal, as tables under ``RUN/results/``.

Per-class quality of E* (``per_class``), per-class metric means (``per_class_metrics``), bias
on a non-evidence region (``bias``), the attribute cards of a multitask member (``attributes``),
and on request the anonymisation study
(``anonymisation``) and the CNN ensembler's method-subset study (``subsets``). The work is done
by :func:`concilium.jobs.audit.run_audit`; the flags are the fields of
:class:`concilium.jobs.audit.AuditOptions` (help text from their descriptions).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from concilium.cli.app import app
from concilium.cli.options import given_options, model_flags
from concilium.cli.paths import RUN, folder_of
from concilium.jobs.audit import AuditOptions, run_audit


def audit_command(run: Path, **flags: Any) -> None:
    """Per-class quality, bias and anonymisation audits of a run."""
    from rich.console import Console

    from concilium._progress import heartbeat

    run = folder_of(run, RUN)
    options = given_options(flags, AuditOptions, what="the audit")
    with heartbeat("audit"):
        tables = run_audit(run, options)
    console = Console()
    for name, table in tables.items():
        flagged = int(table["flagged"].sum()) if "flagged" in table else None
        note = f", {flagged} flagged" if flagged is not None else ""
        console.print(f"wrote {run / 'results' / name}.parquet ({len(table)} rows{note})")
    if "bias" in tables:
        flagged = tables["bias"][tables["bias"].flagged]
        for row in flagged.to_dict("records"):
            console.print(f"  bias: {row['source']}/{row['method']} class {row['class']!r} puts "
                          f"{row['share']:.0%} of its mass on {row['region']} "
                          f"({row['enrichment']:.1f}x uniform)")


# The flags come from AuditOptions: one typer parameter per field (the command takes them as
# **flags, and typer reads this signature).
audit_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="Run directory (explained; per-class "
                                                       "quality needs --kind cnn first).")),
    *model_flags({"audit": AuditOptions}),
])
app.command("audit")(audit_command)
