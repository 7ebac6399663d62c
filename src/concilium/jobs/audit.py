"""The audits of a run (per-class quality of E*, bias, anonymisation, method subsets, the
attribute cards), written as tables under ``RUN/results/``. The measures themselves are in
:mod:`concilium.ensemble.audit` and :mod:`concilium.ensemble.subsets`, the cards in
:mod:`concilium.jobs.attributes`; this job opens the run, feeds them and writes back."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from concilium._options import validate_options
from concilium.ensemble.audit import (
    anonymisation_study,
    anonymisation_summary,
    bias_table,
    per_class_quality,
)
from concilium.ensemble.cnn import CNNTrainConfig
from concilium.ensemble.subsets import SubsetMode, method_subset_study
from concilium.jobs.anonymisation import estar_entry, in_sample_ids, study_estar
from concilium.jobs.attributes import run_attribute_cards
from concilium.metrics.tables import paper_table, per_class_metric_means
from concilium.store import ATTRIBUTES_TABLE, Run, read_maps, read_table, write_table
from concilium.store.lock import holds_run_lock
from concilium.vocabulary import is_logit_source

SubsetModeOption = Literal["none", "leave_one_out", "all"]


class AuditOptions(BaseModel):
    """Options of :func:`run_audit` (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")

    estar_source: str = Field(
        "cnn", description="source holding E* probabilities (concilium ensemble --kind cnn)")
    region: Literal["watermark", "outside"] = Field(
        "watermark", description="non-evidence region of the bias audit: the watermark mask "
                                 "set, or everything outside the object")
    factor: float | None = Field(
        None, description="smallest enrichment (share / area) that may flag a class, besides "
                          "the permutation null's p < 0.05 (default 2 for the watermark, 1 "
                          "outside)")
    bias_sources: list[str] | None = Field(
        None, description="sources audited for bias (default: every complete source but signed "
                          "logit maps such as cnn:logit)")
    anonymisation: bool = Field(
        False, description="run the anonymisation study (trains classifiers on image x E* and "
                           "E* alone; needs all splits)")
    anonymisation_epochs: int = Field(
        5, ge=1, description="training epochs of each anonymisation classifier")
    arch: str = Field("small-cnn", description="architecture of the anonymisation classifiers")
    anonymisation_seeds: int = Field(
        3, ge=1, description="anonymisation classifiers per mode, seeded seed, seed+1, ... "
                             "(initialisation and batch order); the table gives mean and spread")
    anonymisation_in_sample: bool = Field(
        False, description="let the anonymisation study read E* fitted on its own rows "
                           "(marked in_sample in the table); by default such E* skips the "
                           "study with a warning: cross-fit it (--kind cnn --crossfit 5)")
    anonymisation_rederive: bool = Field(
        True, description="when the ensembler's input maps explain another target than "
                          "'pred', explain the input member again for the predicted class and "
                          "apply the saved ensemblers (loads the member); false: read the "
                          "stored E* (marked in the target column)")
    anonymisation_baseline: str = Field(
        "zero", description="baseline spec the input maps were explained with (checked; used "
                            "when re-deriving E* for the predicted class)")
    subsets: SubsetModeOption = Field(
        "none", description="the CNN ensembler's method-subset study (trains one ensembler per "
                            "subset on the run's train rows)")
    subset_config: CNNTrainConfig | None = Field(
        None, description="training settings of the subset study (default: the E* ensembler's)")
    attribute_cards: int = Field(
        3, ge=0, description="images with an attribute card (a dataset with attributes and a "
                             "member with an attribute head; loads the members; 0: none)")
    attribute_method: str = Field(
        "gradcam", description="explanation method of the attribute cards")
    rows: Literal["test", "all"] = Field(
        "test", description="rows the per-class and bias audits read: 'test' (held-out: the "
                            "test split when the run holds several splits; every row for E* "
                            "when it is cross-fitted) or 'all'")
    seed: int = Field(0, description="seeds every training and bootstrap")
    device: str = Field("cpu", description="where to train: cpu, cuda or cuda:<k>")


@holds_run_lock
def run_audit(run_dir: str | Path, options: AuditOptions | Mapping[str, Any] | None = None
              ) -> dict[str, pd.DataFrame]:
    """The audits of a run, written as tables under ``RUN/results/``.

    Args:
        run_dir: a run made by ``concilium explain`` (and ``concilium ensemble --kind cnn`` for
            the E* audits).
        options: :class:`AuditOptions` or a mapping of its fields (default: its defaults).

    Returns:
        ``name -> table`` for every table written (``per_class``, ``per_class_metrics``,
        ``paper_table`` (Ens-Avg vs Exp-Avg vs Ens-Logit, when the metrics table scores
        ``ens-avg``), ``bias``, ``anonymisation`` (mean and spread per mode),
        ``anonymisation_seeds`` (one row per mode and seed), ``subsets``, ``attributes``).

    Raises:
        ValueError: an unknown option (naming the valid ones), the region has no masks, or an
            asked-for study lacks its inputs.
    """
    o = validate_options(AuditOptions, options, what="the audit")
    estar_source, region, device = o.estar_source, o.region, o.device
    ctx = Run.open(run_dir)
    data, store = ctx.data, ctx.store
    entries = store.entries()
    entries = entries[entries.complete.astype(bool)]  # an empty store: object dtype
    tables: dict[str, pd.DataFrame] = {}
    held, rows_name = audited_rows(data.splits, o.rows)
    held_ids = [data.ids[i] for i in held.tolist()]
    estar_rows = entries[entries.source == estar_source]
    estar = None
    if len(estar_rows):
        estar, _ = read_maps(store, estar_source, estar_rows.method.iloc[0], data.ids,
                             params_hash=estar_rows.params_hash.iloc[0])
        fit = store.get(estar_source, estar_rows.method.iloc[0],
                        estar_rows.params_hash.iloc[0]).params.get("fit_ids")
        # cross-fitted E* (no row fitted on) is held out on every row: E*'s audit reads them all
        quality_rows, quality_name = ((torch.arange(len(data.ids)), "all (E* out of fold)")
                                      if fit == [] and o.rows == "test" else (held, rows_name))
        tables["per_class"] = per_class_quality(
            estar[quality_rows], data.masks[quality_rows], data.labels[quality_rows],
            class_names=data.class_names, seed=o.seed).assign(rows=quality_name)
    metrics = read_table(run_dir, "metrics")
    if metrics is not None:
        audited = metrics[metrics["sample"].isin(held_ids)] if "sample" in metrics else metrics
        tables["per_class_metrics"] = per_class_metric_means(
            audited, class_names=data.class_names, seed=o.seed).assign(rows=rows_name)
        scored = set(metrics.source)
        members = [m for m in ctx.member_ids if m in scored]
        if "ens-avg" in scored and members:
            tables["paper_table"] = paper_table(metrics)
    if region == "watermark":
        if "watermark" not in data.parts or not data.parts["watermark"].any():
            raise ValueError("this dataset has no watermark pixels; audit bias with "
                             "region='outside' (--region outside)")
        mask = data.parts["watermark"]
    else:  # "outside" (the options model admits no other region)
        mask = ~data.masks
    fac = o.factor if o.factor is not None else (2.0 if region == "watermark" else 1.0)
    sources = (list(o.bias_sources) if o.bias_sources else
               sorted(s for s in set(entries.source) if not is_logit_source(s)))
    bias = []
    for row in entries[entries.source.isin(sources)].itertuples():
        maps, _ = read_maps(store, row.source, row.method, data.ids, params_hash=row.params_hash)
        t = bias_table(maps[held], mask[held], data.labels[held], class_names=data.class_names,
                       factor=fac, seed=o.seed)
        t.insert(0, "method", row.method)
        t.insert(0, "source", row.source)
        t["region"] = region
        t["rows"] = rows_name
        bias.append(t)
    if bias:
        tables["bias"] = pd.concat(bias, ignore_index=True)
    if o.anonymisation:
        tables.update(_anonymisation(ctx, o))
    if o.subsets != "none":
        tables["subsets"] = _subset_study(ctx, estar_source, o.subsets, o.subset_config, device)
    for name, table in tables.items():
        write_table(run_dir, name, table)
    if o.attribute_cards and data.attribute_names:
        cards = run_attribute_cards(run_dir, method=o.attribute_method, samples=o.attribute_cards,
                                    device=device)
        if cards is not None:
            tables[ATTRIBUTES_TABLE] = cards
    return tables


def _anonymisation(ctx: Run, o: AuditOptions) -> dict[str, pd.DataFrame]:
    """The anonymisation tables (``anonymisation``: mean and spread per mode;
    ``anonymisation_seeds``: one row per mode and seed), or none, with a warning, when E* is
    in-sample on the study's rows and ``anonymisation_in_sample`` is off (the pure study raises;
    the audit's other tables are still written)."""
    fitted = set(in_sample_ids(ctx, estar_entry(ctx, o.estar_source)))
    if fitted & set(ctx.data.ids) and not o.anonymisation_in_sample:
        warnings.warn(
            f"anonymisation study skipped: E* of {o.estar_source!r} was fitted on "
            f"{len(fitted & set(ctx.data.ids))} of the study's rows; cross-fit it "
            f"(`concilium ensemble {ctx.run_dir} --kind cnn --crossfit 5`, option crossfit) or "
            "set anonymisation_in_sample to mark it in the table", UserWarning, stacklevel=3)
        return {}
    estar = study_estar(ctx.run_dir, o.estar_source, baseline=o.anonymisation_baseline,
                        rederive=o.anonymisation_rederive, device=o.device)
    runs = anonymisation_study(
        ctx.data, estar.maps, arch=o.arch, epochs=o.anonymisation_epochs,
        seeds=[o.seed + k for k in range(o.anonymisation_seeds)],
        in_sample_ids=estar.in_sample_ids, allow_in_sample=o.anonymisation_in_sample,
        target=estar.target, device=o.device)
    return {"anonymisation": anonymisation_summary(runs), "anonymisation_seeds": runs}


def audited_rows(splits: list[str], rows: Literal["test", "all"]) -> tuple[torch.Tensor, str]:
    """The row indices the audits read and their name (the tables' ``rows`` column).

    ``rows="test"`` keeps the held-out test rows when the run holds several splits (E*, the
    members and the metric weights are fitted on train/val rows, so those rows are in-sample);
    a run of one split has no held-out rows: all are read and the name says which split.
    """
    present = sorted(set(splits))
    if rows == "test" and "test" in present and len(present) > 1:
        return torch.tensor([i for i, s in enumerate(splits) if s == "test"],
                            dtype=torch.long), "test"
    return torch.arange(len(splits)), "all (" + "+".join(present) + ")"


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
