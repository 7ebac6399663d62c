"""The stages of ``concilium run``, each a thin call into the library of its package.

Stage order and what each one hashes (its configuration section plus upstream hashes):

===================  ===============================  =====================================
stage                calls                            reads
===================  ===============================  =====================================
data                 ``synthetic.generate`` /         ``[data]``
                     ``folder.load_folder``
models               ``models.train_ensemble``        ``[models]``, data
committee            ``train_ensemble``, explain,     ``[committee]``, data, explain split
                     consensus into ``RUN/committee``
explain              ``store.compute.explain_to_store``  ``[explain]``, data, models
ensemble             ``concilium.ensemble``           ``[ensemble]``, explain
evaluate             ``concilium.metrics.evaluate``   ``[evaluate]``, explain, ensemble
audit                ``concilium.ensemble.audit``     ``[audit]``, evaluate, ensemble
report               ``report.write_report``          ``[report]``, everything before
===================  ===============================  =====================================
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from concilium.pipeline.config import ExperimentConfig
from concilium.pipeline.run import Context, Stage

# ----------------------------------------------------------------------------- data


def dataset_spec(config: ExperimentConfig) -> Any:
    """The :class:`concilium.data.DatasetSpec` of the experiment's data."""
    from concilium.data.specs import dataset_spec as build_spec

    d = config.data
    if d.kind == "synthetic":
        from concilium.data.synthetic import SynthConfig

        return build_spec({"kind": "synthetic",
                           "config": SynthConfig.model_validate(d.synthetic).model_dump(mode="json")})
    size = d.folder.get("size")
    return build_spec({**d.folder, "kind": "folder",
                       "path": str(Path(d.folder["path"]).expanduser().resolve()),
                       "size": (size, size) if isinstance(size, int) else size})


def load_dataset(ctx: Context) -> Any:
    """The whole dataset (every split), built once per process."""
    if "dataset" not in ctx.cache:
        ctx.cache["dataset"] = dataset_spec(ctx.config).load()
    return ctx.cache["dataset"]


def _data(ctx: Context) -> dict[str, Any]:
    ds = load_dataset(ctx)
    splits = {s: ds.splits.count(s) for s in ("train", "val", "test")}
    ctx.console.print(f"  {len(ds)} images {ds.image_size}, {ds.num_classes} classes, {splits}")
    return {"samples": len(ds), "classes": ds.num_classes, "splits": splits,
            "fingerprint": ds.fingerprint()}


# ----------------------------------------------------------------------------- models


def _train(ctx: Context, models_cfg: Any, out: Path) -> dict[str, Any]:
    if models_cfg.dir:
        from concilium.models import load_members

        members = load_members(Path(models_cfg.dir).expanduser(), device="cpu")
        if not members:
            raise FileNotFoundError(f"no members (m0/card.json ...) under {models_cfg.dir}; "
                                    "train some with `concilium train` or drop [models] dir")
        cards = [card for _, card in members]
    else:
        from concilium.models import train_ensemble

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
    ctx: Context, run_dir: Path, models_dir: Path, *, methods: list[str],
    params: dict[str, dict[str, Any]], limit: int | None,
) -> dict[str, Any]:
    """Explain every member of ``models_dir`` with ``methods`` into the store of ``run_dir``
    (resumable) and record ``run_dir/run.json``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from concilium.models import load_members
    from concilium.runinfo import RunInfo, model_fingerprint, select_split
    from concilium.store import ExplanationStore
    from concilium.store.compute import explain_to_store

    e = ctx.config.explain
    full = load_dataset(ctx)
    data = select_split(full, e.split, limit)
    members = load_members(models_dir, device=ctx.config.device)
    info = RunInfo(
        dataset=dataset_spec(ctx.config), dataset_fingerprint=full.fingerprint(), split=e.split,
        limit=limit, sample_ids=data.ids, models_dir=str(models_dir.resolve()),
        member_ids=[c.member_id for _, c in members],
        member_fingerprints={c.member_id: model_fingerprint(m) for m, c in members},
        methods=list(methods), device=ctx.config.device, target=e.target, seed=e.seed,
    )
    if (run_dir / "run.json").is_file():
        info = RunInfo.load(run_dir).merged_with(info)
    store = ExplanationStore(run_dir)
    info.save(run_dir)
    t0 = time.perf_counter()
    with Progress(TextColumn("  [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=ctx.console, transient=True) as progress:
        task = progress.add_task("explaining", total=None)

        def on_chunk(event: Any) -> None:
            progress.update(task, total=event.images_total, completed=event.images_done,
                            description=f"{event.source} ({', '.join(event.methods)})")

        reports = explain_to_store(
            store, data, members, list(methods), method_options=params, target=e.target,
            reduction=e.reduction, baseline=e.baseline, seed=e.seed,
            dtype="float16" if e.float16 else "float32", chunk_size=e.chunk_size,
            batch_size=e.batch_size, device=ctx.config.device,
            meta={"dataset_fingerprint": info.dataset_fingerprint, "split": e.split},
            on_chunk=on_chunk,
        )
    computed = sum(r.rows_computed for r in reports)
    ctx.console.print(f"  {len(reports)} entries, {computed} maps computed in "
                      f"{time.perf_counter() - t0:.1f} s ({len(data)} images)")
    per_method: dict[str, float] = {}
    for r in reports:
        per_method[r.method] = round(per_method.get(r.method, 0.0) + r.seconds, 3)
    return {"entries": len(reports), "maps_computed": computed, "images": len(data),
            "seconds_per_method": per_method}


def _explain(ctx: Context) -> dict[str, Any]:
    e = ctx.config.explain
    return explain_into(ctx, ctx.out, ctx.models_dir, methods=e.methods, params=e.params,
                        limit=e.limit)


# ----------------------------------------------------------------------------- report


def _report(ctx: Context) -> dict[str, Any]:
    from concilium.report import write_report

    options = dict(ctx.config.report.options)
    options.setdefault("title", f"concilium report: {ctx.config.name}")
    path = write_report(ctx.out, device=ctx.config.device, **options)
    return {"report": str(path)}


# ----------------------------------------------------------------------------- the list


def _stage_list() -> list[Stage]:
    from concilium.pipeline import analysis

    return [
        Stage("data", lambda c: c.data, (), _data, always_run=True,
              describe=lambda c: f"{c.data.kind} dataset (always rebuilt; its fingerprint "
                                 "keys the later stages)"),
        Stage("models", lambda c: c.models, ("data",), _models,
              describe=lambda c: (f"members from {c.models.dir}" if c.models.dir else
                                  f"train {c.models.option('members')} x "
                                  f"{c.models.option('arch') or 'small-cnn'} "
                                  f"({c.models.option('diversity')})")),
        Stage("committee", lambda c: {"committee": c.committee, "split": c.explain.split,
                                      "explain": c.explain.model_dump(include={"target", "seed",
                                                                               "baseline"})},
              ("data",), analysis.committee, enabled=lambda c: c.committee is not None,
              describe=lambda c: "committee: train, explain, consensus"),
        Stage("explain", lambda c: c.explain, ("data", "models"), _explain,
              describe=lambda c: f"{len(c.explain.methods)} methods on the {c.explain.split} "
                                 "split"),
        Stage("ensemble", lambda c: c.ensemble, ("explain",), analysis.ensemble,
              enabled=lambda c: bool(c.ensemble.kinds),
              describe=lambda c: ", ".join(c.ensemble.kinds)),
        Stage("evaluate", lambda c: c.evaluate, ("explain", "ensemble"), analysis.evaluate_stage,
              describe=lambda c: ", ".join(c.evaluate.metrics)),
        Stage("audit", lambda c: c.audit, ("evaluate", "ensemble"), analysis.audit,
              enabled=lambda c: c.audit.enabled,
              describe=lambda c: "per-class quality, bias" + (
                  ", anonymisation" if c.audit.options.get("anonymisation") else "")),
        Stage("report", lambda c: c.report, ("data", "models", "committee", "explain",
                                             "ensemble", "evaluate", "audit"), _report,
              describe=lambda c: "RUN/report.html and RUN/summary.json"),
    ]


STAGES: list[Stage] = _stage_list()
"""The pipeline's stages, in order."""
