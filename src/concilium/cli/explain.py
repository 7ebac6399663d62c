"""``concilium explain``: every member x every method into the run's resumable store.

Everything is validated before any compute (methods, parameters, target, baseline, device, data,
models, split); then each member's missing chunks are computed and written one by one, so an
interrupted run loses at most the chunk in flight and a re-run computes only what is missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from concilium.cli.app import app
from concilium.cli.options import check_device

DEFAULT_METHODS = "saliency,input_x_gradient,integrated_gradients,gradient_shap,gradcam"


def parse_methods(text: str) -> list[str]:
    """Split ``"a,b,c"`` into known method names.

    Raises:
        ValueError: on an empty list, a repeat or an unknown name (listing the valid ones).
    """
    from concilium.explain import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError(f"--methods is empty; pick from: {', '.join(METHODS.names())}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ValueError(f"--methods names {repeated} more than once")
    for name in names:
        METHODS.get(name)  # raises listing the valid names
    return names


def parse_params(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``--param method.key=value`` items; values are JSON (numbers, true/false, lists)
    or else plain strings. Every key is checked against the method's signature.

    Raises:
        ValueError: on a malformed item, a method not in ``methods`` or an unknown key.
    """
    from concilium.explain import method_params

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        method, dot, key = name.strip().partition(".")
        if not eq or not dot or not method or not key:
            raise ValueError(
                f"--param {item!r} must read method.key=value, e.g. integrated_gradients.n_steps=100"
            )
        if method not in methods:
            raise ValueError(
                f"--param {item!r} is for {method!r}, which is not in --methods ({', '.join(methods)})"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        out.setdefault(method, {})[key.strip()] = value
    for method, params in out.items():
        method_params(method, **params)  # raises on an unknown key or a bad value
    return out


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--size must be H or HxW in pixels, e.g. 64 or 64x96; got {text!r}")
    return (values[0], values[-1])


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{option} must be a positive integer; got {value}")


@app.command("explain")
def explain_command(
    data: Path = typer.Argument(..., help="Image folder (as written by `concilium synth`)."),
    models: Path = typer.Option(..., "--models", help="Members folder (MODELS/m0, m1, ...)."),
    out: Path = typer.Option(..., "--out", help="Run directory (explanations.zarr + run.json)."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma-separated methods."),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:<k>."),
    batch_size: int | None = typer.Option(
        None, "--batch-size",
        help="Model-input rows per call (default: timing probe, recorded per entry)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Explain the first N of the split."),
    target: str = typer.Option(
        "label", "--target", help="label, pred, <int>, attr:<name|index> or contrast:<t>."
    ),
    reduction: str = typer.Option("sum", "--reduction", help="sum, abs_sum, l2 or max_abs."),
    baseline: str = typer.Option(
        "zero", "--baseline",
        help="zero, black, blur[:sigma=s], uniform, or ganmex:GEN (a trained GANMEX generator; "
        "with --target contrast:<t> each baseline is G(x, t), cached in the run's store).",
    ),
    float16: bool = typer.Option(False, "--float16", help="Store maps as float16 (half the disk)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every stochastic method."),
    param: list[str] | None = typer.Option(
        None, "--param", help="method.key=value overriding a method default (repeatable)."
    ),
    chunk_size: int = typer.Option(64, "--chunk-size", help="Samples per stored chunk."),
    size: str | None = typer.Option(None, "--size", help="Resize images to H or HxW on loading."),
) -> None:
    """Explain every member with every method; resumable, never computes a map twice."""
    run_explain(
        data, models=models, out=out, methods=methods, split=split, device=device,
        batch_size=batch_size, limit=limit, target=target, reduction=reduction,
        baseline=baseline, float16=float16, seed=seed, param=param, chunk_size=chunk_size,
        size=size,
    )


def run_explain(
    data: Path,
    *,
    models: Path,
    out: Path,
    methods: str = DEFAULT_METHODS,
    split: str = "test",
    device: str = "cpu",
    batch_size: int | None = None,
    limit: int | None = None,
    target: str = "label",
    reduction: str = "sum",
    baseline: str = "zero",
    float16: bool = False,
    seed: int = 0,
    param: list[str] | None = None,
    chunk_size: int = 64,
    size: str | None = None,
    quiet: bool = False,
) -> list:
    """The body of ``concilium explain`` (see :func:`explain_command` for the options).

    Returns:
        The :class:`~concilium.jobs.explain.EntryReport` list.
    """
    from rich.console import Console

    from concilium.data.specs import FolderDataset
    from concilium.jobs.baselines import check_baseline_spec
    from concilium.jobs.explain import ExplainOptions

    console = Console(stderr=True, quiet=quiet)
    # -- cheap checks first --------------------------------------------------------------------
    method_names = parse_methods(methods)
    check_baseline_spec(baseline)  # a missing generator folder is a FileNotFoundError
    check_device(device)
    _positive(batch_size, "--batch-size")
    _positive(limit, "--limit")
    _positive(chunk_size, "--chunk-size")
    try:
        options = ExplainOptions(
            methods=method_names, params=parse_params(list(param or []), method_names),
            split=split, limit=limit, batch_size=batch_size, target=target, baseline=baseline,
            reduction=reduction, seed=seed, float16=float16, chunk_size=chunk_size,
        )
    except ValidationError as err:
        raise ValueError(_option_errors(err)) from None
    image_size = _parse_size(size)
    if not Path(data).is_dir():
        raise FileNotFoundError(f"data folder {data} not found (make one with `concilium synth`)")
    spec = FolderDataset(path=str(Path(data).resolve()), size=image_size)
    return _run_with_progress(console, out, spec, Path(models), options, device=device)


def _option_errors(err: ValidationError) -> str:
    """One line per invalid option, named as the flag (``--split``: message)."""
    lines = []
    for e in err.errors(include_url=False):
        flag = "--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else "option"
        lines.append(f"{flag}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _run_with_progress(console, out, dataset, models, options, *, device):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from concilium.jobs.explain import explain_run
    from concilium.store import STORE_NAME

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TextColumn("{task.fields[rate]} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("explaining", total=None, rate="-")

        def on_chunk(event) -> None:
            elapsed = time.perf_counter() - t0
            rate = f"{event.images_done / elapsed:.1f}" if elapsed > 0 else "-"
            progress.update(
                task, total=event.images_total, completed=event.images_done, rate=rate,
                description=f"{event.source} ({', '.join(event.methods)})",
            )

        reports = explain_run(out, dataset=dataset, models_dir=models, options=options,
                              device=device, on_chunk=on_chunk)
        progress.update(task, description="done")
    wall = time.perf_counter() - t0
    table = Table(title=f"explanations in {Path(out) / STORE_NAME}")
    for col in ("member", "method", "hash", "status", "chunks new/old", "maps", "seconds"):
        table.add_column(col, justify="right" if col in ("maps", "seconds") else "left",
                         no_wrap=col in ("method", "status"))
    for r in reports:
        table.add_row(r.source, r.method, r.params_hash[:8], r.status,
                      f"{r.chunks_computed}/{r.chunks_reused}", str(r.rows_computed),
                      f"{r.seconds:.2f}")
    console.print(table)
    counts = {s: sum(r.status == s for r in reports) for s in ("computed", "resumed", "reused")}
    console.print(
        f"{len(reports)} entries: {counts['computed']} computed, {counts['resumed']} resumed, "
        f"{counts['reused']} reused; {sum(r.rows_computed for r in reports)} maps in {wall:.1f} s"
    )
    return reports
