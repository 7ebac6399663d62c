"""Reading members' maps from a run's store and writing ensemble sources back into it.

An ensemble source is stored exactly like a member's explanations (same entry API, same sample
ids in the same row order), so ``concilium evaluate`` scores ensembles like single explanations.
Its ``params`` record the ensembler and its settings plus the params hashes of the entries it was
built from, so a changed input gives a new entry instead of silently reusing an old one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from concilium.data.dataset import ImageDataset
from concilium.store import Entry, ExplanationStore

RESULTS_DIR = "results"


@dataclass
class RunContext:
    """What an ensembler needs from a run.

    Attributes:
        run_dir: the run directory.
        store: its explanation store.
        data: the explained samples, in store row order.
        member_ids: the run's members, in order.
        models: ``member_id -> model`` (empty unless models were loaded).
        accuracies: ``member_id -> validation accuracy`` from the member cards (when loaded).
        target: the run's target spec.
        seed: the run's seed.
    """

    run_dir: Path
    store: ExplanationStore
    data: ImageDataset
    member_ids: list[str]
    models: dict[str, nn.Module] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    target: str = "label"
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        """The dataset fingerprint recorded in every entry written here."""
        return self.data.fingerprint()


def open_run(run_dir: str | Path, *, load_models: bool = False, device: str | None = None) -> RunContext:
    """Open a run made by ``concilium explain``: its store, data (store row order) and members.

    Raises:
        FileNotFoundError: no ``run.json`` or no store (explain first).
        ValueError: the data or models changed since the run.
    """
    from concilium.runinfo import RunInfo, load_run_data

    info = RunInfo.load(run_dir)
    data, members = load_run_data(run_dir, device=device, load_models=load_models)
    ctx = RunContext(Path(run_dir), ExplanationStore(run_dir), data, list(info.member_ids),
                     target=info.target, seed=info.seed)
    for model, card in members:
        ctx.models[card.member_id] = model
        if getattr(card, "val_accuracy", None) is not None:
            ctx.accuracies[card.member_id] = float(card.val_accuracy)
    return ctx


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

    Chunks already finished (an earlier identical call) are kept; the rest are written.

    Raises:
        ValueError: maps that do not match ``sample_ids``, or an existing entry of other data.
    """
    if maps.ndim != 3 or maps.shape[0] != len(sample_ids):
        raise ValueError(f"maps must be (N, H, W) with N = {len(sample_ids)} samples; got "
                         f"{tuple(maps.shape)}")
    entry = store.entry(source, method, dict(params), list(sample_ids),
                        shape=(int(maps.shape[1]), int(maps.shape[2])), chunk_size=chunk_size,
                        meta=dict(meta or {}))
    for start, stop in entry.missing_chunks():
        entry.write(start, maps[start:stop].float().contiguous())
    return entry


def write_table(run_dir: str | Path, name: str, table: pd.DataFrame) -> Path:
    """Write ``RUN/results/<name>.parquet`` and ``.csv``; returns the parquet path."""
    out = Path(run_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    table.to_parquet(path, index=False)
    table.to_csv(out / f"{name}.csv", index=False)
    return path


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``RUN/results/metrics.parquet``.

    Raises:
        FileNotFoundError: not evaluated yet (run ``concilium evaluate RUN`` first).
    """
    path = Path(run_dir) / RESULTS_DIR / "metrics.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `concilium evaluate {run_dir}` first")
    return pd.read_parquet(path)
