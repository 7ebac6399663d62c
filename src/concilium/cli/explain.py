"""``concilium explain``: every member x every method into the run's resumable store.

Everything is validated before any compute (methods, parameters, target, baseline, device, data,
models, split); then each member's missing chunks are computed and written one by one, so an
interrupted run loses at most the chunk in flight and a re-run computes only what is missing.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from concilium.cli.app import app
from concilium.cli.options import (
    check_device,
    engine_parameters,
    given_options,
    make_engine_from_flags,
    model_flags,
)
from concilium.cli.paths import DATA, folder_of, models_folder
from concilium.data.specs import FolderDataset
from concilium.explain import METHODS, method_params
from concilium.jobs.baselines import check_baseline_spec
from concilium.jobs.explain import PAPER_METHODS, ExplainOptions


def parse_params(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``--param method.key=value`` items; values are JSON (numbers, true/false, lists)
    or else plain strings. Every key is checked against the method's signature.

    Raises:
        ValueError: on a malformed item, a method not in ``methods`` or an unknown key.
    """
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




MODELS_HELP = (
    "Member sources, together one ensemble (repeat the flag or separate with commas): a "
    "members folder (MODELS/m0, m1, ...), hf:DIR (transformers save_pretrained folder), "
    "timm:NAME@WEIGHTS.safetensors, torchvision:NAME@WEIGHTS.safetensors, "
    "python:MODULE:FACTORY[@WEIGHTS.safetensors]."
)


def explain_command(
    data: Path, *, models: list[str], out: Path, device: str, param: list[str] | None,
    size: str | None, engine: str = "inprocess", address: str | None = None,
    workers: int | None = None, **flags: Any,
) -> None:
    """Explain every member with every method; resumable, never computes a map twice."""
    run_explain(data, models=models, out=out, device=device, param=param, size=size,
                engine=engine, address=address, workers=workers, **flags)


# The options of the run are the fields of ExplainOptions (help text from their descriptions);
# the method parameters are given as repeatable --param method.key=value.
explain_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="Image folder (as written by "
                                                       "`concilium synth`).")),
    inspect.Parameter("models", inspect.Parameter.KEYWORD_ONLY, annotation=list[str],
                      default=typer.Option(..., "--models", metavar="SOURCE", help=MODELS_HELP)),
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                      default=typer.Option(..., "--out", help="Run directory "
                                                              "(explanations.zarr + run.json).")),
    inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option("cpu", "--device", help="cpu, cuda or cuda:<k>.")),
    inspect.Parameter("param", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
                      default=typer.Option(None, "--param", help="method.key=value overriding a "
                                                                 "method default (repeatable).")),
    inspect.Parameter("size", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                      default=typer.Option(None, "--size", help="Resize images to H or HxW on "
                                                                "loading.")),
    *engine_parameters(),
    *model_flags({"explain": ExplainOptions}, exclude=("params",)),
])
app.command("explain")(explain_command)


def run_explain(
    data: Path,
    *,
    models: str | Path | list[str],
    out: Path,
    device: str = "cpu",
    param: list[str] | None = None,
    size: str | None = None,
    quiet: bool = False,
    engine: str = "inprocess",
    address: str | None = None,
    workers: int | None = None,
    **flags: Any,
) -> list:
    """The body of ``concilium explain``: ``flags`` are options of
    :class:`~concilium.jobs.explain.ExplainOptions` as given on the command line (``None``: not
    given); every one is checked before any data or model is loaded.

    Returns:
        The :class:`~concilium.jobs.explain.EntryReport` list.
    """
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet)
    # -- cheap checks first --------------------------------------------------------------------
    given = given_options(flags, ExplainOptions, what="explain")
    method_names = given.get("methods") or list(PAPER_METHODS)
    for name in method_names:
        METHODS.get(name)  # raises listing the valid names
    check_baseline_spec(given.get("baseline", "zero"))  # a missing generator folder: FileNotFound
    check_device(device)
    runner = make_engine_from_flags(engine, address, workers)
    try:
        options = ExplainOptions(**given, params=parse_params(list(param or []), method_names))
    except ValidationError as err:
        raise ValueError(_option_errors(err)) from None
    image_size = _parse_size(size)
    data = folder_of(Path(data), DATA)
    if not Path(data).is_dir():
        raise FileNotFoundError(f"data folder {data} not found (make one with `concilium synth`)")
    spec = FolderDataset(path=str(Path(data).resolve()), size=image_size)
    sources = _sources(models)
    return _run_with_progress(console, out, spec, sources, options, device=device,
                              engine=runner)


def _sources(models: str | Path | list[str]) -> list[str]:
    """``--models`` values (repeated, each maybe comma-separated) as parsed source strings;
    a malformed one fails here, before any data is loaded."""
    from concilium.models import parse_sources

    items = [models] if isinstance(models, str | Path) else list(models)
    texts = [t for item in items for t in str(item).split(",") if t.strip()]
    # a plain path is a members folder: a member folder or a file in one names the folder to pass
    texts = [t if ":" in t else str(models_folder(Path(t))) for t in texts]
    return [s.text for s in parse_sources(texts)]


def _option_errors(err: ValidationError) -> str:
    """One line per invalid option, named as the flag (``--split``: message)."""
    lines = []
    for e in err.errors(include_url=False):
        flag = "--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else "option"
        lines.append(f"{flag}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _run_with_progress(console, out, dataset, models, options, *, device, engine=None):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from concilium._progress import progress_display
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
    with progress_display(*columns, console=console, unit="images", fields=()) as progress:
        task = progress.add_task("explaining", total=None, rate="-")

        def on_chunk(event) -> None:
            elapsed = time.perf_counter() - t0
            rate = f"{event.images_done / elapsed:.1f}" if elapsed > 0 else "-"
            progress.update(
                task, total=event.images_total, completed=event.images_done, rate=rate,
                description=f"{event.source} ({', '.join(event.methods)})",
            )

        reports = explain_run(out, dataset=dataset, models=models, options=options,
                              device=device, on_chunk=on_chunk, engine=engine)
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
