"""The plan of an explanation run: which (member, method) entries exist, which chunks each still
needs, and the rows per model call of each entry (recorded, so a resumed run batches the same).

:func:`plan_members` opens or creates every entry of the run before any compute;
:func:`concilium.jobs.explain.explain_to_store` then computes what the plan says is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import shape_fingerprint, state_fingerprint
from concilium.data.dataset import ImageDataset
from concilium.explain import method_params, probe
from concilium.explain.baselines import BaselineSpec, baseline_name
from concilium.store.entry import CorruptChunk, Entry
from concilium.store.store import ExplanationStore


@dataclass
class EntryReport:
    """What happened to one ``(member, method)`` entry.

    Attributes:
        source: member id.
        method: method name.
        params_hash: the entry's hash.
        chunks_computed: chunks computed in this call.
        chunks_reused: chunks already finished (and intact) before this call.
        chunks_repaired: finished chunks found damaged on disk (checksum mismatch or unreadable)
            and recomputed in this call.
        rows_computed: maps computed in this call.
        seconds: compute time spent on this entry in this call.
    """

    source: str
    method: str
    params_hash: str
    chunks_computed: int = 0
    chunks_reused: int = 0
    chunks_repaired: int = 0
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
class ExplainPlan:
    """The entries of one member and the chunks each still needs."""

    source: str
    model: nn.Module
    card: Any
    entries: dict[str, Entry] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    missing: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    repaired: dict[str, list[CorruptChunk]] = field(default_factory=dict)






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

    return {
        "method": method,
        "method_params": method_params(method, **dict(options)),
        "target": target,
        "reduction": reduction,
        "baseline": baseline_name(baseline),
        "seed": seed,
    }


def auto_batch_size(
    store: ExplanationStore, model: nn.Module, image: Tensor, device: torch.device
) -> int:
    """Rows per model call when the user gives none: the memory-budget plan's choice
    (:func:`concilium.explain.probe`), made once per run for each architecture, input shape and
    device and kept in the store (``cache_array("auto_batch_size", ...)``), so that every member
    of that architecture, in this process or a resumed one, batches identically."""
    key = {
        "module": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": shape_fingerprint(model),
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
) -> list[ExplainPlan]:
    """Open or create every entry, fix each entry's batch size, check every finished chunk
    against its checksum (damaged ones are unmarked, so recomputed) and list the missing chunks.

    ``baseline`` is one spec for every member or, per member id, a spec or provider (as
    :func:`member_baselines` gives them).
    """

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
            "model_fingerprint": state_fingerprint(model),
            "seed": seed,
            "batch_size": rows,
        }
        plan = ExplainPlan(source, model, card)
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
            plan.repaired[method] = entry.repair()  # damaged chunks become missing ones
            for chunk_rows in entry.missing_chunks():
                plan.missing.setdefault(chunk_rows, []).append(method)
        plans.append(plan)
    return plans
