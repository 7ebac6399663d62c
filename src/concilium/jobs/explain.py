"""Fill the store: explain every member with every method, chunk by chunk, resumably.

:func:`explain_run` is what ``concilium explain`` and the pipeline's explain and committee stages
call: it checks everything (:class:`ExplainOptions`, the data, the members, the baseline against
each member), writes ``RUN/run.json`` and fills the store with :func:`explain_to_store`. For each
member, that opens (or creates) one entry per method, then walks the union of the missing
chunks; each chunk's images go once to the device, the methods missing it are computed (sharing
passes through ``explain_many`` where the methods allow) and every map is written as soon as it
exists. Complete entries cost nothing.

Determinism: a resumed run ends byte-identical to an uninterrupted one (same device and library
versions), because nothing a chunk's maps depend on changes between processes:

- random numbers: each chunk's generator is seeded by ``(seed, member, first row)``; ``explain``
  draws one base seed from it and mixes in the method name and the image index;
- batching: the rows per model call (``batch_size``; when not given, chosen from the memory
  budget by :func:`concilium.explain.probe`, never from timing, once per run and architecture, see
  :func:`concilium.jobs.explain_plan.auto_batch_size`) are recorded in each entry's ``meta`` and reused for that entry when the run resumes, so
  Captum's partial sums add up in the same order;
- shared passes: whenever a chunk needs any of ``saliency``, ``input_x_gradient``, ``gradcam``,
  all of those the run asks for are computed together by ``explain_many`` (finished ones are not
  rewritten), so a chunk always takes the same code path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from concilium._util import derive_seed, state_fingerprint
from concilium.data.dataset import ImageDataset
from concilium.explain import (
    METHODS,
    REDUCTIONS,
    SHARED_PASS,
    explain_many,
    method_params,
)
from concilium.explain.baselines import BaselineSpec
from concilium.explain.targets import resolve_target
from concilium.jobs.baselines import check_baseline_spec, member_baselines
from concilium.jobs.engine import Engine, InProcessEngine
from concilium.jobs.explain_plan import (
    ChunkEvent,
    EntryReport,
    ExplainPlan,
    plan_members,
)
from concilium.models.sources import load_sources, parse_sources
from concilium.store.lock import holds_run_lock
from concilium.store.manifest import RUN_FILE, DatasetSpec, RunInfo, select_split
from concilium.store.store import ExplanationStore
from concilium.store.writer import ChunkWriter
from concilium.vocabulary import Reduction, Split

log = logging.getLogger(__name__)


def check_members(members: Sequence[tuple[nn.Module, Any]], data: ImageDataset, target: str) -> None:
    """Members must fit the data (classes, channels, unique ids) and the target must resolve for
    each of them (checked on one image).

    Raises:
        ValueError: naming the member and the mismatch.
    """

    image = data.images[:1]
    ids = [card.member_id for _, card in members]
    if len(set(ids)) != len(ids):
        raise ValueError(f"member ids must be unique; got {ids}")
    for model, card in members:
        names = list(getattr(card, "class_names", []) or [])
        if names and data.class_names and names != list(data.class_names):
            raise ValueError(
                f"member {card.member_id} was trained on classes {names[:5]}..., the data has "
                f"{list(data.class_names)[:5]}...; explain it on the data it was trained for"
            )
        channels = getattr(card, "in_channels", image.shape[1])
        if channels != image.shape[1]:
            raise ValueError(
                f"member {card.member_id} takes {channels}-channel images; the data has "
                f"{image.shape[1]}"
            )
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        resolve_target(
            model.eval(), image.to(device), target, labels=data.labels[:1].to(device),
            attribute_names=list(getattr(card, "attribute_names", []) or []),
        )


def explain_to_store(
    store: ExplanationStore,
    data: ImageDataset,
    members: Sequence[tuple[nn.Module, Any]],
    methods: Sequence[str],
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    target: str = "label",
    reduction: str = "sum",
    baseline: str = "zero",
    seed: int = 0,
    dtype: Literal["float32", "float16"] = "float32",
    chunk_size: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    meta: Mapping[str, Any] | None = None,
    on_chunk: Callable[[ChunkEvent], None] | None = None,
    engine: Engine | None = None,
) -> list[EntryReport]:
    """Explain every member with every method into ``store``, computing only what is missing.

    Args:
        store: the run's store.
        data: the samples to explain (rows of every entry, in this order).
        members: ``[(model, card), ...]`` as :func:`concilium.models.load_sources` or
            :func:`concilium.models.as_member` give them (any classifier ``nn.Module``); the
            card's ``member_id`` is the entry source.
        methods: method names of :data:`concilium.explain.METHODS`.
        method_options: per method, parameters overriding its defaults
            (``{"integrated_gradients": {"n_steps": 100}}``).
        target: target spec (``label``, ``pred``, ``<int>``, ``attr:<name>``, ``contrast:<t>``).
        reduction: channel reduction of the maps.
        baseline: baseline spec string (``zero``, ``blur:sigma=4``, ...) or ``ganmex:GEN``
            (a trained GANMEX generator: one provider per member, checked against the member
            and caching every baseline ``G(x, t)`` in ``store``, see :func:`member_baselines`).
        seed: seed of every stochastic choice (per chunk, see the module docstring).
        dtype: storage type, ``"float32"`` or ``"float16"``.
        chunk_size: samples per stored chunk for new entries (default 64).
        batch_size: model-input rows per call (``None``: the memory-budget plan's choice, made once
            per run and architecture, see :func:`concilium.jobs.explain_plan.auto_batch_size`).
        device: where the models run.
        meta: extra entry metadata (dataset fingerprint, ...).
        on_chunk: called after every computed chunk (progress bars).
        engine: where the chunks are computed (default: this process; a
            :class:`~concilium.jobs.ray_engine.RayEngine` computes the units of
            :func:`explain_units` on its workers, which write the maps into ``store``, so the
            store must be on storage every worker sees). Every engine writes the same bytes.

    Returns:
        One :class:`EntryReport` per member and method, in order.

    Raises:
        ValueError: on an unknown method, parameter, reduction, target or baseline, or members
            that do not fit the data, before any compute.
    """

    options = {k: dict(v) for k, v in (method_options or {}).items()}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for methods {unknown} that are not being run: "
                         f"add them to the methods ({', '.join(methods)}) or drop the parameters")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if not members:
        raise ValueError("no members to explain; pass [(model, card), ...] from load_sources "
                         "or as_member")
    check_members(members, data, target)
    device = torch.device(device)
    baselines = member_baselines(baseline, members, data, device=device, store=store)
    plans = plan_members(
        store, data, members, methods, method_options=options, target=target,
        reduction=reduction, baseline=baselines, seed=seed, dtype=dtype, chunk_size=chunk_size,
        batch_size=batch_size, device=device, meta=meta or {},
    )
    reports = {
        (p.source, m): EntryReport(p.source, m, e.params_hash) for p in plans
        for m, e in p.entries.items()
    }
    for p in plans:
        for m, e in p.entries.items():
            reports[(p.source, m)].chunks_reused = int(e.done_chunks().sum())
            reports[(p.source, m)].chunks_repaired = len(p.repaired.get(m, []))
            for bad in p.repaired.get(m, []):
                log.warning("entry %s/%s/%s: chunk %d (rows %d-%d) was damaged on disk (%s); "
                            "recomputing it", p.source, m, e.params_hash, bad.chunk, bad.rows[0],
                            bad.rows[1] - 1, bad.reason)
    total = sum((stop - start) * len(ms) for p in plans for (start, stop), ms in p.missing.items())
    if engine is not None and not isinstance(engine, InProcessEngine):
        _explain_on(engine, store, data, plans, reports, total, on_chunk, ExplainWork(
            run_dir=str(store.run_dir), data=data,
            members=[(p.model, p.card) for p in plans if p.missing],
            method_options=options, target=target, reduction=reduction, baselines=baselines,
            seed=seed, batch_sizes={p.source: p.batch_sizes for p in plans},
            entry_params={(p.source, m): e.params for p in plans for m, e in p.entries.items()},
            device=str(device),
        ))
        return list(reports.values())
    done = 0
    writer = ChunkWriter(max_pending=2 * max(1, len(methods)), background=device.type != "cpu")
    try:
        for plan in plans:
            if not plan.missing:
                continue
            model = plan.model.to(device).eval()
            for (start, stop), chunk_methods in sorted(plan.missing.items()):
                images = data.images[start:stop].to(device)
                labels = data.labels[start:stop].to(device)
                for method, maps, seconds in compute_chunk(
                    model, images, labels, chunk_methods, card=plan.card, source=plan.source,
                    start=start, method_options=options, target=target, reduction=reduction,
                    baseline=baselines[plan.source], seed=seed, batch_sizes=plan.batch_sizes,
                ):
                    writer.submit(plan.entries[method], start, maps)
                    report = reports[(plan.source, method)]
                    report.chunks_computed += 1
                    report.rows_computed += stop - start
                    report.seconds += seconds
                done += (stop - start) * len(chunk_methods)
                if on_chunk is not None:
                    on_chunk(ChunkEvent(plan.source, stop - start, list(chunk_methods), done, total))
    finally:
        writer.close()  # finishes every computed chunk (never loses finished work)
    return list(reports.values())


@dataclass(frozen=True)
class ExplainUnit:
    """One unit of a distributed explanation: the chunk ``[start, stop)`` of member ``source``
    for ``methods`` (one method, or the missing methods of one shared pass)."""

    source: str
    methods: tuple[str, ...]
    start: int
    stop: int


def explain_units(plans: Sequence[ExplainPlan]) -> list[ExplainUnit]:
    """The units of the missing chunks of ``plans``, chunk by chunk: one per member, chunk and
    method, except that the shared-pass methods of a chunk (``SHARED_PASS``, when the run asks
    for more than one) are one unit, computed together as :func:`compute_chunk` always does."""
    units = []
    for plan in plans:
        shared_all = [m for m in SHARED_PASS if m in plan.batch_sizes]
        for (start, stop), methods in sorted(plan.missing.items()):
            shared = [m for m in methods if m in shared_all] if len(shared_all) > 1 else []
            if shared:
                units.append(ExplainUnit(plan.source, tuple(shared), start, stop))
            units += [ExplainUnit(plan.source, (m,), start, stop)
                      for m in methods if m not in shared]
    return units


@dataclass
class ExplainWork:
    """The computation of a distributed explanation (see :class:`concilium.jobs.engine.Work`):
    each worker opens the store at ``run_dir`` and moves the members to ``device`` once; a step
    computes one :class:`ExplainUnit` with :func:`compute_chunk` (the in-process code path,
    seeded per chunk) and writes its maps without marking them; the driver marks them."""

    run_dir: str
    data: ImageDataset
    members: list[tuple[nn.Module, Any]]
    method_options: Mapping[str, Mapping[str, Any]]
    target: str
    reduction: str
    baselines: Mapping[str, BaselineSpec]
    seed: int
    batch_sizes: Mapping[str, Mapping[str, int]]
    entry_params: Mapping[tuple[str, str], Mapping[str, Any]]
    device: str = "cpu"

    def setup(self) -> dict[str, Any]:
        device = torch.device(self.device)
        return {
            "store": ExplanationStore(self.run_dir),
            "models": {card.member_id: (model.to(device).eval(), card)
                       for model, card in self.members},
            "device": device,
            "entries": {},
        }

    def step(self, state: dict[str, Any], unit: ExplainUnit) -> dict[str, float]:
        model, card = state["models"][unit.source]
        device = state["device"]
        seconds = {}
        for method, maps, spent in compute_chunk(
            model, self.data.images[unit.start:unit.stop].to(device),
            self.data.labels[unit.start:unit.stop].to(device), unit.methods, card=card,
            source=unit.source, start=unit.start, method_options=self.method_options,
            target=self.target, reduction=self.reduction,
            baseline=self.baselines[unit.source], seed=self.seed,
            batch_sizes=self.batch_sizes[unit.source],
        ):
            key = (unit.source, method)
            if key not in state["entries"]:
                found = state["store"].lookup(unit.source, method, self.entry_params[key])
                if found is None:
                    raise ValueError(f"entry {unit.source}/{method} is not in the store at "
                                     f"{self.run_dir} seen by this worker; put the run on "
                                     "storage every worker sees (see docs/distributed.md)")
                state["entries"][key] = found
            state["entries"][key].write(unit.start, maps, mark=False)
            seconds[method] = spent
        return seconds


def _explain_on(engine: Engine, store: ExplanationStore, data: ImageDataset,
                plans: Sequence[ExplainPlan], reports: Mapping[tuple[str, str], EntryReport],
                total: int, on_chunk: Callable[[ChunkEvent], None] | None,
                work: ExplainWork) -> None:
    """Run the missing chunks of ``plans`` on ``engine``; mark each chunk done in the driver
    once its worker has written it (the driver is the done markers' one writer)."""
    entries = {(p.source, m): e for p in plans for m, e in p.entries.items()}
    done = 0

    def on_result(unit: ExplainUnit, seconds: Mapping[str, float]) -> None:
        nonlocal done
        for method in unit.methods:
            entries[(unit.source, method)].mark_done(unit.start, unit.stop)
            report = reports[(unit.source, method)]
            report.chunks_computed += 1
            report.rows_computed += unit.stop - unit.start
            report.seconds += seconds[method]
        done += (unit.stop - unit.start) * len(unit.methods)
        if on_chunk is not None:
            on_chunk(ChunkEvent(unit.source, unit.stop - unit.start, list(unit.methods), done,
                                total))

    engine.run(work, explain_units(plans), on_result)


def compute_chunk(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    methods: Sequence[str],
    *,
    card: Any,
    source: str,
    start: int,
    method_options: Mapping[str, Mapping[str, Any]],
    target: str,
    reduction: str,
    baseline: BaselineSpec,
    seed: int,
    batch_sizes: Mapping[str, int],
) -> Iterator[tuple[str, Tensor, float]]:
    """Yield the maps of one chunk for each of ``methods``: ``(method, (n, H, W) CPU, seconds)``,
    as soon as each exists, so that the caller writes it at once.

    ``batch_sizes`` holds every method of the run (missing in this chunk or not): the
    shared-pass methods among them (``SHARED_PASS``) are computed together by ``explain_many``
    whenever one of them is missing, so the chunk's code path never depends on what a killed run
    had already finished.
    """

    attribute_names = list(getattr(card, "attribute_names", []) or [])

    def run(group: list[str], rows: int) -> dict[str, Tensor]:
        # a fresh CPU generator per call on every device: explain draws one base seed from it
        return explain_many(
            model, images, target, {m: method_options.get(m, {}) for m in group},
            reduction=reduction, baseline=baseline, labels=labels,
            attribute_names=attribute_names, batch_size=rows,
            generator=torch.Generator().manual_seed(derive_seed(seed, source, start)),
        )

    shared_all = [m for m in SHARED_PASS if m in batch_sizes]
    groups: dict[int, list[str]] = {}
    for m in shared_all if len(shared_all) > 1 and set(shared_all) & set(methods) else []:
        groups.setdefault(batch_sizes[m], []).append(m)
    grouped = {m for ms in groups.values() for m in ms}
    for rows, group in groups.items():
        t0 = time.perf_counter()
        out = run(group, rows)
        seconds = (time.perf_counter() - t0) / len(group)
        for m in group:
            if m in methods:
                yield m, out[m].detach().to("cpu", torch.float32), seconds
    for method in methods:
        if method in grouped:
            continue
        t0 = time.perf_counter()
        maps = run([method], batch_sizes[method])[method]
        yield method, maps.detach().to("cpu", torch.float32), time.perf_counter() - t0


class ExplainOptions(BaseModel):
    """What an explanation run computes (``concilium explain`` flags, the ``[explain]`` section).

    Attributes:
        methods: method names of :data:`concilium.explain.METHODS`.
        params: per method, parameters overriding its defaults (``[explain.params.smoothgrad]``).
        split: the split explained; ``"all"`` also gives the CNN ensembler its training maps.
        limit: explain only the first ``limit`` samples of the split (``None``: all).
        batch_size: images per pass (``None``: chosen automatically).
        target: ``label``, ``pred``, ``<int>``, ``attr:<name>`` or ``contrast:<t>``.
        baseline: baseline spec of path/perturbation methods (``zero``, ``blur:sigma=4``,
            ``ganmex:GEN``, ...).
        reduction: channel reduction of the maps.
        seed: seed of the stochastic methods.
        float16: store maps as float16.
        chunk_size: samples per stored chunk.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: list[str] = Field(
        default_factory=lambda: list(PAPER_METHODS),
        description="explanation methods (names of concilium.explain.METHODS)")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per method, parameters overriding its defaults")
    split: Split = Field("test", description="the split explained (all: every sample)")
    limit: int | None = Field(None, ge=1, description="explain the first N of the split")
    batch_size: int | None = Field(
        None, ge=1, description="model-input rows per call (default: the memory-budget "
                                "plan's choice, recorded per entry)")
    target: str = Field("label", description="label, pred, <int>, attr:<name|index> or "
                                             "contrast:<t>")
    baseline: str = Field(
        "zero", description="zero, black, blur[:sigma=s], uniform, image_mean, or ganmex:GEN "
                            "(a trained GANMEX generator; with --target contrast:<t> each "
                            "baseline is G(x, t), cached in the run's store)")
    reduction: Reduction = Field("sum", description="how channels become one map")
    seed: int = Field(0, description="seed of every stochastic method")
    float16: bool = Field(False, description="store maps as float16 (half the disk)")
    chunk_size: int = Field(64, ge=1, description="samples per stored chunk")

    @model_validator(mode="after")
    def _check(self) -> ExplainOptions:
        check_methods(self.methods, self.params)
        try:
            check_baseline_spec(self.baseline)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise ValueError(f"baseline: {err}") from None
        return self


PAPER_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "gradcam")
"""The five methods of the ensembles paper: the default of an explanation run."""


def check_methods(methods: Sequence[str], params: Mapping[str, Mapping[str, Any]]) -> None:
    """Methods exist in the registry, without repeats; parameters match their signatures.

    Raises:
        ValueError: naming the method or parameter and the valid ones.
    """
    if not methods:
        raise ValueError(f"methods: empty; pick from: {', '.join(METHODS.names())}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: unknown method {m!r}; valid: {', '.join(METHODS.names())}")
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise ValueError(f"methods: names {repeated} more than once")
    for m, p in params.items():
        if m not in methods:
            raise ValueError(f"params.{m}: is for a method not in methods ({', '.join(methods)}); "
                             "add it to methods or drop the parameters")
        try:
            method_params(m, **dict(p))
        except (ValueError, TypeError) as err:
            raise ValueError(f"params.{m}: {err}") from None


@holds_run_lock
def explain_run(
    out: str | Path,
    *,
    dataset: DatasetSpec,
    models: str | Path | Sequence[str | Path],
    options: ExplainOptions,
    device: str = "cpu",
    on_chunk: Callable[[ChunkEvent], None] | None = None,
    engine: Engine | None = None,
) -> list[EntryReport]:
    """Start or extend the explanation run ``out``: load the data and the members, check them,
    record ``RUN/run.json`` and explain every member with every method into ``RUN``'s store,
    computing only what is missing. ``concilium explain`` and the pipeline both call this.

    Args:
        out: the run directory (created if needed).
        dataset: the data (all splits; ``options.split`` selects).
        models: the member sources (:mod:`concilium.models.sources`): a members folder,
            ``hf:DIR``, ``timm:NAME@WEIGHTS``, ``torchvision:NAME@WEIGHTS``,
            ``python:MODULE:FACTORY``, or several of them (one ensemble).
        options: what to compute.
        device: where the models run.
        on_chunk: called after every computed chunk (progress displays).
        engine: where the chunks are computed (default: this process).

    Returns:
        One :class:`EntryReport` per member and method.

    Raises:
        FileNotFoundError: a member source is missing.
        ValueError: ``out`` is a file, a bad member source, members that do not fit the data,
            a baseline unfit for a member, or a run recorded with other data or settings
            (naming the difference).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory")
    sources = [s.text for s in parse_sources(models)]
    full = dataset.load()
    data = select_split(full, options.split, options.limit)
    members = load_sources(sources, class_names=data.class_names, device="cpu")
    check_members(members, data, options.target)
    member_baselines(options.baseline, members, data, device=device)  # a generator must fit
    info = RunInfo(
        dataset=dataset, dataset_fingerprint=full.fingerprint(), split=options.split,
        limit=options.limit, sample_ids=data.ids, models=sources,
        member_ids=[card.member_id for _, card in members],
        member_fingerprints={card.member_id: state_fingerprint(m) for m, card in members},
        methods=list(options.methods), device=device, target=options.target, seed=options.seed,
    )
    if (out / RUN_FILE).is_file():
        info = RunInfo.load(out).merged_with(info)  # raises if the run was made differently
    store = ExplanationStore(out)
    info.save(out)
    return explain_to_store(
        store, data, members, list(options.methods), method_options=options.params,
        target=options.target, reduction=options.reduction, baseline=options.baseline,
        seed=options.seed, dtype="float16" if options.float16 else "float32",
        chunk_size=options.chunk_size, batch_size=options.batch_size, device=device,
        meta={"dataset_fingerprint": info.dataset_fingerprint, "split": options.split},
        on_chunk=on_chunk, engine=engine,
    )
