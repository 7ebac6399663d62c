"""One way to open a run: :meth:`Run.open` gives the record, the store, the explained samples
(in store row order) and, when asked, the members, checked against what was explained.

Every job that reads or extends a run (evaluate, ensemble, audit, GANMEX, the report) opens it
here; the helpers below read members' maps from the store and write ensemble sources back.

Example:
    >>> run = Run.open("runs/demo", load_models=True)          # doctest: +SKIP
    >>> maps, entry = run.read_maps("m0", "saliency")          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import state_fingerprint
from concilium.data.dataset import ImageDataset
from concilium.models.members import MemberCard
from concilium.models.sources import SourceCard, describe_sources, load_sources
from concilium.store.entry import Entry
from concilium.store.manifest import RunInfo, select_split
from concilium.store.store import ExplanationStore


@dataclass
class Run:
    """An opened run.

    Attributes:
        run_dir: the run directory.
        info: its record (``RUN/run.json``).
        store: its explanation store.
        data: the explained samples, in store row order.
        models: ``member_id -> model`` in eval mode (empty unless models were loaded).
        cards: ``member_id ->`` card, a :class:`~concilium.models.MemberCard` (trained members)
            or a :class:`~concilium.models.SourceCard` (members from other sources); empty
            unless models were loaded.
    """

    run_dir: Path
    info: RunInfo
    store: ExplanationStore
    data: ImageDataset
    models: dict[str, nn.Module] = field(default_factory=dict)
    cards: dict[str, MemberCard | SourceCard] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: str | Path, *, load_models: bool = False, device: str | None = None,
             mode: Literal["a", "r"] = "a") -> Run:
        """Open a run made by the explain job.

        Args:
            run_dir: the run directory (holds ``run.json``).
            load_models: also load the run's members (checked against their recorded weights).
            device: where to put the models (default: the device recorded in the run).
            mode: ``"r"`` opens the store read-only.

        Raises:
            FileNotFoundError: no ``run.json``, or the data or a member source is gone.
            ValueError: the data changed since the run (fingerprint or sample ids differ), a
                recorded member is missing or has other weights.
        """
        run_dir = Path(run_dir)
        info = RunInfo.load(run_dir)
        data = _explained_samples(run_dir, info)
        run = cls(run_dir, info, ExplanationStore(run_dir, mode=mode), data)
        if load_models:
            for model, card in _members(run_dir, info, data, device or info.device):
                run.models[card.member_id] = model
                run.cards[card.member_id] = card
        return run

    @property
    def member_ids(self) -> list[str]:
        """The run's members, in order."""
        return list(self.info.member_ids)

    @property
    def target(self) -> str:
        """The run's target spec."""
        return self.info.target

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.info.seed

    @property
    def fingerprint(self) -> str:
        """The dataset fingerprint recorded in every entry written here."""
        return self.data.fingerprint()

    @property
    def accuracies(self) -> dict[str, float]:
        """``member_id -> validation accuracy`` from the member cards (when loaded)."""
        return {m: float(c.val_accuracy) for m, c in self.cards.items()
                if getattr(c, "val_accuracy", None) is not None}

    @property
    def members(self) -> list[tuple[nn.Module, MemberCard | SourceCard]]:
        """``[(model, card), ...]`` in member order (empty unless models were loaded)."""
        return [(self.models[m], self.cards[m]) for m in self.member_ids if m in self.models]

    def read_maps(self, source: str, method: str, *,
                  params_hash: str | None = None) -> tuple[Tensor, Entry]:
        """The maps of ``source``/``method`` for the run's samples (see :func:`read_maps`)."""
        return read_maps(self.store, source, method, self.data.ids, params_hash=params_hash)


def _explained_samples(run_dir: Path, info: RunInfo) -> ImageDataset:
    full = info.dataset.load()
    if full.fingerprint() != info.dataset_fingerprint:
        raise ValueError(
            f"the dataset of {run_dir} changed since it was explained (fingerprint "
            f"{full.fingerprint()} != recorded {info.dataset_fingerprint}); restore the data or "
            "re-run `concilium explain` into a new --out"
        )
    data = select_split(full, info.split, info.limit)
    if data.ids != info.sample_ids:
        raise ValueError(
            f"the samples selected from the data differ from those recorded in {run_dir}/run.json; "
            "re-run `concilium explain` into a new --out"
        )
    return data


def _members(run_dir: Path, info: RunInfo, data: ImageDataset,
             device: str) -> list[tuple[nn.Module, MemberCard | SourceCard]]:
    members = load_sources(info.models, class_names=data.class_names, device=device)
    by_id = {card.member_id: (model, card) for model, card in members}
    missing = [m for m in info.member_ids if m not in by_id]
    where = ", ".join(info.models)
    if missing:
        raise ValueError(
            f"members {missing} of the run are not in {where} any more; "
            f"found {sorted(by_id)}"
        )
    out = [by_id[m] for m in info.member_ids]
    for model, card in out:
        recorded = info.member_fingerprints.get(card.member_id)
        if recorded is not None and state_fingerprint(model) != recorded:
            raise ValueError(
                f"member {card.member_id} of {where} has other weights than when "
                f"{run_dir} was explained (retrained?); re-run `concilium explain` into a new --out"
            )
    return out


def member_cards(info: RunInfo) -> list[dict[str, Any]]:
    """One card-like row per member of the run's sources, without loading any model (a
    members folder's ``card.json`` fields; the library and name of other sources), restricted
    to the run's members; a source that cannot be read gives a row with ``error``."""
    rows = describe_sources(info.models)
    return [r for r in rows if "error" in r or r.get("member_id") in info.member_ids]


def read_maps(store: ExplanationStore, source: str, method: str, sample_ids: Sequence[str],
              *, params_hash: str | None = None) -> tuple[Tensor, Entry]:
    """The maps of ``source``/``method`` for ``sample_ids`` (in that order) and their entry.

    Raises:
        ValueError: no such entry (the message lists what is stored), an ambiguous one (pass
            ``params_hash``), an entry of other samples, or unfinished chunks.
    """
    entry = store.get(source, method, params_hash)
    if list(entry.sample_ids) == list(sample_ids):
        return entry.read(), entry
    missing = set(sample_ids) - set(entry.sample_ids)
    if missing:
        raise ValueError(
            f"entry {source}/{method} holds other images than the run ({len(missing)} of the run's "
            f"samples are missing, e.g. {sorted(missing)[:3]}); members explained on different "
            "image sets cannot be ensembled: explain every member on the same run"
        )
    return entry.read(entry.rows_of(sample_ids)), entry


def available_methods(store: ExplanationStore, sources: Sequence[str]) -> list[str]:
    """The methods with a complete entry for every one of ``sources``, sorted."""
    table = store.entries()
    table = table[table.complete & table.source.isin(list(sources))]
    counts = table.groupby("method")["source"].nunique()
    return sorted(counts[counts == len(set(sources))].index)


def member_stack(
    store: ExplanationStore, members: Sequence[str], method: str, sample_ids: Sequence[str]
) -> tuple[Tensor, dict[str, str]]:
    """``(M, N, H, W)`` maps of ``members`` for ``method`` and each member's params hash."""
    maps, hashes = [], {}
    for m in members:
        x, entry = read_maps(store, m, method, sample_ids)
        maps.append(x)
        hashes[m] = entry.params_hash
    shapes = {tuple(x.shape) for x in maps}
    if len(shapes) != 1:
        raise ValueError(f"members' {method} maps have different shapes {sorted(shapes)}")
    return torch.stack(maps), hashes


def write_source(
    store: ExplanationStore,
    source: str,
    method: str,
    maps: Tensor,
    *,
    sample_ids: Sequence[str],
    params: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    chunk_size: int = 64,
) -> Entry:
    """Write ensemble maps ``(N, H, W)`` as the entry ``(source, method, hash(params))``.

    Chunks already finished (an earlier identical call) and intact are kept; the rest, and any
    finished chunk whose bytes fail their checksum, are written.

    Raises:
        ValueError: maps that do not match ``sample_ids``, or an existing entry of other data.
    """
    if maps.ndim != 3 or maps.shape[0] != len(sample_ids):
        raise ValueError(f"maps must be (N, H, W) with N = {len(sample_ids)} samples; got "
                         f"{tuple(maps.shape)}")
    entry = store.entry(source, method, dict(params), list(sample_ids),
                        shape=(int(maps.shape[1]), int(maps.shape[2])), chunk_size=chunk_size,
                        meta=dict(meta or {}))
    entry.repair()
    for start, stop in entry.missing_chunks():
        entry.write(start, maps[start:stop].float().contiguous())
    return entry
