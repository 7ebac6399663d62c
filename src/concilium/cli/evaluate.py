"""``concilium evaluate``: every selected metric for every stored explanation of a run, into the
tidy table ``RUN/results/metrics.parquet`` (+ ``.csv``), resumable, then a summary.

The work is in :mod:`concilium.metrics.evaluate_run` and :mod:`concilium.metrics.results`; this
module only parses options and prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

from concilium.cli.app import app

DEFAULT_METRICS = "localisation,complexity"


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory (holds run.json and explanations.zarr)."),
    metrics: str = typer.Option(
        DEFAULT_METRICS,
        "--metrics",
        help="Comma-separated categories (localisation, faithfulness, robustness, complexity, "
        "randomisation), metric names, or 'all'.",
    ),
    params: Path | None = typer.Option(
        None, "--params", help="TOML file of metric parameters, one table per metric."
    ),
    mask: str = typer.Option(
        "masks", "--mask", help="Ground-truth mask set: 'masks' (object) or a named set."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: the run's)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Perturbed copies per forward pass."
    ),
    seed: int = typer.Option(0, "--seed", help="Base seed of the stochastic metrics."),
) -> None:
    """Compute metrics for every explanation in RUN and print mean and 95% CI per source."""
    from rich.console import Console

    from concilium.metrics.evaluate_run import evaluate_run, load_metric_params
    from concilium.metrics.registry import metrics_in
    from concilium.metrics.results import ResultsTable, render_summary, summarise

    console = Console()
    names = metrics_in(metrics)
    if params is not None and not params.is_file():
        raise FileNotFoundError(f"--params {params} does not exist")
    metric_params = load_metric_params(params, names)
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:<index>; got {device!r}")
    report = evaluate_run(
        run,
        names,
        params=metric_params,
        mask=mask,
        device=device,
        batch_size=batch_size,
        seed=seed,
        progress=lambda line: console.print(f"  {line}"),
    )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(
        f"{len(report.computed)} groups computed, {len(report.already_done)} already in the table"
    )
    table = ResultsTable(run)
    summary = summarise(table.load())
    console.print(render_summary(summary))
    console.print(f"table: {table.parquet} (+ {table.csv.name})")
