"""What ensembles reveal about data and models: per-class quality, bias, anonymisation.

* :func:`per_class_quality`: Dice and IoU of the binarised E* against the masks, per class; a
  class far below the others is hard or under-represented.
* :func:`per_class_metric_means`: any metric's per-class means from the metrics table, with
  classes that are outliers on the bad side flagged.
* :func:`bias_table`: the share of attribution mass on a region that is not evidence (a
  watermark, or everything outside the object), per class, next to the share a uniform map would
  put there; a class whose maps concentrate on the region is flagged.
* :func:`anonymisation_study`: images replaced by ``image * E*`` (or E* alone); a classifier
  trained on them, its accuracy next to one trained on the original images with the same budget.

All thresholds are fixed a priori and documented; tables report the raw numbers next to the flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from concilium._checks import check_labels, check_maps, check_masks
from concilium.data.dataset import ImageDataset
from concilium.ensemble.cnn import CNNTrainConfig, dice_score, iou_score
from concilium.ensemble.sources import RunContext
from concilium.ensemble.subsets import SubsetMode
from concilium.models.base import ConciliumNet

AnonymisationMode = Literal["original", "product", "map"]


def per_class_quality(
    probabilities: Tensor,
    masks: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    threshold: float = 0.5,
    flag_below: float | None = None,
    relative: float = 0.9,
) -> pd.DataFrame:
    """Per-class Dice and IoU of E* binarised at ``threshold``.

    Args:
        probabilities: E* ``(N, H, W)`` in ``[0, 1]`` (the CNN ensembler's sigmoid output).
        masks: ``(N, H, W)`` bool.
        labels: ``(N,)`` class indices.
        class_names: the class names (``labels`` index into them).
        threshold: binarisation threshold of E*.
        flag_below: flag classes whose mean Dice is below this absolute value; ``None`` (default)
            flags classes below ``relative`` times the median of the class means.
        relative: see ``flag_below`` (default 0.9).

    Returns:
        One row per class present: ``label, class, n, dice, iou, flagged``, and the threshold
        used in ``flag_threshold``.
    """
    probabilities = check_maps(probabilities, "probabilities")
    masks = check_masks(masks, like=probabilities)
    labels = check_labels(labels, probabilities.shape[0], len(class_names))
    pred = probabilities > threshold
    dice, iou = dice_score(pred, masks), iou_score(pred, masks)
    rows = []
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        rows.append({"label": c, "class": class_names[c], "n": int(sel.sum()),
                     "dice": float(dice[sel].mean()), "iou": float(iou[sel].mean())})
    table = pd.DataFrame(rows)
    limit = flag_below if flag_below is not None else relative * float(table["dice"].median())
    table["flag_threshold"] = limit
    table["flagged"] = table["dice"] < limit
    return table


def per_class_metric_means(
    metrics: pd.DataFrame,
    *,
    class_names: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    z_flag: float = 1.5,
) -> pd.DataFrame:
    """Per-class means of every ``(source, method, metric)`` of the metrics table.

    A class is flagged when its mean is worse than the mean over classes by more than ``z_flag``
    standard deviations (over the class means), direction-aware.

    Args:
        metrics: the metrics table (``sample, label, source, method, metric, value``).
        class_names: to name the labels (optional).
        higher_is_better: per metric (default: the metric registry's metadata, else True).
        z_flag: how many standard deviations below the class average flags a class.

    Returns:
        ``source, method, metric, label, class, n, mean, z, flagged``.
    """
    need = {"label", "source", "method", "metric", "value"}
    if not need <= set(metrics.columns):
        raise ValueError(f"metrics table needs columns {sorted(need)}; got {list(metrics.columns)}")
    from concilium.ensemble.averaging import _higher_is_better

    g = (metrics.groupby(["source", "method", "metric", "label"])["value"]
         .agg(n="count", mean="mean").reset_index())
    out = []
    for (_, _, metric), part in g.groupby(["source", "method", "metric"]):
        part = part.copy()
        sign = 1.0 if _higher_is_better(metric, higher_is_better) else -1.0
        v = sign * part["mean"].to_numpy(dtype=float)
        std = np.nanstd(v)
        part["z"] = (v - np.nanmean(v)) / std if std > 0 else 0.0
        part["flagged"] = part["z"] < -z_flag
        out.append(part)
    table = pd.concat(out, ignore_index=True) if out else g.assign(z=[], flagged=[])
    table["class"] = [class_names[int(c)] if class_names else str(c) for c in table["label"]]
    return table[["source", "method", "metric", "label", "class", "n", "mean", "z", "flagged"]]


def attribution_share(maps: Tensor, region: Tensor, *, mass: Literal["abs", "positive"] = "abs") -> Tensor:
    """Share of each map's attribution mass inside ``region``: ``(N,)`` in ``[0, 1]``.

    ``mass="abs"`` uses ``|a|``, ``"positive"`` only ``max(a, 0)``. A map with no mass gives NaN
    (it attributes nothing anywhere).
    """
    maps = check_maps(maps)
    region = check_masks(region, like=maps, name="region")
    a = maps.abs() if mass == "abs" else maps.clamp(min=0)
    total = a.flatten(1).sum(1).double()
    inside = (a * region).flatten(1).sum(1).double()
    return torch.where(total > 0, inside / total.clamp(min=1e-300), float("nan"))


def bias_table(
    maps: Tensor,
    region: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    factor: float = 2.0,
    mass: Literal["abs", "positive"] = "abs",
) -> pd.DataFrame:
    """Per-class attribution share on a non-evidence region, and flags.

    Only images whose region is non-empty count (a watermark drawn on a few classes only).
    ``enrichment = share / area`` compares the share with the region's area fraction, the share
    a uniform map would give; a class is flagged when ``enrichment >= factor``.

    Args:
        maps: ``(N, H, W)`` explanation maps.
        region: ``(N, H, W)`` bool: the watermark mask, or ``~object_mask``.
        labels: ``(N,)``.
        class_names: class names.
        factor: enrichment that flags a class (default 2: twice the uniform density). For the
            large "outside the object" region the largest possible enrichment is ``1 / area``,
            so a factor near 1 is the meaningful choice there.
        mass: ``"abs"`` or ``"positive"`` attribution mass.

    Returns:
        ``label, class, n, share, area, enrichment, flagged`` for each class with region pixels.
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0; got {factor}")
    labels = check_labels(labels, maps.shape[0], len(class_names))
    share = attribution_share(maps, region, mass=mass)
    area = region.flatten(1).double().mean(1)
    has = region.flatten(1).any(1) & ~share.isnan()
    rows = []
    for c in sorted(set(labels[has].tolist())):
        sel = has & (labels == c)
        s, a = float(share[sel].mean()), float(area[sel].mean())
        rows.append({"label": c, "class": class_names[c], "n": int(sel.sum()), "share": s,
                     "area": a, "enrichment": s / a, "flagged": s / a >= factor})
    return pd.DataFrame(rows, columns=["label", "class", "n", "share", "area", "enrichment",
                                       "flagged"])


def anonymise(images: Tensor, emaps: Tensor, mode: AnonymisationMode) -> Tensor:
    """Images replaced by their explanations: ``"product"`` = ``image * E*``, ``"map"`` = E*
    repeated over the channels, ``"original"`` = the images unchanged."""
    if mode == "original":
        return images
    if emaps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"E* maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])} like "
                         f"the images; got {tuple(emaps.shape)}")
    e = emaps.to(images.dtype).clamp(0, 1)[:, None]
    if mode == "product":
        return images * e
    if mode == "map":
        return e.expand_as(images).contiguous()
    raise ValueError(f"mode must be 'original', 'product' or 'map'; got {mode!r}")


def anonymisation_study(
    dataset: ImageDataset,
    emaps: Tensor,
    *,
    modes: Sequence[AnonymisationMode] = ("original", "product", "map"),
    arch: str = "small-cnn",
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    model_factory: Callable[[], ConciliumNet] | None = None,
) -> pd.DataFrame:
    """Train one classifier per mode on the train split, report its val and test accuracy.

    Args:
        dataset: rows of all three splits (train, val, test).
        emaps: E* ``(N, H, W)`` in ``[0, 1]`` for every row of ``dataset``.
        modes: which inputs to compare; ``"original"`` is the reference.
        arch: architecture for :func:`concilium.models.create_model`.
        epochs, lr, batch_size: the same training budget for every mode.
        seed: seeds initialisation and batch order (the same for every mode).
        device: where to train.
        model_factory: builds the classifier instead of ``create_model(arch, ...)``.

    Returns:
        ``mode, val_accuracy, test_accuracy, n_train, n_test``.

    Raises:
        ValueError: a split is empty, or ``emaps`` does not match the dataset.
    """
    from concilium.models import create_model
    from concilium.models.fit import evaluate_accuracy, train_member

    counts = {s: dataset.splits.count(s) for s in ("train", "val", "test")}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"the anonymisation study trains on 'train', stops on 'val' and tests on "
                         f"'test'; splits {empty} are empty (explain the run with --split all)")
    rows = []
    for mode in modes:
        images = anonymise(dataset.images, emaps, mode)
        data = ImageDataset(images=images, labels=dataset.labels, masks=dataset.masks,
                            ids=dataset.ids, splits=dataset.splits, class_names=dataset.class_names)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_factory() if model_factory else create_model(
                arch, num_classes=dataset.num_classes)
        result = train_member(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                              device=device)
        test = data.subset("test")
        acc, _ = evaluate_accuracy(model, test.images, test.labels, device=device)
        rows.append({"mode": mode, "val_accuracy": float(result.val_accuracy),
                     "test_accuracy": float(acc), "n_train": counts["train"],
                     "n_test": counts["test"]})
    return pd.DataFrame(rows)


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
        seed: seeds every training.
        device: where to train.

    Returns:
        ``name -> table`` for every table written (``per_class``, ``per_class_metrics``,
        ``paper_table`` (Ens-Avg vs Exp-Avg vs Ens-Logit, when the metrics table scores
        ``ens-avg``), ``bias``, ``anonymisation``, ``subsets``).

    Raises:
        ValueError: the region has no masks, or an asked-for study lacks its inputs.
    """
    from concilium.ensemble.sources import open_run, read_maps, write_table

    ctx = open_run(run_dir)
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
    metrics_path = Path(run_dir) / "results" / "metrics.parquet"
    if metrics_path.is_file():
        metrics = pd.read_parquet(metrics_path)
        tables["per_class_metrics"] = per_class_metric_means(metrics, class_names=data.class_names)
        scored = set(metrics.source)
        members = [m for m in ctx.member_ids if m in scored]
        if "ens-avg" in scored and members:
            from concilium.ensemble.averaging import paper_table

            tables["paper_table"] = paper_table(
                metrics, members=members,
                logit_source="ens-logit" if "ens-logit" in scored else None)
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
    return tables


def _subset_study(ctx: RunContext, estar_source: str, mode: SubsetMode,
                  config: CNNTrainConfig | None, device: str) -> pd.DataFrame:
    from concilium.ensemble.sources import read_maps
    from concilium.ensemble.subsets import method_subset_study

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
