"""The E* the anonymisation study may read: out of sample, from maps of the predicted class.

The study (:func:`concilium.ensemble.audit.anonymisation_study`) replaces images by
``image * E*``. Two things make that comparison unfair unless the job checks them here:

* E* fitted on its own row is close to the mask there (review D3): the ``cnn`` entry records
  which rows are in-sample (``params["fit_ids"]``; an entry written before cross-fitting lacks
  the key, and then its train and val rows are in-sample, the rows its ensembler was trained
  and early-stopped on).
* E* from maps of the label puts the answer into the anonymised input (review S1). When the
  ensembler's input maps explain another target than ``"pred"``, the job explains the input
  member again with ``target="pred"`` (the same method parameters, reduction, baseline, seed
  and chunking as the stored entries) and applies the saved ensemblers, each row through the one
  that produced its stored E* (``params["folds"]``, out of fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from concilium.ensemble.cnn import CNNEnsembler
from concilium.explain.baselines import baseline_name
from concilium.jobs.baselines import member_baselines
from concilium.jobs.explain import compute_chunk
from concilium.store import Run, read_maps
from concilium.store.entry import Entry


@dataclass
class StudyEstar:
    """E* for the anonymisation study.

    Attributes:
        maps: ``(N, H, W)`` E* probabilities for every row of the run.
        target: how they were made: ``"pred (stored)"``, ``"pred (re-derived)"``, or the
            stored target when re-deriving was declined (``"label (stored)"``).
        in_sample_ids: sample ids whose E* came from an ensembler fitted on that row.
    """

    maps: Tensor
    target: str
    in_sample_ids: list[str]


def estar_entry(run: Run, source: str) -> Entry:
    """The complete E* entry of ``source`` (the first one when several are stored).

    Raises:
        ValueError: ``source`` has no complete entry.
    """
    table = run.store.entries()
    rows = table[(table.source == source) & table.complete]
    if rows.empty:
        raise ValueError(f"the anonymisation study needs E* (source {source!r}); run "
                         f"`concilium ensemble {run.run_dir} --kind cnn --crossfit 5` first")
    return run.store.get(source, rows.method.iloc[0], rows.params_hash.iloc[0])


def in_sample_ids(run: Run, entry: Entry) -> list[str]:
    """The sample ids whose E* in ``entry`` came from an ensembler fitted on that row:
    ``params["fit_ids"]``, or, for an entry written before cross-fitting existed, the run's
    train and val rows (the rows its ensembler was trained and early-stopped on)."""
    if "fit_ids" in entry.params:
        return [str(i) for i in entry.params["fit_ids"]]
    return [i for i, s in zip(run.data.ids, run.data.splits, strict=True) if s in ("train", "val")]


def input_target(run: Run, entry: Entry) -> str:
    """The explanation target of the ensembler's input maps (``"pred"``, ``"label"``, ...);
    ``"mixed"`` when its methods differ."""
    params = entry.params
    targets = {run.store.get(params["from"], m, h).params.get("target", run.target)
               for m, h in params["inputs"].items()}
    return targets.pop() if len(targets) == 1 else "mixed"


def study_estar(run_dir: str | Path, source: str, *, baseline: str = "zero",
                rederive: bool = True, device: str = "cpu") -> StudyEstar:
    """E* of ``source`` for the anonymisation study, from maps of the predicted class.

    Args:
        run_dir: the run.
        source: the ``cnn`` source holding E* probabilities.
        baseline: the baseline spec string the input maps were explained with (checked against
            the stored entries; needed only to re-derive).
        rederive: re-derive E* from ``target="pred"`` maps when the stored input maps explain
            another target; ``False`` reads the stored E* (the target column says which).
        device: where the members and ensemblers run.

    Raises:
        ValueError: no E* entry, an input source that is not a member (explain the run with
            ``--target pred`` instead), a baseline other than the stored one, or a row no
            saved ensembler produced.
    """
    run = Run.open(run_dir)
    entry = estar_entry(run, source)
    fitted = in_sample_ids(run, entry)
    stored, _ = read_maps(run.store, entry.source, entry.method, run.data.ids,
                          params_hash=entry.params_hash)
    target = input_target(run, entry)
    if target == "pred" or not rederive:
        return StudyEstar(stored, f"{target} (stored)", fitted)
    maps = _pred_maps(run_dir, entry, baseline=baseline, device=device)
    return StudyEstar(_apply_folds(run, entry, maps, device=device), "pred (re-derived)", fitted)


def _pred_maps(run_dir: str | Path, entry: Entry, *, baseline: str, device: str
               ) -> dict[str, Tensor]:
    run = Run.open(run_dir, load_models=True, device=device)
    src, inputs = entry.params["from"], entry.params["inputs"]
    if src not in run.models:
        raise ValueError(f"E* of {entry.source!r} ensembles the maps of {src!r}, which is not a "
                         f"member, so they cannot be explained again for the predicted class; "
                         f"explain the run with --target pred, or set anonymisation_rederive "
                         f"false to read the stored E* (marked in the target column)")
    model, card = run.models[src], run.cards[src]
    stored = {m: run.store.get(src, m, h) for m, h in inputs.items()}
    baselines = member_baselines(baseline, [(model, card)], run.data, device=device,
                                 store=run.store)
    for m, e in stored.items():
        if e.params.get("baseline") not in (baseline_name(baselines[src]), baseline):
            raise ValueError(f"{src}/{m} was explained with baseline {e.params.get('baseline')}, "
                             f"not {baseline!r}; pass its spec (audit option "
                             f"anonymisation_baseline)")
    data, out = run.data, {}
    for m, e in stored.items():
        p = e.params
        chunks = []
        for start in range(0, len(data.ids), e.chunk_size):
            stop = min(start + e.chunk_size, len(data.ids))
            for _, maps, _ in compute_chunk(
                model, data.images[start:stop].to(device), data.labels[start:stop].to(device),
                [m], card=card, source=src, start=start,
                method_options={m: p["method_params"]}, target="pred",
                reduction=p["reduction"], baseline=baselines[src], seed=int(p["seed"]),
                batch_sizes={m: stop - start},
            ):
                chunks.append(maps)
        out[m] = torch.cat(chunks)
    return out


def _apply_folds(run: Run, entry: Entry, maps: dict[str, Tensor], *, device: str) -> Tensor:
    folds = entry.params.get("folds") or [
        {"dir": entry.meta["ensembler_dir"], "ids": list(run.data.ids)}]
    row = {i: k for k, i in enumerate(run.data.ids)}
    out = torch.full((len(run.data.ids), *run.data.images.shape[-2:]), float("nan"))
    for fold in folds:
        idx = torch.tensor([row[i] for i in fold["ids"] if i in row], dtype=torch.long)
        if not len(idx):
            continue
        ens = CNNEnsembler.load(run.run_dir / fold["dir"], device=device)
        images = run.data.images[idx] if ens.card.with_image else None
        _, probs = ens.predict({m: maps[m][idx] for m in ens.card.methods}, images=images)
        out[idx] = probs.detach().to("cpu", torch.float32)
    missing = [run.data.ids[i] for i in torch.isnan(out).flatten(1).all(1).nonzero().flatten()]
    if missing:
        raise ValueError(f"no saved ensembler of {entry.source!r} produced E* for {len(missing)} "
                         f"rows (e.g. {missing[:3]}); re-run `concilium ensemble RUN --kind cnn`")
    return out
