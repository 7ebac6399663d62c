"""Gather a :class:`~concilium.report.data.ReportData` from a run directory, reading only.

Reads ``RUN/run.json`` (dataset and members), the members' cards, the explanation store's maps,
the metric registry's metadata, every table under ``RUN/results/`` and the attribute cards'
maps (``RUN/results/attributes.npz``, written by ``concilium audit``). Nothing here runs a model
or computes an explanation or a metric. Anything missing is recorded as a note for its section;
nothing here raises for a partial run except a missing ``RUN``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from concilium._options import validate_options
from concilium.data.dataset import ImageDataset
from concilium.data.showcase import showcase_rows
from concilium.metrics.registry import METRICS
from concilium.report.data import AttributeCard, AttributeFinding, GalleryItem, ReportData
from concilium.report.figures import GalleryCell
from concilium.report.options import ReportOptions
from concilium.store import (
    ATTRIBUTES_TABLE,
    RESULTS_DIR,
    ExplanationStore,
    RunInfo,
    member_cards,
    read_arrays,
)
from concilium.vocabulary import is_member


def metric_meta() -> pd.DataFrame:
    """``metric, category, higher_is_better`` for every registered metric."""
    rows = [{"metric": name, "category": spec.category, "higher_is_better": spec.higher_is_better}
            for name, spec in METRICS.items()]
    return pd.DataFrame(rows, columns=["metric", "category", "higher_is_better"])


def read_tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    """Every table under ``results_dir`` by file stem: ``<stem>.parquet``, or ``<stem>.csv``
    where no parquet was written (``experiments/`` write csv only)."""
    out: dict[str, pd.DataFrame] = {}
    if results_dir.is_dir():
        for path in sorted(results_dir.glob("*.csv")):
            out[path.stem] = pd.read_csv(path)
        for path in sorted(results_dir.glob("*.parquet")):
            out[path.stem] = pd.read_parquet(path)
    return out


def read_member_cards(info: RunInfo) -> pd.DataFrame | None:
    """One row per member of the run (a members folder's ``card.json`` fields, the library and
    name of other sources; no model is loaded), sorted by member id; ``None`` if none."""
    cards = [row for row in member_cards(info) if "error" not in row]
    if not cards:
        return None
    frame = pd.DataFrame(cards)
    if "member_id" in frame.columns:
        key = frame["member_id"].map(lambda m: (len(str(m)), str(m)))
        frame = frame.iloc[key.argsort(kind="stable")].reset_index(drop=True)
    return frame


def load_report_data(
    run_dir: str | Path, options: ReportOptions | Mapping[str, Any] | None = None
) -> ReportData:
    """Everything the report of ``run_dir`` shows, read from the run directory.

    Args:
        run_dir: the run directory.
        options: :class:`~concilium.report.options.ReportOptions` or a mapping of its fields
            (title, gallery size, members view; default: its defaults).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: an unknown option (naming the valid ones) or a bad value.
    """
    o = validate_options(ReportOptions, options, what="the report")
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found; pass the --out of a run")
    data = ReportData(title=o.title or f"concilium report: {run.resolve().name}",
                      run_dir=str(run), members_view=o.members_view)
    data.meta = metric_meta()
    data.tables = read_tables(run / RESULTS_DIR)
    data.metrics = data.tables.pop("metrics", None)
    if data.metrics is not None and data.metrics.empty:
        data.metrics = None

    try:
        info = RunInfo.load(run)
    except (FileNotFoundError, ValueError) as err:
        data.notes["dataset"] = f"No dataset card: {err}"
        data.notes["gallery"] = f"No gallery: {err}"
        return data

    data.members = read_member_cards(info)
    if data.members is None or data.members.empty:
        data.notes["models"] = f"No member cards for {', '.join(info.models)}."

    try:
        full = info.dataset.load()
    except (FileNotFoundError, ValueError) as err:
        data.notes["dataset"] = f"The dataset could not be reloaded: {err}"
        data.notes["gallery"] = data.notes["dataset"]
        return data
    if full.fingerprint() != info.dataset_fingerprint:
        note = (f"The dataset rebuilt from run.json differs from the explained one (fingerprint "
                f"{full.fingerprint()} != {info.dataset_fingerprint}); re-run the experiment.")
        data.notes.update(dataset=note, gallery=note, attributes=note)
        return data
    data.dataset, data.class_counts = dataset_card(full, info.dataset.kind,
                                                   getattr(info.dataset, "path", None))
    data.dataset["explained split"] = f"{info.split} ({info.n} samples)"
    position = {sid: i for i, sid in enumerate(full.ids)}
    rows = [position[s] for s in info.sample_ids if s in position]
    if len(rows) != len(info.sample_ids):
        data.notes["gallery"] = "The dataset no longer holds the run's samples."
        return data
    explained = full.subset(rows)
    scored = None if data.metrics is None else set(data.metrics["sample"].astype(str))
    chosen = showcase_rows(explained, o.gallery_images, scored=scored)
    data.gallery, note = gallery_items(run, explained, chosen, metrics=data.metrics,
                                       members=o.gallery_members,
                                       metrics_shown=o.gallery_metrics)
    if note:
        data.notes["gallery"] = note
    data.attribute_cards, note = attribute_cards(run, explained, data.tables.get(ATTRIBUTES_TABLE),
                                                 members=data.members)
    if note:
        data.notes["attributes"] = note
    return data


def dataset_card(
    dataset, kind: str, path: str | None
) -> tuple[dict, pd.DataFrame]:
    """The dataset card (class names, knobs) and the per-class, per-split sample counts."""
    card: dict = {"kind": kind, "samples": len(dataset),
                  "image size": "x".join(map(str, dataset.image_size)),
                  "classes": dataset.num_classes, "class_names": list(dataset.class_names)}
    if path:
        card["path"] = path
    config = dataset.card.get("config") if isinstance(dataset.card, dict) else None
    if isinstance(config, dict):
        card.update({k: v for k, v in config.items() if k not in card})
        for knob in ("rare_class", "watermark_class"):
            idx = config.get(knob)
            if isinstance(idx, int) and 0 <= idx < dataset.num_classes:
                card[f"{knob}_name"] = dataset.class_names[idx]
    if dataset.attribute_names:
        card["attributes"] = ", ".join(dataset.attribute_names)
    counts = pd.crosstab(
        pd.Categorical([dataset.class_names[i] for i in dataset.labels.tolist()],
                       categories=dataset.class_names),
        pd.Series(dataset.splits, name="split"), dropna=False,
    )
    counts.index.name = "class"
    counts.columns.name = None
    return card, counts


def _abbrev(metric: str) -> str:
    return "".join(w[0] for w in metric.split("_") if w)


def gallery_items(
    run: Path, explained: ImageDataset, chosen: Sequence[int], *, metrics: pd.DataFrame | None,
    members: int, metrics_shown: Sequence[str],
) -> tuple[list[GalleryItem], str | None]:
    """The stored maps of the chosen rows of ``explained`` from the store of ``run``, and why
    there are none (``None`` when there are some)."""
    try:
        store = ExplanationStore(run, mode="r")
        entries = store.entries()
    except (FileNotFoundError, ValueError) as err:
        return [], f"No gallery: {err}"
    entries = entries[entries["complete"]]
    if entries.empty:
        return [], f"No finished maps in the store: run `concilium explain` into {run}."
    member_sources = sorted({s for s in entries["source"] if is_member(s)},
                            key=lambda s: int(s[1:]))[:members]
    member_methods = sorted({m for s, m in zip(entries["source"], entries["method"], strict=True)
                             if is_member(s)})
    layout: list[tuple[str, str, str]] = []  # (row, source, method)
    for method in member_methods:
        layout += [(method, s, method) for s in member_sources]
        layout += [(method, s, method) for s in sorted(set(
            entries[(entries["method"] == method) & ~entries["source"].map(is_member)]["source"]))]
    cross = entries[~entries["source"].map(is_member) & ~entries["method"].isin(member_methods)]
    layout += [(f"across methods: {m}", s, m) for s, m in zip(cross["source"], cross["method"],
                                                              strict=True)]
    sample_ids = [explained.ids[i] for i in chosen]
    maps: dict[tuple[str, str], np.ndarray] = {}
    for _, source, method in layout:
        if (source, method) in maps:
            continue
        try:
            hashes = entries[(entries["source"] == source) & (entries["method"] == method)]
            entry = store.get(source, method, hashes["params_hash"].iloc[-1])
            maps[(source, method)] = entry.read(entry.rows_of(sample_ids)).numpy()
        except ValueError:
            continue
    score = None
    if metrics is not None:
        shown = [m for m in metrics_shown if m in set(metrics["metric"])][:2]
        sel = metrics[metrics["metric"].isin(shown) & metrics["sample"].astype(str).isin(
            sample_ids)]
        score = sel.groupby(["sample", "source", "method", "metric"])["value"].mean()
    items = []
    for k, row in enumerate(chosen):
        sid = explained.ids[row]
        cells = []
        for row_label, source, method in layout:
            if (source, method) not in maps:
                continue
            caption = ""
            if score is not None:
                parts = []
                for metric in dict.fromkeys(score.index.get_level_values("metric")):
                    key = (sid, source, method, metric)
                    if key in score.index and math.isfinite(score[key]):
                        parts.append(f"{_abbrev(metric)} {score[key]:.2f}")
                caption = " ".join(parts)
            column = source
            cells.append(GalleryCell(row_label, column, maps[(source, method)][k], caption))
        if not cells:
            continue
        items.append(GalleryItem(
            sample_id=sid, label=explained.class_names[int(explained.labels[row])],
            image=explained.images[row].permute(1, 2, 0).numpy(),
            mask=explained.masks[row].numpy(), cells=cells,
        ))
    if not items:
        return [], "The explanation store has no finished maps for these images."
    return items, None


def attribute_cards(
    run: Path, explained: ImageDataset, table: pd.DataFrame | None, *,
    members: pd.DataFrame | None,
) -> tuple[list[AttributeCard], str | None]:
    """The attribute cards written by ``concilium audit``: ``RUN/results/attributes.parquet``
    (columns :data:`concilium.store.results.ATTRIBUTE_COLUMNS`) and the maps in
    ``attributes.npz``; and why there are none (``None`` when there are some)."""
    if not explained.attribute_names:
        return [], "The dataset has no attributes."
    if table is None or table.empty:
        heads = members is not None and "num_attributes" in members.columns and \
            bool((members["num_attributes"].fillna(0) > 0).any())
        if members is not None and not heads:
            return [], "The models have no attribute heads (train with attributes to get cards)."
        return [], (f"No attribute cards: run `concilium audit {run}` (it explains the attribute "
                    "head of the first multitask member).")
    arrays = read_arrays(run, ATTRIBUTES_TABLE)
    stale = (f"The attribute maps do not match the attributes table; re-run "
             f"`concilium audit {run}`.")
    if arrays is None:
        return [], stale
    maps_of = {str(sid): k for k, sid in enumerate(arrays["sample_ids"])}
    attr_of = {str(name): a for a, name in enumerate(arrays["attribute_names"])}
    position = {sid: i for i, sid in enumerate(explained.ids)}
    out = []
    for sid, rows in table.groupby("sample", sort=False):
        sid = str(sid)
        if sid not in maps_of or sid not in position or not set(rows["attribute"]) <= set(attr_of):
            return [], stale
        k, first = maps_of[sid], rows.iloc[0]
        found = [AttributeFinding(str(r["attribute"]), float(r["probability"]),
                                  arrays["attribute_maps"][k, attr_of[str(r["attribute"])]],
                                  _part(r["part"]), float(r["relevance_mass"]),
                                  float(r["class_relevance_mass"]))
                 for _, r in rows.iterrows()]
        found.sort(key=lambda f: -f.probability)
        out.append(AttributeCard(
            sample_id=sid, predicted=str(first["predicted"]),
            probability=float(first["class_probability"]),
            image=explained.images[position[sid]].permute(1, 2, 0).numpy(),
            class_map=arrays["class_maps"][k], attributes=found, source=str(first["source"]),
            method=str(first["method"]),
        ))
    return out, None


def _part(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return str(value)
