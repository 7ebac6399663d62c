"""Fill the store: explain every member with every method, chunk by chunk, resumably.

:func:`explain_to_store` is what ``concilium explain`` and the pipeline call. For each member it
opens (or creates) one entry per method, then walks the union of the missing chunks; each chunk's
images go once to the device, the methods missing it are computed (sharing passes through
``explain_many`` where the methods allow) and every map is written as soon as it exists. Complete
entries cost nothing.

Determinism: a chunk's random numbers come from a generator seeded by
``(seed, member, method, first row)`` only, so a chunk computed after a resume, alone or together
with other methods, equals the chunk of an uninterrupted run bit for bit (on the same device and
library versions).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium.data.dataset import ImageDataset
from concilium.store.entry import Entry
from concilium.store.store import ExplanationStore


@dataclass
class EntryReport:
    """What happened to one ``(member, method)`` entry.

    Attributes:
        source: member id.
        method: method name.
        params_hash: the entry's hash.
        chunks_computed: chunks computed in this call.
        chunks_reused: chunks already finished before this call.
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
    """Progress callback payload, sent after each chunk of one member is written.

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
    missing: dict[tuple[int, int], list[str]] = field(default_factory=dict)


def chunk_seed(seed: int, source: str, method: str, start: int) -> int:
    """The seed of one chunk's generator: a hash of ``(seed, source, method, start)``."""
    digest = hashlib.sha256(f"{seed}|{source}|{method}|{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def entry_params(
    method: str,
    options: Mapping[str, Any],
    *,
    target: str,
    reduction: str,
    baseline: str,
    seed: int,
) -> dict[str, Any]:
    """The parameters that identify an entry: the method's fully resolved parameters, the
    target spec, the reduction, the baseline and the seed.

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


def plan_members(
    store: ExplanationStore,
    data: ImageDataset,
    members: Sequence[tuple[nn.Module, Any]],
    methods: Sequence[str],
    *,
    method_options: Mapping[str, Mapping[str, Any]],
    target: str,
    reduction: str,
    baseline: str,
    seed: int,
    dtype: Literal["float32", "float16"],
    chunk_size: int,
    meta: Mapping[str, Any],
) -> list[Plan]:
    """Open or create every entry and list the missing chunks; computes nothing."""
    from concilium.runinfo import model_fingerprint

    h, w = data.image_size
    plans = []
    for model, card in members:
        source = card.member_id
        card_dict = card.model_dump(mode="json") if hasattr(card, "model_dump") else dict(card)
        entry_meta = {
            **meta,
            "model_card": card_dict,
            "model_fingerprint": model_fingerprint(model),
            "seed": seed,
        }
        plan = Plan(source, model, card)
        for method in methods:
            params = entry_params(
                method,
                method_options.get(method, {}),
                target=target,
                reduction=reduction,
                baseline=baseline,
                seed=seed,
            )
            entry = store.entry(
                source, method, params, data.ids, shape=(h, w), dtype=dtype,
                chunk_size=chunk_size, meta=entry_meta,
            )
            plan.entries[method] = entry
            for rows in entry.missing_chunks():
                plan.missing.setdefault(rows, []).append(method)
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
        members: ``[(model, MemberCard), ...]`` as :func:`concilium.models.checkpoint.load_members`
            gives them; the card's ``member_id`` is the entry source.
        methods: method names of :data:`concilium.explain.METHODS`.
        method_options: per method, parameters overriding its defaults
            (``{"integrated_gradients": {"n_steps": 100}}``).
        target: target spec (``label``, ``pred``, ``<int>``, ``attr:<name>``, ``contrast:<t>``).
        reduction: channel reduction of the maps.
        baseline: baseline spec string (``zero``, ``blur:sigma=4``, ...).
        seed: seed of every stochastic choice (per chunk, see the module docstring).
        dtype: storage type, ``"float32"`` or ``"float16"``.
        chunk_size: samples per stored chunk for new entries (default 64).
        batch_size: images per forward pass inside a chunk (``None``: chosen automatically).
        device: where the models run.
        meta: extra entry metadata (dataset fingerprint, ...).
        on_chunk: called after every written chunk (progress bars).

    Returns:
        One :class:`EntryReport` per member and method, in order.

    Raises:
        ValueError: on an unknown method, parameter, target or baseline, before any compute.
    """
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for methods {unknown} that are not being run: "
                         f"add them to the methods ({', '.join(methods)}) or drop the parameters")
    device = torch.device(device)
    plans = plan_members(
        store, data, members, methods, method_options=options, target=target,
        reduction=reduction, baseline=baseline, seed=seed, dtype=dtype, chunk_size=chunk_size,
        meta=meta or {},
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
                baseline=baseline, seed=seed, batch_size=batch_size,
            ):
                plan.entries[method].write(start, maps)
                report = reports[(plan.source, method)]
                report.chunks_computed += 1
                report.rows_computed += stop - start
                report.seconds += seconds
            done += (stop - start) * len(chunk_methods)
            if on_chunk is not None:
                on_chunk(ChunkEvent(plan.source, stop - start, list(chunk_methods), done, total))
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
    baseline: str,
    seed: int,
    batch_size: int | None,
) -> Iterator[tuple[str, Tensor, float]]:
    """Yield the maps of one chunk for each of ``methods``: ``(method, (n, H, W) CPU, seconds)``,
    one method at a time, so that the caller writes each as soon as it exists.

    Each method gets its own generator seeded by :func:`chunk_seed`, so its maps do not depend
    on which other methods are computed alongside.
    """
    from concilium.explain import explain

    for method in methods:
        generator = torch.Generator(device=images.device)
        generator.manual_seed(chunk_seed(seed, source, method, start))
        t0 = time.perf_counter()
        maps = explain(
            model, images, target, labels=labels,
            attribute_names=list(getattr(card, "attribute_names", []) or []),
            method=method, reduction=reduction, baseline=baseline, batch_size=batch_size,
            generator=generator, **method_options.get(method, {}),
        )
        yield method, maps.detach().to("cpu", torch.float32), time.perf_counter() - t0
