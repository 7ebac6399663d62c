"""Gather a :class:`~concilium.report.build.ReportData` from a run directory.

Reads ``RUN/run.json`` (dataset and members), the members' cards, the explanation store, the
metric registry's metadata and every table under ``RUN/results/``. Anything missing is recorded
as a note for its section; nothing here raises for a partial run except a missing ``RUN``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from concilium.report.build import (
    TABLE_ALIASES,
    AttributeCard,
    AttributeFinding,
    GalleryItem,
    ReportData,
)
from concilium.report.figures import GalleryCell
from concilium.vocabulary import is_member

DEFAULT_GALLERY_METRICS = ("relevance_mass", "mask_correlation", "pointing_game")


def metric_meta() -> pd.DataFrame:
    """``metric, category, higher_is_better`` for every registered metric (empty if the metrics
    package is not available)."""
    try:
        from concilium.metrics import METRICS
    except ImportError:
        return pd.DataFrame(columns=["metric", "category", "higher_is_better"])
    rows = []
    for name, entry in METRICS.items():
        rows.append({"metric": name, "category": getattr(entry, "category", None),
                     "higher_is_better": getattr(entry, "higher_is_better", None)})
    return pd.DataFrame(rows, columns=["metric", "category", "higher_is_better"])


def read_tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    """Every ``*.parquet`` (or, failing that, ``*.csv``) table under ``results_dir`` by stem,
    plus the logical names of ``TABLE_ALIASES``."""
    raw: dict[str, pd.DataFrame] = {}
    if results_dir.is_dir():
        for path in sorted(results_dir.glob("*.csv")):
            raw[path.stem] = pd.read_csv(path)
        for path in sorted(results_dir.glob("*.parquet")):
            raw[path.stem] = pd.read_parquet(path)
    out = dict(raw)
    for logical, stems in TABLE_ALIASES.items():
        for stem in stems:
            if stem in raw:
                out[logical] = raw[stem]
                break
    return out


def read_member_cards(models_dir: str | Path) -> pd.DataFrame | None:
    """One row per ``MODELS/<member_id>/card.json``, sorted by member id; ``None`` if none."""
    root = Path(models_dir)
    cards = []
    for path in sorted(root.glob("*/card.json")):
        try:
            cards.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    if not cards:
        return None
    frame = pd.DataFrame(cards)
    if "member_id" in frame.columns:
        key = frame["member_id"].map(lambda m: (len(str(m)), str(m)))
        frame = frame.iloc[key.argsort(kind="stable")].reset_index(drop=True)
    return frame


def load_report_data(
    run_dir: str | Path,
    *,
    title: str | None = None,
    gallery_images: int = 4,
    gallery_members: int = 3,
    gallery_metrics: Sequence[str] = DEFAULT_GALLERY_METRICS,
    members_view: Literal["pooled", "each", "both"] = "pooled",
    attribute_cards: int = 3,
    attribute_method: str = "gradcam",
    device: str = "cpu",
) -> ReportData:
    """Everything the report of ``run_dir`` shows.

    Args:
        run_dir: the run directory.
        title: the report title (default: ``"concilium report: <run dir name>"``).
        gallery_images: how many test images the gallery shows (one per class first).
        gallery_members: how many members' maps per method the gallery shows.
        gallery_metrics: the per-image scores printed under each gallery map (those evaluated).
        members_view: member rows of the metric table: ``"pooled"`` (one Exp-Avg row per method),
            ``"each"`` or ``"both"``.
        attribute_cards: how many multitask explanation cards to draw (0: none).
        attribute_method: the explanation method of the attribute cards.
        device: where the members run for the attribute cards.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found; pass the --out of a run")
    data = ReportData(title=title or f"concilium report: {run.resolve().name}",
                      members_view=members_view)
    data.meta = metric_meta()
    data.tables = read_tables(run / "results")
    data.metrics = data.tables.pop("metrics", None)
    if data.metrics is not None and data.metrics.empty:
        data.metrics = None

    info = None
    try:
        from concilium.store.manifest import RunInfo

        info = RunInfo.load(run)
    except (FileNotFoundError, ValueError, ImportError) as err:
        data.notes["dataset"] = f"No dataset card: {err}"
        data.notes["gallery"] = f"No gallery: {err}"
    if info is None:
        return data

    data.members = read_member_cards(info.models_dir)
    if data.members is not None and "member_id" in data.members.columns:
        data.members = data.members[data.members["member_id"].isin(info.member_ids)]
    if data.members is None or data.members.empty:
        data.notes["models"] = f"No member cards under {info.models_dir}."

    try:
        full = info.dataset.load()
    except (FileNotFoundError, ValueError, ImportError) as err:
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
    candidates = list(range(len(explained)))
    if "test" in explained.splits:  # show held-out images when the run explained several splits
        candidates = [i for i in candidates if explained.splits[i] == "test"]
    if data.metrics is not None:  # ... and the ones with per-image scores
        scored = set(data.metrics["sample"].astype(str))
        candidates = [i for i in candidates if explained.ids[i] in scored] or candidates
    picked = choose_samples([int(explained.labels[i]) for i in candidates], gallery_images)
    chosen = [candidates[i] for i in picked]
    data.gallery = gallery_items(run, explained, chosen, metrics=data.metrics,
                                 members=gallery_members, metrics_shown=gallery_metrics)
    if not data.gallery:
        data.notes["gallery"] = "The explanation store has no finished maps for these images."
    if attribute_cards > 0:
        data.attribute_cards, note = _attribute_cards(
            run, explained, chosen[:attribute_cards], method=attribute_method, device=device,
        )
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


def choose_samples(labels: Sequence[int], n: int) -> list[int]:
    """``n`` row numbers: the first sample of each class in class order, then the next ones in
    order (deterministic, covers as many classes as possible)."""
    first: dict[int, int] = {}
    for i, c in enumerate(labels):
        first.setdefault(int(c), i)
    chosen = [first[c] for c in sorted(first)][:n]
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    return sorted(chosen + rest[: max(0, n - len(chosen))])


def _abbrev(metric: str) -> str:
    return "".join(w[0] for w in metric.split("_") if w)


def gallery_items(
    run: Path, explained, chosen: Sequence[int], *, metrics: pd.DataFrame | None, members: int,
    metrics_shown: Sequence[str],
) -> list[GalleryItem]:
    """The maps of the chosen rows of ``explained`` from the store of ``run``."""
    try:
        from concilium.store import ExplanationStore

        store = ExplanationStore(run, mode="r")
        entries = store.entries()
    except (FileNotFoundError, ValueError, ImportError):
        return []
    entries = entries[entries["complete"]]
    if entries.empty:
        return []
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
    return items


def _attribute_cards(
    run: Path, explained, chosen: Sequence[int], *, method: str, device: str
) -> tuple[list[AttributeCard], str | None]:
    if not explained.attribute_names:
        return [], "The dataset has no attributes."
    try:
        from concilium.explain import explain
        from concilium.models.base import AttributeView
        from concilium.store import Run

        members = Run.open(run, load_models=True, device=device).members
    except (ImportError, FileNotFoundError, ValueError) as err:
        return [], f"The members could not be loaded: {err}"
    multitask = [(m, c) for m, c in members if getattr(m, "attribute_head", None) is not None]
    if not multitask:
        return [], "The models have no attribute heads (train with attributes to get cards)."
    model, card = multitask[0]
    rows = list(chosen)
    images = explained.images[rows].to(device)
    try:
        with torch.no_grad():
            class_logits, attr_logits = model.forward_all(images)
        pred = class_logits.argmax(1)
        class_prob = class_logits.softmax(1).gather(1, pred[:, None])[:, 0]
        attr_prob = attr_logits.sigmoid()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            class_maps = explain(model, images, pred, method=method).cpu().numpy()
            view = AttributeView(model)
            attr_maps = {
                a: explain(view, images, torch.full((len(rows),), a, device=images.device),
                           method=method).cpu().numpy()
                for a in range(len(explained.attribute_names))
            }
    except (ValueError, TypeError, RuntimeError) as err:
        return [], f"The attribute maps could not be computed: {err}"
    out = []
    for k, row in enumerate(rows):
        findings = []
        for a, name in enumerate(explained.attribute_names):
            part = name.split("_")[0]
            part = part if part in explained.parts else None
            mass = cmass = math.nan
            if part is not None:
                pmask = explained.parts[part][row].numpy()
                mass = _relevance_mass(attr_maps[a][k], pmask)
                cmass = _relevance_mass(class_maps[k], pmask)
            findings.append(AttributeFinding(name, float(attr_prob[k, a]), attr_maps[a][k], part,
                                             mass, cmass))
        findings.sort(key=lambda f: -f.probability)
        out.append(AttributeCard(
            sample_id=explained.ids[row],
            predicted=explained.class_names[int(pred[k])], probability=float(class_prob[k]),
            image=explained.images[row].permute(1, 2, 0).numpy(), class_map=class_maps[k],
            attributes=findings, source=str(card.member_id), method=method,
        ))
    return out, None


def _relevance_mass(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Relevance mass (``concilium.metrics``: ``sum(a * s) / sum(a)``) of one map on one mask;
    NaN where the metric is undefined (empty mask, map summing to 0)."""
    from concilium.metrics import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = evaluate("relevance_mass", torch.from_numpy(saliency[None]).float(),
                         masks=torch.from_numpy(mask[None]).bool())
    return float(value[0])
