"""Fill the store: explain every member with every method, chunk by chunk, resumably.

:func:`explain_to_store` is what ``concilium explain`` and the pipeline call. For each member it
opens (or creates) one entry per method, then walks the union of the missing chunks; each chunk's
images go once to the device, the methods missing it are computed (sharing passes through
``explain_many`` where the methods allow) and every map is written as soon as it exists. Complete
entries cost nothing.

Determinism: a resumed run ends byte-identical to an uninterrupted one (same device and library
versions), because nothing a chunk's maps depend on changes between processes:

- random numbers: each chunk's generator is seeded by ``(seed, member, first row)``; ``explain``
  draws one base seed from it and mixes in the method name and the image index;
- batching: the rows per model call (``batch_size``; when not given, chosen by the timing probe
  of :func:`concilium.explain.probe` once per run and architecture, see :func:`auto_batch_size`)
  are recorded in each entry's ``meta`` and reused for that entry when the run resumes, so
  Captum's partial sums add up in the same order;
- shared passes: whenever a chunk needs any of ``saliency``, ``input_x_gradient``, ``gradcam``,
  all of those the run asks for are computed together by ``explain_many`` (finished ones are not
  rewritten), so a chunk always takes the same code path.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.data.dataset import ImageDataset
from concilium.store.entry import Entry
from concilium.store.store import ExplanationStore

if TYPE_CHECKING:
    from concilium.explain.baselines import BaselineSpec


@dataclass
class EntryReport:
    """What happened to one ``(member, method)`` entry.

    Attributes:
        source: member id.
        method: method name.
        params_hash: the entry's hash.
        chunks_computed: chunks computed in this call.
        chunks_reused: chunks already finished before this call.
        rows_computed: maps computed in this call.
        seconds: compute time spent on this entry in this call.
    """

    source: str
    method: str
    params_hash: str
    chunks_computed: int = 0
    chunks_reused: int = 0
    rows_computed: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> Literal["computed", "resumed", "reused"]:
        """``reused`` (nothing computed), ``computed`` (all of it) or ``resumed`` (the rest)."""
        if self.chunks_computed == 0:
            return "reused"
        return "resumed" if self.chunks_reused else "computed"


@dataclass
class ChunkEvent:
    """Progress callback payload, sent after each chunk of one member is computed and handed to
    the writer (written at once on the CPU; queued on the background writer on an accelerator).

    Attributes:
        source: member id.
        rows: images in the chunk.
        methods: methods computed for it.
        images_done: images computed so far in this call (each image counted once per method).
        images_total: images to compute in this call, over all members and methods.
    """

    source: str
    rows: int
    methods: list[str]
    images_done: int
    images_total: int


@dataclass
class Plan:
    """The entries of one member and the chunks each still needs."""

    source: str
    model: nn.Module
    card: Any
    entries: dict[str, Entry] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    missing: dict[tuple[int, int], list[str]] = field(default_factory=dict)


class _Writer:
    """Writes chunks in submission order; with ``background=True`` on one background thread
    while the next chunk is computed (the store's compression and file writes overlap the
    attribution). ``explain_to_store`` uses the thread when the models run on an accelerator;
    on the CPU the attribution already uses every core and a writer thread only competes with
    it (measured 1.22x vs 1.14x of compute-only time for the cheapest methods on 2 cores).

    Each chunk's data and then its marker are written by :meth:`Entry.write` on that thread, so
    the kill-safety order is unchanged. At most ``max_pending`` chunks wait in memory. The first
    failed write cancels the queued ones and is raised in the caller's thread at the next
    :meth:`submit` or at :meth:`close`; an error in the caller (or Ctrl-C) lets the queued writes
    finish first.
    """

    def __init__(self, *, max_pending: int, background: bool = True) -> None:
        self._background = background
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concilium-store")
        self._pending: deque[Future] = deque()
        self._max = max_pending
        self._failed = threading.Event()

    def _write(self, entry: Entry, start: int, maps: Tensor) -> None:
        if self._failed.is_set():  # an earlier write failed: write nothing after it
            raise RuntimeError("skipped: an earlier chunk write failed")
        try:
            entry.write(start, maps)
        except BaseException:
            self._failed.set()
            raise

    def _check(self, *, block: bool) -> None:
        while self._pending and (block or self._pending[0].done()
                                 or len(self._pending) > self._max):
            future = self._pending.popleft()
            try:
                future.result()
            except BaseException:
                for queued in self._pending:
                    queued.cancel()
                self._pending.clear()
                raise

    def submit(self, entry: Entry, start: int, maps: Tensor) -> None:
        if not self._background:
            entry.write(start, maps)
            return
        self._check(block=False)
        self._pending.append(self._pool.submit(self._write, entry, start, maps))
        self._check(block=False)

    def close(self) -> None:
        try:
            self._check(block=True)
        finally:
            self._pool.shutdown(wait=True)


chunk_seed = derive_seed


def entry_params(
    method: str,
    options: Mapping[str, Any],
    *,
    target: str,
    reduction: str,
    baseline: BaselineSpec,
    seed: int,
) -> dict[str, Any]:
    """The parameters that identify an entry: the method's fully resolved parameters, the
    target spec, the reduction, the baseline (its ``baseline_name``: for a provider such as
    GANMEX, its content-based ``name``) and the seed.

    Raises:
        ValueError: on an unknown method or parameter (from ``method_params``).
    """
    from concilium.explain import method_params
    from concilium.explain.baselines import baseline_name

    return {
        "method": method,
        "method_params": method_params(method, **dict(options)),
        "target": target,
        "reduction": reduction,
        "baseline": baseline_name(baseline),
        "seed": seed,
    }


def check_members(members: Sequence[tuple[nn.Module, Any]], data: ImageDataset, target: str) -> None:
    """Members must fit the data (classes, channels, unique ids) and the target must resolve for
    each of them (checked on one image).

    Raises:
        ValueError: naming the member and the mismatch.
    """
    from concilium.explain.targets import resolve_target

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


def check_baseline_spec(baseline: str) -> None:
    """A cheap check of a baseline spec string, before loading data or models: a registry spec
    must parse; ``ganmex:GEN`` must name a generator directory (its fit to each member is
    checked by :func:`member_baselines`).

    Raises:
        ValueError: on an unknown baseline or parameter, or ``ganmex:`` without a directory.
        FileNotFoundError: if ``GEN`` holds no GANMEX generator.
    """
    if not isinstance(baseline, str):
        raise TypeError(f"baseline must be a spec string; got {type(baseline).__name__}")
    if not baseline.startswith("ganmex:"):
        from concilium.explain.baselines import parse_baseline

        parse_baseline(baseline)
        return
    raw = baseline[len("ganmex:"):]
    path = Path(raw)
    if not raw:
        raise ValueError("baseline spec 'ganmex:' needs a generator directory: ganmex:GEN")
    from concilium.baselines.ganmex import load_card

    if not any((d / "card.json").is_file() for d in (path, *_subdirs(path))):
        load_card(path)  # raises FileNotFoundError with the fix


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


def _generator_dir(path: Path, member_id: str) -> Path:
    """``GEN/<member id>`` when it holds a generator (one per member), else ``GEN``."""
    own = path / member_id
    return own if (own / "card.json").is_file() else path


def member_baselines(
    baseline: str,
    members: Sequence[tuple[nn.Module, Any]],
    data: ImageDataset,
    *,
    device: str | torch.device = "cpu",
    store: ExplanationStore | None = None,
) -> dict[str, BaselineSpec]:
    """The baseline of each member, resolved and checked before any compute.

    A registry spec (``zero``, ``blur:sigma=4``, ...) is checked and kept as the string for every
    member. ``ganmex:GEN`` becomes one
    :class:`~concilium.baselines.ganmex.GanmexBaseline` per member, checked against that
    member's card (the generator must have been trained against this classifier) and the data's
    classes and image size; with ``store`` it caches every baseline ``G(x, t)`` there, so a
    re-run or a resumed run never regenerates one. A generator is trained against one
    classifier, so for several members ``GEN`` holds one generator per member, ``GEN/<member
    id>/`` (``concilium ganmex train DATA --model MODELS/m0 --out GEN/m0``, ...); a ``GEN``
    that is itself a generator directory serves every member it fits.

    Args:
        baseline: the baseline spec string.
        members: ``[(model, MemberCard), ...]``.
        data: the samples to explain (class names and image size are checked).
        device: where a generator runs.
        store: the run's store (baseline cache); ``None`` only checks.

    Returns:
        member id -> baseline spec string or provider.

    Raises:
        ValueError: on an unknown baseline, or a generator trained for other classes, another
            image size or another classifier (naming the member).
        FileNotFoundError: if the ``ganmex:`` directory holds no generator.
    """
    check_baseline_spec(baseline)
    if not baseline.startswith("ganmex:"):
        return {card.member_id: baseline for _, card in members}
    from concilium.baselines.ganmex import parse_baseline_spec

    root = Path(baseline[len("ganmex:"):])
    out: dict[str, BaselineSpec] = {}
    for _, card in members:
        gen = _generator_dir(root, card.member_id)
        try:
            out[card.member_id] = parse_baseline_spec(
                f"ganmex:{gen}", classifier_card=card, class_names=list(data.class_names) or None,
                image_size=tuple(data.image_size), device=device, store=store,
            )
        except (ValueError, FileNotFoundError) as err:
            hint = (f"; for several members put one generator per member in {root}/<member id>/"
                    if len(members) > 1 and gen == root else "")
            raise type(err)(f"baseline {baseline} for member {card.member_id}: {err}{hint}") from None
    return out


def auto_batch_size(
    store: ExplanationStore, model: nn.Module, image: Tensor, device: torch.device
) -> int:
    """Rows per model call when the user gives none: the timing probe's choice
    (:func:`concilium.explain.probe`), made once per run for each architecture, input shape and
    device and kept in the store (``cache_array("auto_batch_size", ...)``), so that every member
    of that architecture, in this process or a resumed one, batches identically."""
    from concilium.explain import probe

    state = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    key = {
        "module": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": hashlib.sha256(repr(state).encode()).hexdigest()[:16],
        "image": list(image.shape[1:]),
        "device": device.type,
    }

    def measure() -> Tensor:
        model.to(device).eval()
        return torch.tensor([probe(model, image.to(device)).rows_grad], dtype=torch.int64)

    return int(store.cache_array("auto_batch_size", key, measure)[0])


def plan_members(
    store: ExplanationStore,
    data: ImageDataset,
    members: Sequence[tuple[nn.Module, Any]],
    methods: Sequence[str],
    *,
    method_options: Mapping[str, Mapping[str, Any]],
    target: str,
    reduction: str,
    baseline: str | Mapping[str, BaselineSpec],
    seed: int,
    dtype: Literal["float32", "float16"],
    chunk_size: int,
    batch_size: int | None,
    device: torch.device,
    meta: Mapping[str, Any],
) -> list[Plan]:
    """Open or create every entry, fix each entry's batch size and list the missing chunks.

    ``baseline`` is one spec for every member or, per member id, a spec or provider (as
    :func:`member_baselines` gives them).
    """
    from concilium.runinfo import model_fingerprint

    h, w = data.image_size
    plans = []
    for model, card in members:
        source = card.member_id
        member_baseline = baseline if isinstance(baseline, str) else baseline[source]
        all_params = {
            method: entry_params(
                method, method_options.get(method, {}), target=target, reduction=reduction,
                baseline=member_baseline, seed=seed,
            )
            for method in methods
        }
        existing = [store.lookup(source, m, p) for m, p in all_params.items()]
        rows = batch_size
        if rows is None and any(e is None or "batch_size" not in e.meta for e in existing):
            rows = auto_batch_size(store, model, data.images[:1], device)
        card_dict = card.model_dump(mode="json") if hasattr(card, "model_dump") else dict(card)
        entry_meta = {
            **meta,
            "model_card": card_dict,
            "model_fingerprint": model_fingerprint(model),
            "seed": seed,
            "batch_size": rows,
        }
        plan = Plan(source, model, card)
        for method, params in all_params.items():
            entry = store.entry(
                source, method, params, data.ids, shape=(h, w), dtype=dtype,
                chunk_size=chunk_size, meta=entry_meta,
            )
            plan.entries[method] = entry
            # a resumed entry keeps the batching it was started with, unless the user sets one
            recorded = entry.meta.get("batch_size")
            chosen = batch_size if batch_size is not None else recorded
            plan.batch_sizes[method] = int(chosen if chosen is not None else rows)  # type: ignore[arg-type]
            for chunk_rows in entry.missing_chunks():
                plan.missing.setdefault(chunk_rows, []).append(method)
        plans.append(plan)
    return plans


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
) -> list[EntryReport]:
    """Explain every member with every method into ``store``, computing only what is missing.

    Args:
        store: the run's store.
        data: the samples to explain (rows of every entry, in this order).
        members: ``[(model, MemberCard), ...]`` as :func:`concilium.models.members.load_members`
            gives them; the card's ``member_id`` is the entry source.
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
        batch_size: model-input rows per call (``None``: the timing probe's choice, made once
            per run and architecture, see :func:`auto_batch_size`).
        device: where the models run.
        meta: extra entry metadata (dataset fingerprint, ...).
        on_chunk: called after every computed chunk (progress bars).

    Returns:
        One :class:`EntryReport` per member and method, in order.

    Raises:
        ValueError: on an unknown method, parameter, reduction, target or baseline, or members
            that do not fit the data, before any compute.
    """
    from concilium.explain import REDUCTIONS

    options = {k: dict(v) for k, v in (method_options or {}).items()}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for methods {unknown} that are not being run: "
                         f"add them to the methods ({', '.join(methods)}) or drop the parameters")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if not members:
        raise ValueError("no members to explain; pass [(model, card), ...] from load_members")
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
    total = sum((stop - start) * len(ms) for p in plans for (start, stop), ms in p.missing.items())
    done = 0
    writer = _Writer(max_pending=2 * max(1, len(methods)), background=device.type != "cpu")
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
    from concilium.explain import SHARED_PASS, explain, explain_many

    common = {
        "reduction": reduction,
        "baseline": baseline,
        "labels": labels,
        "attribute_names": list(getattr(card, "attribute_names", []) or []),
    }

    def generator() -> torch.Generator:
        # a CPU generator on every device: explain draws one base seed from it on the CPU
        return torch.Generator().manual_seed(chunk_seed(seed, source, start))

    shared_all = [m for m in SHARED_PASS if m in batch_sizes]
    groups: dict[int, list[str]] = {}
    for m in shared_all if len(shared_all) > 1 and set(shared_all) & set(methods) else []:
        groups.setdefault(batch_sizes[m], []).append(m)
    grouped = {m for ms in groups.values() for m in ms}
    for rows, group in groups.items():
        t0 = time.perf_counter()
        out = explain_many(
            model, images, target, {m: method_options.get(m, {}) for m in group},
            batch_size=rows, generator=generator(), **common,
        )
        seconds = (time.perf_counter() - t0) / len(group)
        for m in group:
            if m in methods:
                yield m, out[m].detach().to("cpu", torch.float32), seconds
    for method in methods:
        if method in grouped:
            continue
        t0 = time.perf_counter()
        maps = explain(
            model, images, target, method=method, batch_size=batch_sizes[method],
            generator=generator(), **common, **method_options.get(method, {}),
        )
        yield method, maps.detach().to("cpu", torch.float32), time.perf_counter() - t0
