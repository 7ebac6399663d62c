"""The audits of a run (per-class quality of E*, bias, anonymisation, method subsets, the
attribute cards), written as tables under ``RUN/results/``. The measures themselves are in
:mod:`concilium.ensemble.audit` and :mod:`concilium.ensemble.subsets`, the cards in
:mod:`concilium.jobs.attributes`; this job opens the run, feeds them and writes back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from concilium.ensemble.audit import (
    anonymisation_study,
    bias_table,
    per_class_quality,
)
from concilium.ensemble.cnn import CNNTrainConfig
from concilium.ensemble.subsets import SubsetMode, method_subset_study
from concilium.jobs.attributes import run_attribute_cards
from concilium.metrics.tables import paper_table, per_class_metric_means
from concilium.store import ATTRIBUTES_TABLE, Run, read_maps, read_table, write_table


def run_audit(
    run_dir: str | Path,
    *,
    estar_source: str = "cnn",
    region: Literal["watermark", "outside"] = "watermark",
    factor: float | None = None,
    bias_sources: Sequence[str] | None = None,
    anonymisation: bool = False,
    anonymisation_epochs: int = 5,
    arch: str = "small-cnn",
    subsets: Literal["none", "leave_one_out", "all"] = "none",
    subset_config: CNNTrainConfig | None = None,
    attribute_cards: int = 3,
    attribute_method: str = "gradcam",
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, pd.DataFrame]:
    """The audits of a run, written as tables under ``RUN/results/``.

    Args:
        run_dir: a run made by ``concilium explain`` (and ``concilium ensemble --kind cnn`` for
            the E* audits).
        estar_source: the source holding E* probabilities (``concilium ensemble --kind cnn``).
        region: the non-evidence region of the bias audit: the ``watermark`` mask set, or
            everything ``outside`` the object.
        factor: enrichment that flags a class (default 2.0 for the watermark, 1.0 outside).
        bias_sources: sources audited for bias (default: every complete source).
        anonymisation: run the anonymisation study (trains classifiers; needs all splits).
        anonymisation_epochs: training epochs of each anonymisation classifier.
        arch: architecture of the anonymisation classifiers.
        subsets: the CNN ensembler's method-subset study (``none`` by default; trains one
            ensembler per subset on the run's train rows).
        subset_config: training settings of the subset study.
        attribute_cards: how many images get an attribute card
            (:func:`concilium.jobs.attributes.run_attribute_cards`; 0: none). Only for a dataset
            with attributes and a member with an attribute head; loads the members.
        attribute_method: the explanation method of the attribute cards.
        seed: seeds every training.
        device: where to train.

    Returns:
        ``name -> table`` for every table written (``per_class``, ``per_class_metrics``,
        ``paper_table`` (Ens-Avg vs Exp-Avg vs Ens-Logit, when the metrics table scores
        ``ens-avg``), ``bias``, ``anonymisation``, ``subsets``, ``attributes``).

    Raises:
        ValueError: the region has no masks, or an asked-for study lacks its inputs.
    """
    ctx = Run.open(run_dir)
    data, store = ctx.data, ctx.store
    entries = store.entries()
    entries = entries[entries.complete]
    tables: dict[str, pd.DataFrame] = {}
    estar_rows = entries[entries.source == estar_source]
    estar = None
    if len(estar_rows):
        estar, _ = read_maps(store, estar_source, estar_rows.method.iloc[0], data.ids,
                             params_hash=estar_rows.params_hash.iloc[0])
        tables["per_class"] = per_class_quality(estar, data.masks, data.labels,
                                                class_names=data.class_names)
    metrics = read_table(run_dir, "metrics")
    if metrics is not None:
        tables["per_class_metrics"] = per_class_metric_means(metrics, class_names=data.class_names)
        scored = set(metrics.source)
        members = [m for m in ctx.member_ids if m in scored]
        if "ens-avg" in scored and members:
            tables["paper_table"] = paper_table(metrics)
    if region == "watermark":
        if "watermark" not in data.parts or not data.parts["watermark"].any():
            raise ValueError("this dataset has no watermark pixels; audit bias with "
                             "region='outside' (--region outside)")
        mask = data.parts["watermark"]
    elif region == "outside":
        mask = ~data.masks
    else:
        raise ValueError(f"region must be 'watermark' or 'outside'; got {region!r}")
    fac = factor if factor is not None else (2.0 if region == "watermark" else 1.0)
    sources = list(bias_sources) if bias_sources else sorted(set(entries.source))
    bias = []
    for row in entries[entries.source.isin(sources)].itertuples():
        maps, _ = read_maps(store, row.source, row.method, data.ids, params_hash=row.params_hash)
        t = bias_table(maps, mask, data.labels, class_names=data.class_names, factor=fac)
        t.insert(0, "method", row.method)
        t.insert(0, "source", row.source)
        t["region"] = region
        bias.append(t)
    if bias:
        tables["bias"] = pd.concat(bias, ignore_index=True)
    if anonymisation:
        if estar is None:
            raise ValueError(f"the anonymisation study needs E* (source {estar_source!r}); run "
                             f"`concilium ensemble {run_dir} --kind cnn` first")
        tables["anonymisation"] = anonymisation_study(data, estar, arch=arch,
                                                      epochs=anonymisation_epochs, seed=seed,
                                                      device=device)
    if subsets != "none":
        tables["subsets"] = _subset_study(ctx, estar_source, subsets, subset_config, device)
    for name, table in tables.items():
        write_table(run_dir, name, table)
    if attribute_cards and data.attribute_names:
        cards = run_attribute_cards(run_dir, method=attribute_method, samples=attribute_cards,
                                    device=device)
        if cards is not None:
            tables[ATTRIBUTES_TABLE] = cards
    return tables


def _subset_study(ctx: Run, estar_source: str, mode: SubsetMode,
                  config: CNNTrainConfig | None, device: str) -> pd.DataFrame:
    entries = ctx.store.entries()
    rows = entries[(entries.source == estar_source) & entries.complete]
    if rows.empty:
        raise ValueError(f"the subset study reuses the methods and input source of the CNN "
                         f"ensembler; run `concilium ensemble {ctx.run_dir} --kind cnn` first")
    entry = ctx.store.get(estar_source, rows.method.iloc[0], rows.params_hash.iloc[0])
    src, card = entry.params["from"], entry.params["card"]
    cfg = config or CNNTrainConfig(normalisation=card["normalisation"], absolute=card["absolute"],
                                   base_channels=card["base_channels"], depth=card["depth"],
                                   seed=card["seed"])
    maps = {m: read_maps(ctx.store, src, m, ctx.data.ids)[0] for m in card["methods"]}
    split = {s: torch.tensor([i for i, x in enumerate(ctx.data.splits) if x == s], dtype=torch.long)
             for s in ("train", "val", "test")}
    if any(len(v) == 0 for v in split.values()):
        raise ValueError("the subset study needs train, val and test rows; explain with --split all")
    sel = {s: {m: x[idx] for m, x in maps.items()} for s, idx in split.items()}
    masks = {s: ctx.data.masks[idx] for s, idx in split.items()}
    return method_subset_study(sel["train"], masks["train"], val_maps=sel["val"],
                               val_masks=masks["val"], test_maps=sel["test"],
                               test_masks=masks["test"], mode=mode, config=cfg, device=device)
