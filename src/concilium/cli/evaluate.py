"""``concilium evaluate``: every selected metric for every stored explanation of a run, into the
tidy table ``RUN/results/metrics.parquet`` (+ ``.csv``), resumable, then a summary.

The work is in :mod:`concilium.jobs.evaluate` and :mod:`concilium.metrics.tables`; this module
only parses options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.table import Table

from concilium.cli.app import app
from concilium.cli.options import (
    ADDRESS_HELP,
    ENGINE_HELP,
    WORKERS_HELP,
    check_device,
    make_engine_from_flags,
)
from concilium.cli.paths import RUN, folder_of
from concilium.vocabulary import EXP_AVG, FAMILIES, IN_SAMPLE_MARK

DEFAULT_METRICS = "localisation,complexity"


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory (holds run.json and explanations.zarr)."),
    metrics: str = typer.Option(
        DEFAULT_METRICS,
        "--metrics",
        help=f"Comma-separated categories ({', '.join(FAMILIES)}), metric names, or 'all'.",
    ),
    params: Path | None = typer.Option(
        None, "--params", help="TOML file of metric parameters, one table per metric."
    ),
    mask: str = typer.Option(
        "masks", "--mask", help="Ground-truth mask set: 'masks' (object) or a named set."
    ),
    split: str = typer.Option(
        "test", "--split", help="Score the explained samples of this split: train, val, test or "
        "all (a run that explained one split is scored on it)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: the run's)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Perturbed copies per forward pass."
    ),
    seed: int = typer.Option(0, "--seed", help="Base seed of the stochastic metrics."),
    engine: str = typer.Option("inprocess", "--engine", help=ENGINE_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Compute metrics for every explanation in RUN and print mean and 95% CI per source."""
    from rich.console import Console

    from concilium._progress import progress_display
    from concilium.jobs.evaluate import evaluate_run, load_metric_params
    from concilium.metrics.registry import metrics_in
    from concilium.metrics.tables import summarise
    from concilium.store.results import ResultsTable

    console = Console()
    run = folder_of(run, RUN)
    names = metrics_in(metrics)
    if params is not None and not params.is_file():
        raise FileNotFoundError(f"--params {params} does not exist")
    metric_params = load_metric_params(params, names)
    if device is not None:
        check_device(device)
    runner = make_engine_from_flags(engine, address, workers)
    with progress_display(console=Console(stderr=True), unit="groups") as display:
        task = display.add_task("evaluating", total=None)
        report = evaluate_run(
            run,
            names,
            params=metric_params,
            mask=mask,
            split=split,  # type: ignore[arg-type]
            device=device,
            batch_size=batch_size,
            seed=seed,
            progress=lambda line: display.console.print(f"  {line}", markup=False),
            on_group=lambda done, total: display.update(task, completed=done, total=total),
            engine=runner,
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    for warning in report.in_sample:
        console.print(f"[bold red]warning:[/] {warning}")
    console.print(
        f"{len(report.computed)} groups computed, {len(report.already_done)} already in the table"
    )
    table = ResultsTable(run)
    summary = summarise(table.load())
    console.print(render_summary(summary))
    console.print(f"table: {table.parquet} (+ {table.csv.name})")


def render_summary(summary: pd.DataFrame) -> Any:
    """A ``rich.table.Table`` of the summary: one row per (metric, method, source), the best
    per metric in bold green, Exp-Avg rows in italics, arrows for the metric direction; a source
    scored on rows its ensembler was fitted on is marked ``†in-sample``."""
    table = Table(title="metrics: mean [95% CI] per source and method")
    for col in ("metric", "method", "source", "mean", "95% CI", "n", "NaN"):
        table.add_column(col, justify="right" if col in ("mean", "n", "NaN") else "left")
    for _, r in summary.sort_values(["category", "metric", "method", "source"]).iterrows():
        arrow = "↑" if r["higher_is_better"] else "↓"
        style = "bold green" if r["best"] else ("italic" if r["source"] == EXP_AVG else None)
        table.add_row(
            f"{r['metric']} {arrow}",
            str(r["method"]),
            f"{r['source']}{IN_SAMPLE_MARK if r.get('in_sample', False) else ''}",
            f"{r['mean']:.4g}",
            f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]",
            str(r["n"]),
            str(r["n_nan"]),
            style=style,
        )
    return table
