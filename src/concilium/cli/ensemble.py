"""``concilium ensemble RUN --kind KIND [options]``: ensemble a run's stored maps into new store
sources.

The work is done by :func:`concilium.jobs.ensemble.run_ensemble`; the kinds are the entries of
:data:`concilium.jobs.ensemble.ENSEMBLERS` and the flags are the fields of their options models
(help text from the fields' descriptions), so a new kind needs no change here. A flag of
another kind is an error naming the chosen kind's flags.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from concilium.cli.app import app
from concilium.cli.options import flag, given_options, model_flags
from concilium.cli.paths import RUN, folder_of
from concilium.jobs.ensemble import ENSEMBLERS, run_ensemble


def ensemble_command(run: Path, kind: str, **flags: Any) -> None:
    """Ensemble a run's explanations and store the result as a new source."""
    from rich.console import Console

    from concilium._progress import heartbeat

    options = given_options(flags, ENSEMBLERS.get(kind).options, what=f"--kind {kind}")
    run = folder_of(run, RUN)
    with heartbeat(f"ensemble {kind}"):
        result = run_ensemble(run, kind, options)
    console = Console()
    for entry in result.entries:
        console.print(f"wrote [bold]{entry.source}[/]/{entry.method}/{entry.params_hash} "
                      f"({entry.n} maps)")
    for name in result.tables:
        console.print(f"wrote {run / 'results' / name}.parquet")


def _epilog() -> str:
    lines = []
    for name, spec in ENSEMBLERS.items():
        own = [flag(k) for k in spec.options.model_fields if k not in ("methods", "source",
                                                                       "device")]
        lines.append(f"[bold]{name}[/]: {spec.summary} Options: {', '.join(own) or '-'}.")
    return ("Kinds (every kind also takes --methods, --source and --device):\n\n"
            + "\n\n".join(lines))


# The flags come from the options models: one typer parameter per field (the command takes them
# as **flags, and typer reads this signature).
ensemble_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="Run directory made by `concilium "
                                                       "explain`.")),
    inspect.Parameter("kind", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option(..., "--kind", help="The ensembler: "
                                           f"{', '.join(ENSEMBLERS.names())}.")),
    *model_flags({name: spec.options for name, spec in ENSEMBLERS.items()}),
])
app.command("ensemble", epilog=_epilog())(ensemble_command)
