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

from concilium.pipeline.config import resolve_metrics
from concilium.pipeline.run import Context

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

    The same table, model choice (member -> itself, ``ens-logit`` -> the averaged-logit
    ensemble, other ensembles -> ``m0``), targets, explainers and seeds as
    :func:`concilium.metrics.evaluate_run.evaluate_run` (``concilium evaluate``), whose helpers
    this reuses; what it adds is the sample selection the pipeline needs: only the ``split``
    rows (so the CNN ensembler's training rows are not scored when a run explained ``all``),
    the first ``limit`` of them, and at most ``costly_limit`` for model-bound metrics.

    Args:
        run_dir: a run made by ``concilium explain`` / the explain stage.
        metrics: metric names and/or families.
        params: per metric, parameters overriding its defaults.
        mask: the ground-truth mask set (``masks`` or a part / evidence set).
        split: score only the explained samples of this split (``all``: every one); a run that
            explained only one split is scored on it whatever this says.
        limit: score only the first ``limit`` of those samples.
        costly_limit: at most this many samples for metrics that need the model.
        seed: base seed of the stochastic metrics.
        device: where the models run.
        console: progress output (``rich`` console) or ``None``.

    Returns:
        The whole metrics table.
    """
    from concilium.metrics import METRICS, evaluate
    from concilium.metrics.evaluate import check_params
    from concilium.metrics.evaluate_run import _explainer, _model_for, _seed, _targets
    from concilium.metrics.results import ResultsTable, group_rows, metric_params_hash
    from concilium.runinfo import load_run_data
    from concilium.store import ExplanationStore

    names = resolve_metrics(list(metrics))
    params = {k: dict(v) for k, v in (params or {}).items()}
    for name in names:
        check_params(METRICS.get(name), params.get(name, {}))
    run = Path(run_dir)
    data, members = load_run_data(run, device=device)
    if split != "all" and split in data.splits and len(set(data.splits)) > 1:
        data = data.subset(split)
    if limit is not None:
        data = data.subset(list(range(min(limit, len(data)))))
    masks_all = data.mask_set(mask)
    dev = torch.device(device)
    by_id = {card.member_id: model for model, card in members}
    store = ExplanationStore(run, mode="r")
    entries = store.entries()
    entries = entries[entries["complete"]]
    table = ResultsTable(run)
    done = table.done_groups()
    t0 = time.perf_counter()
    for row in entries.itertuples():
        entry = store.get(row.source, row.method, row.params_hash)
        model, why_not = _model_for(row.source, by_id, members)
        explainer = (_explainer(entry.params, _seed(seed, row.source, row.method,
                                                    row.params_hash))
                     if row.source in by_id or row.source == "ens-logit" else None)
        maps = None
        targets = target_model = None
        finished: list[pd.DataFrame] = []
        for name in names:
            spec = METRICS.get(name)
            mparams = params.get(name, {})
            phash, pjson = metric_params_hash(name, mparams, mask=mask)
            key = (row.source, row.method, row.params_hash, name, phash)
            if key in done or (spec.needs_explainer and explainer is None):
                continue
            if maps is None:
                maps = entry.read(entry.rows_of(data.ids))
            if spec.needs_model:
                if model is None:
                    continue
                if target_model is None:
                    targets, target_model, why_not = _targets(entry.params, model, data, dev)
                if target_model is None:
                    continue
            k = len(data) if not spec.needs_model or costly_limit is None \
                else min(len(data), costly_limit)
            batch = MODEL_BATCH if spec.needs_model else MASK_ONLY_BATCH
            gen = torch.Generator().manual_seed(_seed(seed, *key)) if spec.stochastic else None
            values = []
            try:
                for start in range(0, k, batch):
                    sl = slice(start, min(k, start + batch))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        values.append(evaluate(
                            name, maps[sl].to(dev),
                            images=data.images[sl].to(dev) if spec.needs_model else None,
                            labels=targets[sl] if spec.needs_model else None,
                            masks=masks_all[sl].to(dev) if spec.needs_mask else None,
                            model=target_model if spec.needs_model else None,
                            explainer=explainer, generator=gen, **mparams,
                        ).detach().float().cpu())
            except (ValueError, TypeError, RuntimeError) as err:
                if not spec.needs_explainer:
                    raise
                if console is not None:  # the method fails on this model (e.g. a wrapper)
                    console.print(f"  {row.source}/{row.method}/{name}: not computed ({err})")
                continue
            finished.append(group_rows(
                samples=data.ids[:k], labels=data.labels[:k].tolist(), source=row.source,
                method=row.method, entry_hash=row.params_hash, metric=name, mask=mask,
                values=torch.cat(values).tolist(), params_hash=phash, params=pjson,
            ))
        computed = len(finished)
        if finished:  # one write per explanation: rewriting the table per metric is quadratic
            table.append(pd.concat(finished, ignore_index=True))
        if console is not None and computed:
            console.print(f"  {row.source}/{row.method}: {computed} metrics "
                          f"({time.perf_counter() - t0:.1f} s)")
    return table.load()


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
