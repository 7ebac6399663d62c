"""Evaluate every stored explanation of a run with a set of metrics (``concilium evaluate``).

Which model a model-bound metric uses, per source:

* a member source (``m0``, ``m1``, ...): that member;
* ``ens-logit``: the averaged-logit ensemble of all members (``concilium.ensemble.LogitEnsemble``);
* any other ensemble source (``ens-avg``, ``consensus``, ``weighted``, ...): the member ``m0``
  (the first member). Faithfulness then asks "does this map find what ``m0`` relies on".

Metrics that call the explanation method (robustness, randomisation) need the method that made
the map; an ensemble map has no such single method, so for ensemble sources other than
``ens-logit`` they are skipped, with a note, rather than measuring a stand-in. Targets are the
entry's recorded target spec (``label``, ``pred``, an int, ``attr:...``); contrast targets skip the
model-bound metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.ensemble.averaging import LogitEnsemble, ens_logit_maps
from concilium.explain import METHODS, explain
from concilium.explain.targets import resolve_target
from concilium.jobs.engine import Engine, InProcessEngine, PreparedWork
from concilium.metrics.evaluate import check_params, evaluate
from concilium.metrics.perturb import model_device
from concilium.metrics.registry import METRICS, metrics_in
from concilium.metrics.shared import shared_passes
from concilium.store import ResultsTable, Run, group_rows, metric_params_hash
from concilium.store.lock import holds_run_lock
from concilium.vocabulary import SPLITS, Split

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 64
MASK_ONLY_CHUNK = 512  # mask-only metrics are cheap per image: fewer, larger calls


@dataclass
class EvaluateReport:
    """What :func:`evaluate_run` did: groups computed, skipped as done, and skipped with why.

    Attributes:
        computed: the groups computed now.
        already_done: the groups found in the table.
        notes: every group skipped, with why (incomplete entries, no model, ...).
        not_computed: the groups whose explainer failed on the model (also in ``notes``).
        in_sample: one warning per entry scored on rows its ensembler was fitted on (also
            emitted with :func:`warnings.warn` and logged).
    """

    computed: list[tuple[str, ...]] = field(default_factory=list)
    already_done: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_computed: list[str] = field(default_factory=list)
    in_sample: list[str] = field(default_factory=list)


def in_sample_rows(params: Mapping[str, Any], sample_ids: Sequence[str]) -> list[bool]:
    """Per sample: whether the entry's map of it came from an ensembler fitted on it (the
    entry's ``fit_ids``, recorded by the CNN ensembler; other entries have none)."""
    fit = set(params.get("fit_ids", ()))
    return [s in fit for s in sample_ids]


def in_sample_warning(source: str, method: str, count: int, total: int) -> str:
    """The warning for an entry scored on ``count`` of ``total`` rows it was fitted on."""
    return (f"{source}/{method} is scored on {count} of {total} rows its ensembler was trained "
            "or early-stopped on (in-sample; marked in_sample in the metrics table): its scores "
            "there are optimistic. Score held-out rows (--split test) or cross-fit the ensembler "
            "(crossfit = k)")


def load_metric_params(
    path: str | Path | None, metrics: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Read ``metrics.toml`` (one table per metric: ``[top_k_intersection] k = 500``) and check
    every key against the metric's real signature.

    Raises:
        ValueError: an unknown metric, a metric not selected, or an unknown parameter.
    """
    if path is None:
        return {}
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    out: dict[str, dict[str, Any]] = {}
    for name, params in raw.items():
        spec = METRICS.get(name)
        if not isinstance(params, dict):
            raise ValueError(f"{path}: [{name}] must be a table of parameters; got {params!r}")
        if name not in metrics:
            raise ValueError(f"{path}: parameters for {name!r}, which is not among --metrics")
        check_params(spec, params)
        out[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return out


def entry_metric_seed(seed: int, source: str, method: str, entry_hash: str, *,
                      start: int = 0) -> int:
    """The seed of every stochastic metric of one chunk of one stored explanation (the chunk
    whose first row is ``start``): one per entry and chunk, not per metric, so the metrics of the
    entry draw the same tie orders and noisy copies and the shared store
    (:func:`~concilium.metrics.shared.shared_passes`) computes each of them once; and not per
    worker, so every engine draws the same numbers."""
    return derive_seed(seed, source, method, entry_hash, "metrics", start)


def _explainer(
    params: Mapping[str, Any], seed: int
) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
    if "method_params" not in params or "method" not in params:
        return None

    def explainer(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        extra = {"reduction": params.get("reduction", "sum"),
                 "baseline": params.get("baseline", "zero"),
                 "generator": torch.Generator().manual_seed(seed), **params["method_params"]}
        spec = METHODS.get(params["method"]) if params["method"] in METHODS else None
        if isinstance(model, LogitEnsemble) and spec is not None and spec.needs_layer:
            # a layer method on the averaged-logit model (or its randomised copy): the ensemble
            # has no single layer of its own, Ens-Logit defines it (shared layer or the sum over
            # the members' layers), as when the map was made
            return ens_logit_maps(list(model.members), images, targets, method=params["method"],
                                  params=extra)
        return explain(model, images, targets, method=params["method"], **extra)

    return explainer


@holds_run_lock
def evaluate_run(
    run_dir: str | Path,
    metrics: Sequence[str],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    mask: str = "masks",
    split: Split = "test",
    limit: int | None = None,
    costly_limit: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    shared: bool = True,
    progress: Callable[[str], None] | None = None,
    on_group: Callable[[int, int], None] | None = None,
    engine: Engine | None = None,
) -> EvaluateReport:
    """Compute ``metrics`` for every complete entry of ``RUN/explanations.zarr`` and append the
    rows to ``RUN/results/metrics.parquet`` (+ ``.csv``), one write per finished explanation;
    groups already in the table are skipped (resumable).

    The work is cut into :class:`EvaluateUnit` s (one entry, the metrics that share a row step,
    one chunk of rows), computed by ``engine``; every stochastic metric of a chunk is seeded from
    the entry and the chunk's first row (:func:`entry_metric_seed`), so every engine gives the
    same values.

    Args:
        run_dir: the run directory (``run.json`` + the store).
        metrics: metric names and/or family names (resolved by
            :func:`concilium.metrics.metrics_in`, in registry order).
        params: per-metric parameters (checked against each metric's signature).
        mask: the ground-truth mask set: ``"masks"`` (the object) or a named set (``evidence``,
            a part).
        split: score only the explained samples of this split (``"all"``: every one). The
            default, ``"test"``, keeps the rows an ensembler may have been fitted on (a run that
            explained ``all``) out of the scores; a run that explained a single split is scored
            on it whatever this says.
        limit: score only the first ``limit`` of those samples.
        costly_limit: at most this many samples for the metrics that need the model.
        device: where models and images go (default: the run's device).
        batch_size: perturbed copies per forward pass for metrics with a ``batch_size``.
        seed: base seed of the stochastic metrics (one generator per entry and chunk).
        chunk: samples per :func:`~concilium.metrics.evaluate` call of a model-bound metric
            (mask-only metrics take up to ``MASK_ONLY_CHUNK`` at once; a ``batch_relative``
            metric, whose score depends on the other images of its call, takes all at once).
        shared: evaluate the metrics of each unit in one
            :func:`~concilium.metrics.shared.shared_passes` scope (each distinct perturbed copy
            and explanation computed once). ``False`` computes every metric on its own (same
            values; the reference of ``benchmarks/shared_engine.py``).
        progress: called with one line per finished group.
        on_group: called with ``(groups done, groups in all)`` after each (entry, metric)
            group, computed, skipped or found in the table (progress displays).
        engine: where the units are computed (default: this process; a
            :class:`~concilium.jobs.ray_engine.RayEngine` opens the run on each worker, so the
            run must be on storage every worker sees).

    Returns:
        An :class:`EvaluateReport`.
    """
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join((*SPLITS, 'all'))}; got {split!r}")
    metrics = metrics_in(",".join(metrics))
    params = {k: dict(v) for k, v in (params or {}).items()}
    for name in metrics:
        check_params(METRICS.get(name), params.get(name, {}))
        if batch_size is not None and "batch_size" in METRICS.get(name).params:
            params.setdefault(name, {}).setdefault("batch_size", batch_size)
    need_model = any(METRICS.get(m).needs_model for m in metrics)
    work = EvaluateWork(run_dir=str(run_dir), metrics=tuple(metrics), params=params, mask=mask,
                        split=split, limit=limit, need_model=need_model, device=device,
                        seed=seed, shared=shared)
    state = work.setup()
    work = dataclasses.replace(work, device=str(state["device"]))  # workers: the driver's choice
    store, data, members = state["store"], state["data"], state["members"]
    entries = store.entries()
    report = EvaluateReport()
    incomplete = entries[~entries["complete"]]
    for _, row in incomplete.iterrows():
        report.notes.append(f"{row.source}/{row.method}/{row.params_hash}: incomplete, skipped")
    entries = entries[entries["complete"]]
    table = ResultsTable(run_dir)
    done = table.done_groups()
    by_id = {card.member_id: model for model, card in members}
    warned: set[str] = set()  # entries warned about being scored in-sample
    units: list[EvaluateUnit] = []
    groups: dict[tuple[str, ...], _Group] = {}  # (source, method, hash, metric, phash) -> group
    pending: dict[tuple[str, str, str], int] = {}  # entry -> groups not finished yet
    for _, row in entries.iterrows():
        entry = store.get(row.source, row.method, row.params_hash)
        model, why_not_model = _model_for(row.source, by_id, members)
        explained = entry.params.get("explain", entry.params)
        why_not_target = None
        if need_model and model is not None:
            why_not_target = _target_problem(explained, model, data, state["device"])
        has_explainer = "method_params" in explained and "method" in explained and (
            row.source in by_id or row.source == "ens-logit")
        entry_key = (row.source, row.method, row.params_hash)
        sets: dict[tuple[int, int], list[str]] = {}  # (rows k, step) -> metrics
        for metric in metrics:
            spec = METRICS.get(metric)
            phash, pjson = metric_params_hash(metric, params.get(metric, {}), mask=mask)
            key = (*entry_key, metric, phash)
            if key in done:
                report.already_done.append(key)
                continue
            what = f"{row.source}/{row.method}/{metric}"
            if spec.needs_model and (model is None or why_not_target is not None):
                report.notes.append(f"{what}: skipped ({why_not_model or why_not_target})")
                continue
            if spec.needs_explainer and not has_explainer:
                report.notes.append(
                    f"{what}: skipped (the map of source {row.source!r} has no single explanation "
                    "method to re-run)"
                )
                continue
            k = len(data)
            if spec.needs_model and costly_limit is not None:
                k = min(k, costly_limit)
            if k == 0:
                continue
            in_sample = in_sample_rows(entry.params, data.ids[:k])
            if any(in_sample) and row.params_hash not in warned:
                warned.add(row.params_hash)
                message = in_sample_warning(row.source, row.method, sum(in_sample), k)
                warnings.warn(message, stacklevel=2)
                log.warning(message)
                report.in_sample.append(message)
            step = chunk if spec.needs_model else max(chunk, MASK_ONLY_CHUNK)
            if spec.batch_relative:  # its score depends on the batch: the whole split at once
                step = k
            sets.setdefault((k, step), []).append(metric)
            groups[key] = _Group(key=key, what=what, k=k, params=pjson, in_sample=in_sample,
                                 chunks=-(-k // step))
        for (k, step), names in sets.items():
            units += [EvaluateUnit(*entry_key, tuple(names), start, min(k, start + step))
                      for start in range(0, k, step)]
        n_groups = sum(len(names) for names in sets.values())
        if n_groups:
            pending[entry_key] = n_groups
    finished: dict[tuple[str, str, str], list[tuple[int, pd.DataFrame]]] = {}
    # progress in (entry, metric) groups: the skipped and already-scored ones are done now
    groups_total = len(entries) * len(metrics)
    groups_done = groups_total - len(groups)
    if on_group is not None:
        on_group(groups_done, groups_total)

    def on_result(unit: EvaluateUnit, values: Mapping[str, list[float] | str]) -> None:
        nonlocal groups_done
        entry_key = (unit.source, unit.method, unit.entry_hash)
        for metric, got in values.items():
            phash = metric_params_hash(metric, params.get(metric, {}), mask=mask)[0]
            group = groups[(*entry_key, metric, phash)]
            if group.failed is not None:
                continue
            if isinstance(got, str):  # the explanation method failed on the model
                group.failed = note = f"{group.what}: not computed, the explainer failed: {got}"
                report.notes.append(note)
                report.not_computed.append(note)
            else:
                group.values[unit.start] = got
                if len(group.values) < group.chunks:
                    continue
                scores = torch.tensor([v for s in sorted(group.values) for v in group.values[s]],
                                      dtype=torch.float64)
                finished.setdefault(entry_key, []).append(
                    (metrics.index(metric), group.rows(data, unit, metric, mask)))
                report.computed.append(group.key)
                if progress is not None:
                    finite = scores[torch.isfinite(scores)]
                    mean = f"{finite.mean().item():.4g}" if finite.numel() else "nan"
                    progress(f"{group.what}: mean {mean} over {finite.numel()}/"
                             f"{scores.numel()} samples")
            pending[entry_key] -= 1
            groups_done += 1
            if on_group is not None:
                on_group(groups_done, groups_total)
            if pending[entry_key] == 0 and finished.get(entry_key):
                # one table write per explanation: a write per metric is quadratic
                rows = [df for _, df in sorted(finished.pop(entry_key), key=lambda x: x[0])]
                table.append(pd.concat(rows, ignore_index=True))

    runner = engine or InProcessEngine()
    if isinstance(runner, InProcessEngine):  # this process has the run open already
        runner.run(PreparedWork(work, state), units, on_result)
    else:
        runner.run(work, units, on_result)
    return report


@dataclass(frozen=True)
class EvaluateUnit:
    """One unit of evaluation: rows ``[start, stop)`` of one entry, scored with ``metrics``
    (the entry's missing metrics that share one row step)."""

    source: str
    method: str
    entry_hash: str
    metrics: tuple[str, ...]
    start: int
    stop: int


@dataclass
class _Group:
    """One (entry, metric) group being assembled from its chunks in the driver."""

    key: tuple[str, ...]
    what: str
    k: int
    params: str
    in_sample: list[bool]
    chunks: int
    values: dict[int, list[float]] = field(default_factory=dict)
    failed: str | None = None

    def rows(self, data: Any, unit: EvaluateUnit, metric: str, mask: str) -> pd.DataFrame:
        return group_rows(
            samples=data.ids[:self.k], labels=data.labels[:self.k].tolist(), source=unit.source,
            method=unit.method, entry_hash=unit.entry_hash, metric=metric, mask=mask,
            values=[v for s in sorted(self.values) for v in self.values[s]],
            params_hash=self.key[-1], params=self.params, in_sample=self.in_sample,
        )


@dataclass
class EvaluateWork:
    """The computation of an evaluation (see :class:`concilium.jobs.engine.Work`): each worker
    opens the run (data, masks, members loaded once); a step scores one
    :class:`EvaluateUnit` and returns, per metric, the chunk's values or why the explanation
    method failed."""

    run_dir: str
    metrics: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    mask: str
    split: Split
    limit: int | None
    need_model: bool
    device: str | None
    seed: int
    shared: bool

    def setup(self) -> dict[str, Any]:
        run = Run.open(self.run_dir, load_models=self.need_model, device=self.device, mode="r")
        data, members = run.data, run.members
        if self.split != "all" and self.split in data.splits and len(set(data.splits)) > 1:
            data = data.subset(self.split)
        if self.limit is not None:
            data = data.subset(list(range(min(self.limit, len(data)))))
        masks = (data.mask_set(self.mask)
                 if any(METRICS.get(m).needs_mask for m in self.metrics) else None)
        if self.device is not None:
            dev = torch.device(self.device)
        else:
            dev = model_device(members[0][0]) if members else torch.device("cpu")
        return {"store": run.store, "data": data, "members": members, "masks": masks,
                "device": dev, "by_id": {card.member_id: m for m, card in members},
                "entries": {}, "models": {}}

    def step(self, state: dict[str, Any], unit: EvaluateUnit) -> dict[str, list[float] | str]:
        data, dev = state["data"], state["device"]
        entry_key = (unit.source, unit.method, unit.entry_hash)
        if entry_key not in state["entries"]:
            state["entries"][entry_key] = state["store"].get(*entry_key)
        entry = state["entries"][entry_key]
        if unit.source not in state["models"]:
            state["models"][unit.source] = _model_for(unit.source, state["by_id"],
                                                      state["members"])[0]
        model = state["models"][unit.source]
        explained = entry.params.get("explain", entry.params)
        sl = slice(unit.start, unit.stop)
        maps = entry.read(entry.rows_of(data.ids[sl]))
        specs = {m: METRICS.get(m) for m in unit.metrics}
        images = targets = target_model = None
        if any(s.needs_model for s in specs.values()):
            images = data.images[sl].to(dev)
            target = resolve_target(model.to(dev).eval(), images, explained.get("target", "label"),
                                    labels=data.labels[sl].to(dev))
            targets, target_model = target.classes.to(dev), target.module
        explainer = (
            _explainer(explained, derive_seed(self.seed, *entry_key))
            if unit.source in state["by_id"] or unit.source == "ens-logit"
            else None
        )
        metric_seed = entry_metric_seed(self.seed, *entry_key, start=unit.start)
        out: dict[str, list[float] | str] = {}
        with shared_passes() if self.shared else contextlib.nullcontext():
            for metric, spec in specs.items():
                gen = torch.Generator().manual_seed(metric_seed) if spec.stochastic else None
                try:
                    values = evaluate(
                        metric, maps.to(dev),
                        images=images if spec.needs_model else None,
                        labels=targets if spec.needs_model else None,
                        masks=(state["masks"][sl].to(dev) if spec.needs_mask else None),
                        model=target_model if spec.needs_model else None,
                        explainer=explainer, generator=gen, **self.params.get(metric, {}),
                    )
                except (ValueError, TypeError, RuntimeError) as err:
                    if not spec.needs_explainer:
                        raise
                    # the explanation method itself fails on this model (GradCAM of a wrapper)
                    out[metric] = str(err)
                    continue
                out[metric] = values.cpu().tolist()
        return out


def _model_for(
    source: str, by_id: Mapping[str, nn.Module], members: Sequence[tuple[nn.Module, Any]]
) -> tuple[nn.Module | None, str | None]:
    if not members:
        return None, "no models loaded"
    if source in by_id:
        return by_id[source], None
    if source == "ens-logit":
        return LogitEnsemble([m for m, _ in members]).eval(), None
    return members[0][0], None


def _target_problem(params: Mapping[str, Any], model: nn.Module, data: Any,
                    device: torch.device) -> str | None:
    """Why the entry's target cannot score model-bound metrics (``None``: it can), checked on
    one image."""
    spec = params.get("target", "label")
    target = resolve_target(model.to(device).eval(), data.images[:1].to(device), spec,
                            labels=data.labels[:1].to(device))
    if target.forward_args is not None:
        return f"target {spec!r} needs extra forward arguments (contrast)"
    return None
