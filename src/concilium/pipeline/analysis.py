"""The analysis stages of ``concilium run``: ensemble, evaluate, audit and the committee.

Each calls the run-level functions of its package on the run directory, so the pipeline and the
single commands (``concilium ensemble``, ``concilium evaluate``, ``concilium audit``) write the
same store entries and the same tables.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from concilium.pipeline.config import resolve_metrics
from concilium.pipeline.run import Context

# ----------------------------------------------------------------------------- ensemble


def ensemble_run(run_dir: Path, kinds: Sequence[str], options: Any, *, device: str,
                 console: Any) -> dict[str, Any]:
    """Run every ensemble kind on ``run_dir`` (each writes its sources and tables)."""
    from concilium.ensemble.registry import run_ensemble

    out: dict[str, Any] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        result = run_ensemble(run_dir, kind, options.options_for(kind, device=device))
        sources = sorted({f"{e.source}/{e.method}" for e in result.entries})
        out[kind] = {"entries": sources, "tables": sorted(result.tables)}
        console.print(f"  {kind}: {len(sources)} entries, tables {sorted(result.tables) or '-'} "
                      f"({time.perf_counter() - t0:.1f} s)")
    return out


def ensemble(ctx: Context) -> dict[str, Any]:
    """The ``ensemble`` stage."""
    return ensemble_run(ctx.out, ctx.config.ensemble.kinds, ctx.config.ensemble,
                        device=ctx.config.device, console=ctx.console)


# ----------------------------------------------------------------------------- evaluate


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    mask: str = "masks",
    split: Literal["train", "val", "test", "all"] = "test",
    limit: int | None = None,
    costly_limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    console: Any = None,
) -> pd.DataFrame:
    """Score the complete explanations of a run on a chosen subset of its samples, into
    ``RUN/results/metrics.parquet`` (and ``.csv``); resumable.

    :func:`concilium.metrics.evaluate_run.evaluate_run` (``concilium evaluate``) with metric
    families resolved, the pipeline's default split (``test``: the CNN ensembler's training rows
    are not scored when a run explained ``all``) and warnings kept out of the stage output.

    Args:
        run_dir: a run made by ``concilium explain`` / the explain stage.
        metrics: metric names and/or families.
        params: per metric, parameters overriding its defaults.
        mask: the ground-truth mask set (``masks`` or a part / evidence set).
        split: score only the explained samples of this split (``all``: every one).
        limit: score only the first ``limit`` of those samples.
        costly_limit: at most this many samples for metrics that need the model.
        seed: base seed of the stochastic metrics.
        device: where the models run.
        console: progress output (``rich`` console) or ``None``.

    Returns:
        The whole metrics table.
    """
    from concilium.metrics.evaluate_run import evaluate_run as evaluate_store
    from concilium.metrics.results import ResultsTable

    t0 = time.perf_counter()

    def progress(line: str) -> None:
        if console is not None:
            console.print(f"  {line} ({time.perf_counter() - t0:.1f} s)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate_store(
            run_dir, resolve_metrics(list(metrics)), params=params, mask=mask, split=split,
            limit=limit, costly_limit=costly_limit, device=device, seed=seed, progress=progress,
        )
    if console is not None:
        for note in report.notes:
            if "not computed" in note:  # the method fails on this model (e.g. a wrapper)
                console.print(f"  {note}")
    return ResultsTable(Path(run_dir)).load()


def evaluate_stage(ctx: Context) -> dict[str, Any]:
    """The ``evaluate`` stage."""
    e = ctx.config.evaluate
    table = evaluate_run(ctx.out, metrics=e.metrics, params=e.params, mask=e.mask,
                         split=e.split, limit=e.limit,
                         costly_limit=e.costly_limit, seed=ctx.config.explain.seed,
                         device=ctx.config.device, console=ctx.console)
    return {"rows": len(table), "metrics": sorted(set(table["metric"])),
            "nan_share": float(table["value"].isna().mean()) if len(table) else math.nan}


# ----------------------------------------------------------------------------- audit


def audit(ctx: Context) -> dict[str, Any]:
    """The ``audit`` stage: :func:`concilium.ensemble.audit.run_audit`."""
    from concilium.ensemble.audit import run_audit

    if not ctx.config.audit.enabled:
        return {"tables": []}
    tables = run_audit(ctx.out, device=ctx.config.device, **ctx.config.audit.options)
    for name, table in tables.items():
        flagged = int(table["flagged"].sum()) if "flagged" in table else None
        ctx.console.print(f"  {name}: {len(table)} rows"
                          + (f", {flagged} flagged" if flagged is not None else ""))
    return {"tables": sorted(tables)}


# ----------------------------------------------------------------------------- committee


def committee(ctx: Context) -> dict[str, Any]:
    """The ``committee`` stage: train (or load) the committee, explain it into
    ``RUN/committee``, build the consensus, score the committee's localisation, and copy the
    consensus tables into ``RUN/results`` for the report."""
    from concilium.ensemble.sources import write_table
    from concilium.pipeline.stages import _train, explain_into

    c = ctx.config.committee
    if c is None:
        raise ValueError("the committee stage needs a [committee] section in the experiment")
    summary = {"models": _train(ctx, c.models, ctx.committee_models_dir)}
    summary["explain"] = explain_into(ctx, ctx.committee_run, ctx.committee_models_dir,
                                      methods=c.methods, params=c.params, limit=c.limit)
    from concilium.pipeline.config import EnsembleConfig

    options = EnsembleConfig.model_validate({"kinds": ["consensus"],
                                             "options": {"consensus": c.consensus}})
    summary["ensemble"] = ensemble_run(ctx.committee_run, ["consensus"], options,
                                       device=ctx.config.device, console=ctx.console)
    scores = evaluate_run(ctx.committee_run, metrics=list(c.metrics), split="all",
                          seed=ctx.config.explain.seed, device=ctx.config.device)
    results = ctx.committee_run / "results"
    for path in sorted(results.glob("consensus*.parquet")):
        write_table(ctx.out, path.stem, pd.read_parquet(path))
    write_table(ctx.out, "committee_metrics", scores)
    summary["tables"] = sorted(p.stem for p in results.glob("*.parquet"))
    return summary
