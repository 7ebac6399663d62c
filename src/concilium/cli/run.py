"""``concilium run EXPERIMENT.toml [--dry-run] [--out RUN]``: the whole pipeline from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from concilium.cli.app import app
from concilium.cli.options import ADDRESS_HELP, ENGINE_HELP, WORKERS_HELP


@app.command("run")
def run_command(
    experiment: Annotated[Path, typer.Argument(help="The experiment file (see examples/).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: runs/<file stem>).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and its estimated cost; do nothing.")
    ] = False,
    engine: Annotated[
        str | None, typer.Option("--engine", help=ENGINE_HELP + " Overrides the file's engine.")
    ] = None,
    address: Annotated[str | None, typer.Option("--address", help=ADDRESS_HELP)] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help=WORKERS_HELP)] = None,
) -> None:
    """Data -> members -> explanations -> ensembles -> metrics -> audits -> report, each stage
    cached: a re-run redoes only what changed."""
    from concilium.pipeline import format_plan, load_config, plan, run

    experiment, out = _experiment_file(experiment, out)
    given = {k: v for k, v in (("engine", engine), ("address", address), ("workers", workers))
             if v is not None}
    try:
        config = load_config(experiment)  # validated before any work
        if given:
            config = config.model_copy(update=given)  # the engine is checked when made
    except ValueError as err:
        # printed plainly: the "[section]" prefixes must not be read as rich markup
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    run_dir = out or Path("runs") / experiment.stem
    if dry_run:
        typer.echo(f"plan for {run_dir}:")
        typer.echo(format_plan(plan(config, run_dir)))
        return
    run(config, run_dir)
    typer.echo(f"report: {run_dir / 'report.html'}")


def _experiment_file(path: Path, out: Path | None) -> tuple[Path, Path | None]:
    """The experiment file to read, and the run directory, when ``path`` is a folder: a run
    directory re-runs its own recorded ``experiment.json`` there; a folder holding exactly one
    ``.toml`` file runs that file."""
    if not path.is_dir():
        return path, out
    if (path / "experiment.json").is_file():
        return path / "experiment.json", out or path
    tomls = sorted(path.glob("*.toml"))
    if len(tomls) == 1:
        return tomls[0], out
    listed = ", ".join(t.name for t in tomls[:8]) or "none"
    raise FileNotFoundError(
        f"{path} is a folder; pass an experiment file (its .toml files: {listed}), or a run "
        "directory holding experiment.json"
    )
