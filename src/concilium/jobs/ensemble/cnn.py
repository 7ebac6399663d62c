"""``cnn``: the U-Net ensembler, trained on the run's train rows (or a saved one applied)."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

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


class CnnOptions(CNNTrainConfig, EnsembleOptionsBase):
    """Options of ``cnn``: the input, and the training settings of
    :class:`concilium.ensemble.cnn.CNNTrainConfig` (or a saved ensembler to apply)."""

    from_source: FromSource = None
    ensembler: str | None = Field(
        None, description="a saved ensembler's folder to apply instead of training one")

    def train_config(self) -> CNNTrainConfig:
        """The training settings alone."""
        return CNNTrainConfig.model_validate(self.model_dump(include=set(CNNTrainConfig.model_fields)))


def _rows(run: Run, split: str) -> torch.Tensor:
    return torch.tensor([i for i, s in enumerate(run.data.splits) if s == split], dtype=torch.long)


@ensembler("cnn", options=CnnOptions)
def run_cnn(run: Run, options: CnnOptions) -> EnsembleResult:
    """Train the U-Net ensembler on the run's train rows (early stopping on its val rows), or
    apply a saved one, and write E* for every row."""
    src, methods, maps, hashes = source_maps(run, options.from_source, options.methods)
    name = options.source or "cnn"
    result = EnsembleResult()
    images = run.data.images
    if options.ensembler is not None:
        training = sorted(options.model_fields_set & set(CNNTrainConfig.model_fields))
        if training:
            raise ValueError(f"a saved ensembler is applied as it was trained; drop the training "
                             f"options {training} or drop ensembler to train a new one")
        ens = CNNEnsembler.load(options.ensembler, device=options.device)
        where = str(Path(options.ensembler).resolve())
    else:
        tr, va = _rows(run, "train"), _rows(run, "val")
        if len(tr) == 0 or len(va) == 0:
            raise ValueError("the CNN ensembler trains on the run's train rows and stops on its "
                             "val rows, and this run has none; explain with --split all, or pass "
                             "a trained ensembler (--ensembler DIR)")
        ens, history = train_cnn_ensembler(
            {m: x[tr] for m, x in maps.items()}, run.data.masks[tr],
            val_maps={m: x[va] for m, x in maps.items()}, val_masks=run.data.masks[va],
            train_images=images[tr], val_images=images[va], config=options.train_config(),
            device=options.device)
        where = str(ens.save(run.run_dir / ENSEMBLERS_DIR / name.replace(":", "_")))
        result.tables[f"{name.replace(':', '_')}_history"] = history
    logits, probs = ens.predict(maps, images=images if ens.card.with_image else None)
    params = {"from": src, "inputs": hashes, "card": ens.card.model_dump(mode="json")}
    meta = {"ensembler_dir": where}
    method = "+".join(ens.card.methods)
    result.entries.append(write_entry(run, "cnn", method, probs, source=name,
                                      params={**params, "output": "probability"}, meta=meta))
    result.entries.append(write_entry(run, "cnn", method, logits, source=f"{name}:logit",
                                      params={**params, "output": "logit"}, meta=meta))
    return result
