"""The stages of ``concilium run``, each a thin call into the library of its package.

Stage order and what each one hashes (its configuration section plus upstream hashes):

===========  ==================================  =====================================
stage        calls                               reads
===========  ==================================  =====================================
data         ``DATASETS[kind].from_section``,    ``[data]``
             then the spec's ``load()``
models       ``models.train_ensemble``           ``[models]``, data
committee    ``train_ensemble``, explain,        ``[committee]``, data, explain split
             consensus into ``RUN/committee``
explain      ``jobs.explain.explain_run``        ``[explain]``, data, models
ensemble     ``jobs.ensemble.run_ensemble``      ``[ensemble]``, explain
evaluate     ``jobs.evaluate.evaluate_run``      ``[evaluate]``, explain, ensemble
audit        ``jobs.audit.run_audit``            ``[audit]``, evaluate, ensemble
ganmex       ``jobs.one_vs_one.run_one_vs_one``  ``[ganmex]``, data, models
report       ``report.write_report``             ``[report]``, everything before
===========  ==================================  =====================================
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from concilium._progress import progress_display
from concilium.jobs.audit import run_audit
from concilium.jobs.ensemble import run_ensemble
from concilium.jobs.evaluate import evaluate_run
from concilium.jobs.explain import ChunkEvent, ExplainOptions, explain_run
from concilium.jobs.one_vs_one import run_one_vs_one
from concilium.models import load_sources, train_ensemble
from concilium.pipeline.config import EnsembleConfig, resolve_metrics
from concilium.pipeline.context import Context, Stage
from concilium.report import write_report
from concilium.store import ResultsTable, RunInfo, write_table

# ----------------------------------------------------------------------------- data


def load_dataset(ctx: Context) -> Any:
    """The whole dataset (every split), built once per process."""
    if "dataset" not in ctx.cache:
        ctx.cache["dataset"] = ctx.config.data.spec().load()
    return ctx.cache["dataset"]


def _data(ctx: Context) -> dict[str, Any]:
    ds = load_dataset(ctx)
    splits = {s: ds.splits.count(s) for s in ("train", "val", "test")}
    ctx.console.print(f"  {len(ds)} images {ds.image_size}, {ds.num_classes} classes, {splits}")
    return {"samples": len(ds), "classes": ds.num_classes, "splits": splits,
            "fingerprint": ds.fingerprint()}


# ----------------------------------------------------------------------------- models


def _train(ctx: Context, models_cfg: Any, out: Path) -> dict[str, Any]:
    if models_cfg.given is not None:  # load (and check against the data) the given members
        members = load_sources(models_cfg.given, class_names=load_dataset(ctx).class_names)
        cards = [card for _, card in members]
        for card in cards:
            if getattr(card, "preprocessing", None):
                ctx.console.print(f"  {card.member_id} {card.arch}: {card.preprocessing}")
    else:
        cards = train_ensemble(load_dataset(ctx), out=out, device=ctx.config.device,
                               progress=True, **models_cfg.train)
    acc = {c.member_id: c.val_accuracy for c in cards}
    ctx.console.print("  members: " + ", ".join(
        f"{m} ({c.arch}) {a:.3f}" if a is not None else f"{m} ({c.arch})"
        for (m, a), c in zip(acc.items(), cards, strict=True)))
    return {"members": len(cards), "val_accuracy": acc}


def _models(ctx: Context) -> dict[str, Any]:
    return _train(ctx, ctx.config.models, ctx.models_dir)


# ----------------------------------------------------------------------------- explain


def explain_into(
    ctx: Context, run_dir: Path, sources: list[str], *, options: ExplainOptions,
) -> dict[str, Any]:
    """Explain every member of ``sources`` into the run ``run_dir`` with the explain job
    (resumable; records ``run_dir/run.json``), showing one progress bar."""
    t0 = time.perf_counter()
    with progress_display(TextColumn("  [bold]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeRemainingColumn(), console=ctx.console,
                          transient=True, unit="images") as progress:
        task = progress.add_task("explaining", total=None)

        def on_chunk(event: ChunkEvent) -> None:
            progress.update(task, total=event.images_total, completed=event.images_done,
                            description=f"{event.source} ({', '.join(event.methods)})")

        reports = explain_run(run_dir, dataset=ctx.config.data.spec(), models=sources,
                              options=options, device=ctx.config.device, on_chunk=on_chunk,
                              engine=ctx.engine)
    computed = sum(r.rows_computed for r in reports)
    images = RunInfo.load(run_dir).n
    ctx.console.print(f"  {len(reports)} entries, {computed} maps computed in "
                      f"{time.perf_counter() - t0:.1f} s ({images} images)")
    per_method: dict[str, float] = {}
    for r in reports:
        per_method[r.method] = round(per_method.get(r.method, 0.0) + r.seconds, 3)
    return {"entries": len(reports), "maps_computed": computed, "images": images,
            "seconds_per_method": per_method}


def _explain(ctx: Context) -> dict[str, Any]:
    return explain_into(ctx, ctx.out, ctx.model_sources, options=ctx.config.explain)


# ----------------------------------------------------------------------------- report


def _report(ctx: Context) -> dict[str, Any]:
    options = dict(ctx.config.report.options)
    options.setdefault("title", f"concilium report: {ctx.config.name}")
    path = write_report(ctx.out, options)
    return {"report": str(path)}


# ----------------------------------------------------------------------------- the list


# ----------------------------------------------------------------------------- ensemble


def ensemble_run(run_dir: Path, kinds: Sequence[str], options: Any, *, device: str,
                 console: Any) -> dict[str, Any]:
    """Run every ensemble kind on ``run_dir`` (each writes its sources and tables)."""
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


def evaluate_into(ctx: Context, run_dir: Path, *, metrics: list[str], options: Any,
                  mask: str = "masks") -> pd.DataFrame:
    """Score the run ``run_dir`` with the evaluate job (resumable), printing one line per
    finished group and the methods that could not be computed; returns the whole table."""
    t0 = time.perf_counter()

    with warnings.catch_warnings(), progress_display(
            TextColumn("  [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=ctx.console, transient=True, unit="groups") as display:
        warnings.simplefilter("ignore")
        task = display.add_task("evaluating", total=None)

        def progress(line: str) -> None:
            display.console.print(f"  {line} ({time.perf_counter() - t0:.1f} s)", markup=False)

        report = evaluate_run(
            run_dir, resolve_metrics(list(metrics)), params=options.get("params"), mask=mask,
            split=options.get("split", "test"), limit=options.get("limit"),
            costly_limit=options.get("costly_limit"), device=ctx.config.device,
            engine=ctx.engine,
            seed=ctx.config.explain.seed, progress=progress,
            on_group=lambda done, total: display.update(task, completed=done, total=total),
        )
    for note in report.not_computed:  # the method fails on this model (e.g. a wrapper)
        ctx.console.print(f"  {note}")
    for warning in report.in_sample:  # the warnings above are silenced; these must be seen
        ctx.console.print(f"  [bold red]warning:[/] {warning}")
    return ResultsTable(run_dir).load()


def evaluate_stage(ctx: Context) -> dict[str, Any]:
    """The ``evaluate`` stage."""
    e = ctx.config.evaluate
    table = evaluate_into(ctx, ctx.out, metrics=e.metrics, mask=e.mask,
                          options={"params": e.params, "split": e.split, "limit": e.limit,
                                   "costly_limit": e.costly_limit})
    return {"rows": len(table), "metrics": sorted(set(table["metric"])),
            "nan_share": float(table["value"].isna().mean()) if len(table) else math.nan}


# ----------------------------------------------------------------------------- audit


def audit(ctx: Context) -> dict[str, Any]:
    """The ``audit`` stage: :func:`concilium.jobs.audit.run_audit`."""
    if not ctx.config.audit.enabled:
        return {"tables": []}
    tables = run_audit(ctx.out, ctx.config.audit.options_for(device=ctx.config.device))
    for name, table in tables.items():
        flagged = int(table["flagged"].sum()) if "flagged" in table else None
        ctx.console.print(f"  {name}: {len(table)} rows"
                          + (f", {flagged} flagged" if flagged is not None else ""))
    return {"tables": sorted(tables)}


# ----------------------------------------------------------------------------- ganmex


def ganmex(ctx: Context) -> dict[str, Any]:
    """The ``ganmex`` stage: :func:`concilium.jobs.one_vs_one.run_one_vs_one` (a generator per
    member, resumed where it stopped; scores reused while the options are unchanged)."""
    if ctx.config.ganmex is None:
        raise ValueError("the ganmex stage needs a [ganmex] section in the experiment")

    def on_validation(member: str, rec: Any) -> None:
        ctx.console.print(f"  {member}: {rec.line()}")

    tables = run_one_vs_one(ctx.out, dataset=load_dataset(ctx), models_dir=ctx.models_dir,
                            options=ctx.config.ganmex.study_options(),
                            device=ctx.config.device, on_validation=on_validation)
    claims = tables["one_vs_one_claims"]
    for _, v in claims.iterrows():
        ctx.console.print(f"  {v.get('member', '')} {v['method']}: {v['claim']}: {v['verdict']}")
    return {"tables": sorted(tables), "verdicts": claims["verdict"].value_counts().to_dict()}


# ----------------------------------------------------------------------------- committee


def committee(ctx: Context) -> dict[str, Any]:
    """The ``committee`` stage: train (or load) the committee, explain it into
    ``RUN/committee``, build the consensus, score the committee's localisation, and copy the
    consensus tables into ``RUN/results`` for the report."""
    c = ctx.config.committee
    if c is None:
        raise ValueError("the committee stage needs a [committee] section in the experiment")
    summary = {"models": _train(ctx, c.models, ctx.committee_models_dir)}
    options = ctx.config.explain.model_copy(
        update={"methods": list(c.methods), "params": dict(c.params), "limit": c.limit})
    summary["explain"] = explain_into(ctx, ctx.committee_run, ctx.committee_sources,
                                      options=options)
    consensus = EnsembleConfig.model_validate({"kinds": ["consensus"],
                                               "options": {"consensus": c.consensus}})
    summary["ensemble"] = ensemble_run(ctx.committee_run, ["consensus"], consensus,
                                       device=ctx.config.device, console=ctx.console)
    scores = evaluate_into(ctx, ctx.committee_run, metrics=list(c.metrics),
                           options={"split": "all"})
    results = ctx.committee_run / "results"
    for path in sorted(results.glob("consensus*.parquet")):
        write_table(ctx.out, path.stem, pd.read_parquet(path))
    write_table(ctx.out, "committee_metrics", scores)
    summary["tables"] = sorted(p.stem for p in results.glob("*.parquet"))
    return summary


def _stage_list() -> list[Stage]:
    return [
        Stage("data", lambda c: c.data, (), _data, always_run=True,
              describe=lambda c: f"{c.data.kind} dataset (always rebuilt; its fingerprint "
                                 "keys the later stages)"),
        Stage("models", lambda c: c.models, ("data",), _models,
              describe=lambda c: (f"members from {', '.join(c.models.given)}"
                                  if c.models.given else
                                  f"train {c.models.option('members')} x "
                                  f"{c.models.option('arch') or 'small-cnn'} "
                                  f"({c.models.option('diversity')})")),
        Stage("committee", lambda c: {"committee": c.committee, "split": c.explain.split,
                                      "explain": c.explain.model_dump(include={"target", "seed",
                                                                               "baseline"})},
              ("data",), committee, enabled=lambda c: c.committee is not None,
              describe=lambda c: "committee: train, explain, consensus"),
        Stage("explain", lambda c: c.explain, ("data", "models"), _explain,
              describe=lambda c: f"{len(c.explain.methods)} methods on the {c.explain.split} "
                                 "split"),
        Stage("ensemble", lambda c: c.ensemble, ("explain",), ensemble,
              enabled=lambda c: bool(c.ensemble.kinds),
              describe=lambda c: ", ".join(c.ensemble.kinds)),
        Stage("evaluate", lambda c: c.evaluate, ("explain", "ensemble"), evaluate_stage,
              describe=lambda c: ", ".join(c.evaluate.metrics)),
        Stage("audit", lambda c: c.audit, ("evaluate", "ensemble"), audit,
              enabled=lambda c: c.audit.enabled,
              describe=lambda c: "per-class quality, bias" + (
                  ", anonymisation" if c.audit.options.get("anonymisation") else "")),
        Stage("ganmex", lambda c: c.ganmex, ("data", "models"), ganmex,
              enabled=lambda c: c.ganmex is not None,
              describe=lambda c: "one-vs-one: a GANMEX generator per member, contrast maps "
                                 "scored against the exact counterfactuals"),
        Stage("report", lambda c: c.report, ("data", "models", "committee", "explain",
                                             "ensemble", "evaluate", "audit", "ganmex"), _report,
              describe=lambda c: "RUN/report.html and RUN/summary.json"),
    ]


STAGES: list[Stage] = _stage_list()
"""The pipeline's stages, in order."""
