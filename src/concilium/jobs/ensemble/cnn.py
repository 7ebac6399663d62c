"""``cnn``: the U-Net ensembler, trained on the run's train rows (or a saved one applied).

Where each row's E* comes from (review D1-D3: an ensembler scored on the rows it was fitted on
looks better than it is):

* without cross-fitting (``crossfit = 0``, the default), one ensembler is trained on the train
  rows and early-stopped on the val rows, and writes E* for every row: the train and val rows'
  E* is **in-sample**;
* with ``crossfit = k >= 2``, the train and val rows are dealt into ``k`` folds (per label, in a
  seeded order); fold ``f``'s ensembler trains on the train rows outside ``f``, stops on the val
  rows outside ``f``, and writes E* for the rows in ``f``. The other rows (test) get E* from the
  ensembler trained on all train rows and stopped on all val rows, as without cross-fitting. No
  row's E* then comes from an ensembler fitted on it.

Every entry's params record it (read by :func:`concilium.jobs.evaluate.evaluate_run` and the
audits): ``fit_ids`` (the rows whose E* is in-sample; empty when every row is out of fold),
``crossfit`` (the number of folds, 0 for none) and ``folds`` (one ``{"dir", "ids"}`` per
ensembler that wrote E*: its saved folder relative to the run, and the rows it wrote; with
cross-fitting the ``k`` folds, then the full ensembler for the remaining rows). Each saved
ensembler's folder also holds ``fit.json``: the ids it was trained and early-stopped on.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from concilium._util import atomic_write_text, derive_seed
from concilium.ensemble.cnn import CNNEnsembler, CNNTrainConfig, train_cnn_ensembler
from concilium.jobs.ensemble.base import (
    EnsembleOptionsBase,
    EnsembleResult,
    FromSource,
    ensembler,
    source_maps,
    write_entry,
)
from concilium.store import Run

ENSEMBLERS_DIR = "ensemblers"
FIT_FILE = "fit.json"
"""In a saved ensembler's folder: ``{"train_ids": [...], "val_ids": [...]}``, the rows it was
trained and early-stopped on."""


class CnnOptions(CNNTrainConfig, EnsembleOptionsBase):
    """Options of ``cnn``: the input, and the training settings of
    :class:`concilium.ensemble.cnn.CNNTrainConfig` (or a saved ensembler to apply)."""

    from_source: FromSource = None
    ensembler: str | None = Field(
        None, description="a saved ensembler's folder to apply instead of training one")
    crossfit: int = Field(
        0, ge=0, description="folds of train+val rows whose E* comes from an ensembler not fitted "
                             "on them (out of fold); 0: one ensembler, its train/val rows "
                             "in-sample")

    @field_validator("crossfit")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("crossfit = 1 leaves no rows to fit on; use 0 (no cross-fitting) "
                             "or k >= 2 folds")
        return value

    def train_config(self) -> CNNTrainConfig:
        """The training settings alone."""
        return CNNTrainConfig.model_validate(self.model_dump(include=set(CNNTrainConfig.model_fields)))


def _rows(run: Run, split: str) -> torch.Tensor:
    return torch.tensor([i for i, s in enumerate(run.data.splits) if s == split], dtype=torch.long)


def crossfit_folds(labels: torch.Tensor, rows: torch.Tensor, k: int, *, seed: int) -> list[torch.Tensor]:
    """Deal ``rows`` into ``k`` folds, stratified by label: the rows of each label, in a seeded
    random order, go round-robin to the folds (each label starting where the previous one
    stopped, so the fold sizes differ by at most one).

    Args:
        labels: ``(N,)`` labels of the run's rows.
        rows: the row indices to split.
        k: the number of folds (``>= 2``).
        seed: seeds the order.

    Returns:
        ``k`` sorted index tensors, disjoint, whose union is ``rows``.
    """
    rng = np.random.default_rng(derive_seed(seed, "crossfit", k))
    rows_np = rows.numpy()
    lab = labels[rows].numpy()
    fold_of = np.empty(len(rows_np), dtype=np.int64)
    start = 0
    for c in np.unique(lab):
        where = np.flatnonzero(lab == c)
        where = where[rng.permutation(len(where))]
        fold_of[where] = (start + np.arange(len(where))) % k
        start = (start + len(where)) % k
    return [torch.as_tensor(np.sort(rows_np[fold_of == f]), dtype=torch.long) for f in range(k)]


def _train(run: Run, maps: dict[str, torch.Tensor], tr: torch.Tensor, va: torch.Tensor,
           options: CnnOptions, directory: Path) -> tuple[CNNEnsembler, pd.DataFrame]:
    """Train one ensembler on rows ``tr``, stopped on rows ``va``; save it (and ``fit.json``)."""
    images = run.data.images
    ens, history = train_cnn_ensembler(
        {m: x[tr] for m, x in maps.items()}, run.data.masks[tr],
        val_maps={m: x[va] for m, x in maps.items()}, val_masks=run.data.masks[va],
        train_images=images[tr], val_images=images[va], config=options.train_config(),
        device=options.device)
    ens.save(directory)
    ids = run.data.ids
    atomic_write_text(directory / FIT_FILE, json.dumps(
        {"train_ids": [ids[i] for i in tr.tolist()], "val_ids": [ids[i] for i in va.tolist()]},
        indent=1))
    return ens, history


def _predict(ens: CNNEnsembler, run: Run, maps: dict[str, torch.Tensor], rows: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    images = run.data.images[rows] if ens.card.with_image else None
    return ens.predict({m: x[rows] for m, x in maps.items()}, images=images)


def _relative(run: Run, directory: Path) -> str:
    d, root = directory.resolve(), run.run_dir.resolve()
    return os.path.relpath(d, root) if d.is_relative_to(root) else str(d)


@ensembler("cnn", options=CnnOptions)
def run_cnn(run: Run, options: CnnOptions) -> EnsembleResult:
    """Train the U-Net ensembler on the run's train rows (early stopping on its val rows), or
    apply a saved one, and write E* for every row; with ``crossfit = k`` the train and val rows
    get E* out of fold, from ``k`` ensemblers each fitted without them."""
    src, methods, maps, hashes = source_maps(run, options.from_source, options.methods)
    name = options.source or "cnn"
    folder = run.run_dir / ENSEMBLERS_DIR / name.replace(":", "_")
    result = EnsembleResult()
    ids = run.data.ids
    n = len(ids)
    every = torch.arange(n)
    if options.ensembler is not None:
        training = sorted(options.model_fields_set & (set(CNNTrainConfig.model_fields) | {"crossfit"}))
        if training:
            raise ValueError(f"a saved ensembler is applied as it was trained; drop the training "
                             f"options {training} or drop ensembler to train a new one")
        saved = Path(options.ensembler)
        ens = CNNEnsembler.load(saved, device=options.device)
        logits, probs = _predict(ens, run, maps, every)
        fit_ids = _saved_fit_ids(saved, ids)
        folds = [{"dir": _relative(run, saved), "ids": list(ids)}]
        where = str(saved.resolve())
    else:
        tr, va = _rows(run, "train"), _rows(run, "val")
        if len(tr) == 0 or len(va) == 0:
            raise ValueError("the CNN ensembler trains on the run's train rows and stops on its "
                             "val rows, and this run has none; explain with --split all, or pass "
                             "a trained ensembler (--ensembler DIR)")
        plan = _fold_plan(run, tr, va, options) if options.crossfit else []
        ens, history = _train(run, maps, tr, va, options, folder)
        where = str(folder)
        result.tables[f"{name.replace(':', '_')}_history"] = history
        k = options.crossfit
        if k == 0:
            logits, probs = _predict(ens, run, maps, every)
            fit_ids = [ids[i] for i in sorted(tr.tolist() + va.tolist())]
            folds = [{"dir": _relative(run, folder), "ids": list(ids)}]
        else:
            logits, probs, folds, histories = _crossfit(run, maps, plan, options, folder)
            held = torch.tensor(sorted(set(range(n)) - {i for f in folds for i in f["rows"]}),
                                dtype=torch.long)
            if len(held):
                logits[held], probs[held] = _predict(ens, run, maps, held)
            folds = [{"dir": f["dir"], "ids": [ids[i] for i in f["rows"]]} for f in folds]
            folds.append({"dir": _relative(run, folder), "ids": [ids[i] for i in held.tolist()]})
            fit_ids = []
            result.tables[f"{name.replace(':', '_')}_crossfit_history"] = histories
    params = {"from": src, "inputs": hashes, "card": ens.card.model_dump(mode="json"),
              "crossfit": options.crossfit, "fit_ids": fit_ids, "folds": folds}
    meta = {"ensembler_dir": where}
    method = "+".join(ens.card.methods)
    result.entries.append(write_entry(run, "cnn", method, probs, source=name,
                                      params={**params, "output": "probability"}, meta=meta))
    result.entries.append(write_entry(run, "cnn", method, logits, source=f"{name}:logit",
                                      params={**params, "output": "logit"}, meta=meta))
    return result


def _fold_plan(run: Run, tr: torch.Tensor, va: torch.Tensor, options: CnnOptions
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per fold: ``(its rows, the train rows outside it, the val rows outside it)``, checked
    before anything trains."""
    k = options.crossfit
    plan = []
    in_train, in_val = set(tr.tolist()), set(va.tolist())
    for f, rows in enumerate(crossfit_folds(run.data.labels, torch.cat([tr, va]), k,
                                            seed=options.seed)):
        mine = set(rows.tolist())
        f_tr = torch.tensor(sorted(in_train - mine), dtype=torch.long)
        f_va = torch.tensor(sorted(in_val - mine), dtype=torch.long)
        if len(rows) == 0 or len(f_tr) < 2 or len(f_va) == 0:
            raise ValueError(f"crossfit = {k}: fold {f} holds {len(rows)} rows and leaves "
                             f"{len(f_tr)} train and {len(f_va)} val rows to fit on (need >= 1, "
                             f">= 2 and >= 1); use fewer folds or explain more rows")
        plan.append((rows, f_tr, f_va))
    return plan


def _crossfit(run: Run, maps: dict[str, torch.Tensor],
              plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], options: CnnOptions,
              folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict], pd.DataFrame]:
    """E* of the rows of each fold of ``plan``, from the ensembler fitted on its other rows; the
    other rows are left NaN for the caller. Returns ``(logits, probs, folds, histories)``; each
    fold is ``{"dir", "rows"}``."""
    n, size = len(run.data), next(iter(maps.values())).shape[-2:]
    logits = torch.full((n, *size), float("nan"))
    probs = torch.full((n, *size), float("nan"))
    folds, histories = [], []
    for f, (rows, f_tr, f_va) in enumerate(plan):
        directory = folder / f"fold{f}"
        ens, history = _train(run, maps, f_tr, f_va, options, directory)
        logits[rows], probs[rows] = _predict(ens, run, maps, rows)
        folds.append({"dir": _relative(run, directory), "rows": rows.tolist()})
        histories.append(history.assign(fold=f))
    return logits, probs, folds, pd.concat(histories, ignore_index=True)


def _saved_fit_ids(directory: Path, ids: list[str]) -> list[str]:
    """The run's rows a saved ensembler was trained or early-stopped on (from its ``fit.json``);
    none, with a warning, when the folder has no such record."""
    path = directory / FIT_FILE
    if not path.is_file():
        warnings.warn(f"the ensembler {directory} records no fit rows ({FIT_FILE}); its E* is "
                      "marked out of sample for every row of this run, which holds only if it "
                      "was trained on other images", stacklevel=3)
        return []
    fit = json.loads(path.read_text())
    seen = set(fit.get("train_ids", [])) | set(fit.get("val_ids", []))
    return [i for i in ids if i in seen]
