"""The stage runner: data -> models -> explain -> ensemble -> evaluate -> audit -> report.

Each stage calls the library functions of its package (never a subprocess) and is cached: its
hash covers its configuration section and the hashes of the stages it reads from, and is
recorded in ``RUN/stages.json`` when the stage finishes. A stage whose hash is unchanged and
that finished is skipped; a stage that was killed or failed is run again, and its library
function resumes where it stopped (the explanation store, member training and the results
tables are all resumable). Changing only ``[report]`` redoes only the report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from concilium import __version__
from concilium._progress import heartbeat
from concilium._util import atomic_write_text
from concilium.pipeline.config import ExperimentConfig
from concilium.pipeline.context import Context, Stage
from concilium.pipeline.stages import STAGES
from concilium.store.lock import run_lock

STAGES_FILE = "stages.json"
Status = Literal["done", "running", "failed"]



def _canonical(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _digest(payload: Any) -> str:
    text = json.dumps(_canonical(payload), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_hash(stage: Stage, config: ExperimentConfig, keys: Mapping[str, str]) -> str:
    """The hash of a stage: its configuration section and its upstream stages' keys."""
    return _digest({"stage": stage.name, "config": stage.section(config),
                    "upstream": {u: keys.get(u) for u in stage.upstream}})


def output_key(stage: Stage, hash_: str, summary: Mapping[str, Any] | None) -> str:
    """What downstream stages hash for ``stage``: its hash, plus its summary for an
    ``always_run`` stage (so new data invalidates everything after it)."""
    return _digest({"hash": hash_, "summary": summary}) if stage.always_run else hash_


def stage_hashes(
    stages: list[Stage], config: ExperimentConfig,
    state: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Each enabled stage's hash, as a run would compute it if the ``always_run`` stages give
    the summaries recorded in ``state`` (what the dry run assumes)."""
    state = state or {}
    hashes: dict[str, str] = {}
    keys: dict[str, str] = {}
    for stage in stages:
        if not stage.enabled(config):
            continue
        h = stage_hash(stage, config, keys)
        hashes[stage.name] = h
        record = state.get(stage.name, {})
        summary = record.get("summary") if record.get("hash") == h else None
        keys[stage.name] = output_key(stage, h, summary)
    return hashes


def read_state(out: Path) -> dict[str, dict[str, Any]]:
    """``RUN/stages.json`` as ``{stage: record}`` (empty for a new run).

    Raises:
        ValueError: the file exists but is not a stages record.
    """
    path = Path(out) / STAGES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return dict(data["stages"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a concilium stages record ({err}); delete it to "
                         "recompute every stage") from None


def write_state(out: Path, state: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``RUN/stages.json`` atomically."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"concilium_version": __version__, "stages": state}, indent=2, default=str)
    atomic_write_text(out / STAGES_FILE, text)


@dataclass
class StageResult:
    """What happened to one stage in a pipeline run."""

    name: str
    action: Literal["skipped", "ran"]
    seconds: float
    summary: Mapping[str, Any]


def run_pipeline(
    config: ExperimentConfig,
    out: str | Path,
    *,
    stages: list[Stage] | None = None,
    console: Console | None = None,
) -> list[StageResult]:
    """Run every enabled stage that is not already finished with the same hash.

    Args:
        config: the validated experiment (:func:`concilium.pipeline.load_config`).
        out: the run directory (created if needed).
        stages: the stage list (default: :data:`concilium.pipeline.stages.STAGES`).
        console: where progress goes (default: stderr).

    Returns:
        One :class:`StageResult` per enabled stage, in order.

    Raises:
        ValueError: ``device`` is CUDA on a machine without CUDA (before any work).
        Whatever a stage raises; the stage is recorded as ``failed`` in ``stages.json`` and the
        next run starts again from it (finished stages are skipped).
    """
    if stages is None:
        stages = STAGES
    if config.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device = {config.device!r} but CUDA is not available here; set "
                             "device = \"cpu\" in the experiment")
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the run directory {run_dir} is a file; pass a folder (--out)")
    ctx = Context(config=config, out=run_dir, console=console or Console(stderr=True))
    _ = ctx.engine  # an engine that cannot be made (Ray missing) fails before any work
    with run_lock(run_dir):  # one writer per run; the stages' jobs take it again
        return _run_stages(config, run_dir, stages, ctx)


def _run_stages(config: ExperimentConfig, run_dir: Path, stages: list[Stage], ctx: Context
                ) -> list[StageResult]:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "experiment.json", config.model_dump_json(indent=2))
    state = read_state(run_dir)
    keys: dict[str, str] = {}
    results: list[StageResult] = []
    for stage in stages:
        if not stage.enabled(config):
            continue
        h = stage_hash(stage, config, keys)
        record = state.get(stage.name, {})
        if (not stage.always_run and record.get("status") == "done"
                and record.get("hash") == h):
            ctx.console.print(f"[dim]{stage.name}: cached (skipped)[/]")
            results.append(StageResult(stage.name, "skipped", 0.0, record.get("summary", {})))
            keys[stage.name] = output_key(stage, h, record.get("summary"))
            continue
        started = time.perf_counter()
        state[stage.name] = {
            "hash": h, "status": "running",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_state(run_dir, state)
        ctx.console.print(f"[bold]{stage.name}[/]: {stage.describe(config)}")
        try:
            with heartbeat(stage.name, console=ctx.console, spinner=False):  # a line every 30 s
                summary = _canonical(dict(stage.run(ctx) or {}))
        except BaseException as err:
            state[stage.name].update(status="failed", error=f"{type(err).__name__}: {err}",
                                     seconds=round(time.perf_counter() - started, 3))
            write_state(run_dir, state)
            raise
        seconds = time.perf_counter() - started
        state[stage.name].update(
            status="done", seconds=round(seconds, 3), summary=summary,
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_state(run_dir, state)
        keys[stage.name] = output_key(stage, h, summary)
        ctx.console.print(f"[green]{stage.name}[/]: done in {seconds:.1f} s")
        results.append(StageResult(stage.name, "ran", seconds, summary))
    return results
