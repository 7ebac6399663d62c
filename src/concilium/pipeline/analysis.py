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
import torch
from torch import Tensor, nn

from concilium.pipeline.config import resolve_metrics
from concilium.pipeline.run import Context

METRIC_COLUMNS = ["sample", "label", "source", "method", "metric", "value", "params_hash"]
MASK_ONLY_BATCH = 512
MODEL_BATCH = 64


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


def _explainer(method: str, params: Mapping[str, Any], reduction: str, baseline: str):
    from concilium.explain import explain

    def run(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return explain(model, images, targets, method=method, reduction=reduction,  # type: ignore[arg-type]
                       baseline=baseline, **dict(params))

    return run


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
    """Score every complete explanation of a run with every metric into
    ``RUN/results/metrics.parquet`` (and ``.csv``); resumable.

    Member sources are scored with their own model; ensemble sources with the averaged-logit
    ensemble of the members. Metrics that need the explanation method (robustness,
    randomisation) are computed only for entries whose method is a registered method.
    A ``(source, method, params_hash, metric)`` already in the table is not recomputed.

    Args:
        run_dir: a run made by ``concilium explain``.
        metrics: metric names and/or families.
        params: per metric, parameters overriding its defaults.
        mask: the ground-truth mask set (``masks`` or a part / evidence set).
        split: score only the explained samples of this split (``all``: every one); a run that
            explained only one split is scored on it whatever this says.
        limit: score only the first ``limit`` of those samples.
        costly_limit: at most this many samples for metrics that need the model.
        seed: seed of the stochastic metrics.
        device: where the models run.
        console: progress output (``rich`` console) or ``None``.

    Returns:
        The whole metrics table.
    """
    from concilium.ensemble.averaging import LogitEnsemble
    from concilium.ensemble.sources import write_table
    from concilium.explain import METHODS
    from concilium.metrics import METRICS, evaluate
    from concilium.runinfo import load_run_data
    from concilium.store import ExplanationStore

    names = resolve_metrics(list(metrics))
    params = {k: dict(v) for k, v in (params or {}).items()}
    run = Path(run_dir)
    data, members = load_run_data(run, device=device)
    if split != "all" and split in data.splits and len(set(data.splits)) > 1:
        data = data.subset(split)
    masks_all = data.mask_set(mask)
    models = {card.member_id: model.eval() for model, card in members}
    ensemble_model = LogitEnsemble(list(models.values())).to(device).eval()
    store = ExplanationStore(run, mode="r")
    entries = store.entries()
    entries = entries[entries["complete"]]
    path = run / "results" / "metrics.parquet"
    table = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=METRIC_COLUMNS)
    done = set(zip(table["source"], table["method"], table["params_hash"], table["metric"],
                   strict=True))
    n = len(data) if limit is None else min(limit, len(data))
    t0 = time.perf_counter()
    for row in entries.itertuples():
        entry = store.get(row.source, row.method, row.params_hash)
        todo = [m for m in names if (row.source, row.method, row.params_hash, m) not in done]
        if not todo:
            continue
        ids = data.ids[:n]
        maps = entry.read(entry.rows_of(ids))
        model = models.get(row.source, ensemble_model)
        entry_params = entry.params if isinstance(entry.params, dict) else {}
        explainer = None
        if row.method in METHODS:
            explainer = _explainer(row.method, entry_params.get("method_params", {}),
                                   entry_params.get("reduction", "sum"),
                                   entry_params.get("baseline", "zero"))
        frames = []
        for name in todo:
            spec = METRICS.get(name)
            if spec.needs_explainer and explainer is None:
                continue
            k = n if not spec.needs_model or costly_limit is None else min(n, costly_limit)
            batch = MODEL_BATCH if spec.needs_model else MASK_ONLY_BATCH
            values = []
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, k, batch):
                stop = min(k, start + batch)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = evaluate(
                        name, maps[start:stop].to(device),
                        images=data.images[start:stop].to(device),
                        labels=data.labels[start:stop].to(device),
                        masks=masks_all[start:stop].to(device), model=model,
                        explainer=explainer, generator=generator, **params.get(name, {}),
                    )
                values.append(v.detach().float().cpu())
            value = torch.cat(values)
            frames.append(pd.DataFrame({
                "sample": ids[:k], "label": data.labels[:k].tolist(), "source": row.source,
                "method": row.method, "metric": name, "value": value.numpy(),
                "params_hash": row.params_hash,
            }))
        if frames:
            table = pd.concat([table, *frames], ignore_index=True) if len(table) else \
                pd.concat(frames, ignore_index=True)
            write_table(run, "metrics", table[METRIC_COLUMNS])
        if console is not None:
            console.print(f"  {row.source}/{row.method}: {len(frames)} metrics "
                          f"({time.perf_counter() - t0:.1f} s)")
    return table


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
