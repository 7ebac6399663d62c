"""Build the self-contained HTML report from a :class:`ReportData` (no I/O), and write it.

The report answers "which explanation should I trust, and what does it tell me about my model and
data". Each section is built from plain tables and arrays; a section whose inputs are missing
says so in one line instead of failing. All user strings (class names, sample ids, sources) go
through Jinja2 autoescaping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from concilium import __version__
from concilium.metrics.claims import Finding
from concilium.metrics.tables import paper_table
from concilium.report import figures as F
from concilium.report.summary import (
    best_per_metric,
    consensus_points,
    explanation_label,
    explanation_stats,
    family_scores,
    findings,
)
from concilium.vocabulary import EXP_AVG, FAMILIES

SECTIONS: dict[str, str] = {
    "findings": "Headline findings",
    "dataset": "Dataset",
    "models": "Models",
    "gallery": "Gallery",
    "metrics": "Metrics",
    "radar": "Metric families",
    "paper": "Ensemble vs members",
    "consensus": "Committee consensus",
    "per-class": "Per-class quality",
    "bias": "Bias",
    "subsets": "Method subsets",
    "anonymisation": "Anonymisation",
    "attributes": "Attribute explanations",
    "one-vs-one": "One-vs-one explanations",
}
"""Section id -> heading, in report order (the browser test checks each heading)."""

TABLE_ALIASES: dict[str, tuple[str, ...]] = {
    "paper": ("paper", "paper_table"),
    "consensus": ("consensus", "consensus_scores"),
    "per_class": ("per_class", "per_class_quality", "cnn_per_class"),
    "bias": ("bias",),
    "subsets": ("subsets", "method_subsets"),
    "anonymisation": ("anonymisation", "anonymization"),
    "one_vs_one": ("one_vs_one", "ganmex"),
}
"""Logical table name -> file stems looked up under ``RUN/results/``."""


@dataclass
class GalleryItem:
    """One chosen test image with its maps."""

    sample_id: str
    label: str
    image: np.ndarray
    mask: np.ndarray
    cells: list[F.GalleryCell]
    prediction: str | None = None


@dataclass
class AttributeFinding:
    """One attribute of an attribute card."""

    name: str
    probability: float
    saliency: np.ndarray
    part: str | None = None
    mass: float = math.nan
    class_mass: float = math.nan


@dataclass
class AttributeCard:
    """"Predicted class X because: attribute A (probability p) here [map], ..."."""

    sample_id: str
    predicted: str
    probability: float
    image: np.ndarray
    class_map: np.ndarray
    attributes: list[AttributeFinding]
    source: str = "m0"
    method: str = "gradcam"


@dataclass
class ReportData:
    """Everything the report shows, already loaded.

    Attributes:
        title: the report title.
        dataset: the dataset card: ``class_names`` plus free-form knobs (generator parameters,
            folder path, image size, ...).
        class_counts: rows = class names, columns = splits, values = sample counts.
        members: one row per member (``member_id, arch, diversity, seed, epochs,
            val_accuracy``...), from the members' cards.
        metrics: the tidy metrics table (``sample, label, source, method, metric, value``).
        meta: metric metadata (``metric, category, higher_is_better``).
        tables: other results tables by logical name (see ``TABLE_ALIASES``).
        gallery: chosen images with their maps.
        attribute_cards: multitask explanation cards.
        notes: section id -> why its inputs are missing.
        members_view: how member rows appear in the metric table (see ``explanation_stats``).
    """

    title: str = "concilium report"
    dataset: dict = field(default_factory=dict)
    class_counts: pd.DataFrame | None = None
    members: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    meta: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["metric", "category", "higher_is_better"])
    )
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    gallery: list[GalleryItem] = field(default_factory=list)
    attribute_cards: list[AttributeCard] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    members_view: Literal["pooled", "each", "both"] = "pooled"


# ----------------------------------------------------------------------------- view model


@dataclass
class Cell:
    text: str
    bold: bool = False
    css: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class Figure:
    uri: str
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    paragraphs: list[str] = field(default_factory=list)
    items: list[tuple[str, str | None, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    missing: str | None = None


def _fmt(x: object, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return "n/a" if not np.isfinite(x) else f"{float(x):.{digits}f}"
    return str(x)


def frame_table(frame: pd.DataFrame, *, caption: str = "", max_rows: int = 60) -> Table:
    """Any DataFrame as a table (the fallback when a table's columns are not the expected ones)."""
    shown = frame.head(max_rows)
    rows = [[Cell(_fmt(v)) for v in row] for row in shown.itertuples(index=False)]
    if len(frame) > max_rows:
        caption = (caption + " " if caption else "") + f"(first {max_rows} of {len(frame)} rows)"
    return Table([str(c) for c in frame.columns], rows, caption)


def _arrow(hib: object) -> str:
    if hib is None or (isinstance(hib, float) and math.isnan(hib)):
        return ""
    return " ↑" if bool(hib) else " ↓"


def _meta_maps(meta: pd.DataFrame) -> tuple[dict[str, object], dict[str, str]]:
    if meta is None or meta.empty:
        return {}, {}
    hib = dict(zip(meta["metric"], meta["higher_is_better"], strict=True))
    cat = dict(zip(meta["metric"], meta["category"], strict=True))
    return hib, cat


# ----------------------------------------------------------------------------- sections


def _section_findings(data: ReportData, found: list[Finding]) -> Section:
    s = Section("findings", SECTIONS["findings"],
                "The claims of the ensembling papers, checked on this run.")
    if not found:
        s.missing = "No findings: the run has no metrics or audit tables yet."
    for f in found:
        css = {"held": "held", "not held": "failed"}.get(f.verdict, "")
        number = "" if f.verdict == "not measured" else (
            f"{f.metric} = {_fmt(f.estimate)} (95% CI {_fmt(f.ci_low)} to {_fmt(f.ci_high)}, "
            f"n = {f.n}; threshold {_fmt(f.threshold)}). ")
        s.items.append((f"{f.claim}: {f.verdict}.", f"{number}{f.detail}. Rule: {f.rule}.", css))
    return s


def _section_dataset(data: ReportData) -> Section:
    s = Section("dataset", SECTIONS["dataset"])
    if not data.dataset:
        s.missing = data.notes.get("dataset", "No dataset card: run.json was not found.")
        return s
    knobs = {k: v for k, v in data.dataset.items() if k != "class_names"}
    s.tables.append(
        Table(["property", "value"],
              [[Cell(str(k)), Cell(_fmt(v) if not isinstance(v, dict | list) else json.dumps(v))]
               for k, v in knobs.items()],
              "Where the data came from")
    )
    if data.class_counts is not None and not data.class_counts.empty:
        counts = data.class_counts.reset_index().rename(columns={"index": "class"})
        s.tables.append(frame_table(counts, caption="Samples per class and split"))
    elif data.dataset.get("class_names"):
        s.paragraphs.append("Classes: " + ", ".join(map(str, data.dataset["class_names"])))
    return s


def _section_models(data: ReportData) -> Section:
    s = Section("models", SECTIONS["models"], "Each member's card (validation accuracy).")
    if data.members is None or data.members.empty:
        s.missing = data.notes.get("models", "No member cards were found.")
        return s
    cols = [c for c in ("member_id", "arch", "diversity", "seed", "epochs", "val_accuracy",
                        "num_attributes") if c in data.members.columns]
    s.tables.append(frame_table(data.members[cols or list(data.members.columns)]))
    if "val_accuracy" in data.members.columns:
        acc = data.members["val_accuracy"].astype(float)
        s.paragraphs.append(
            f"{len(acc)} members; validation accuracy {acc.min():.3f} to {acc.max():.3f} "
            f"(mean {acc.mean():.3f})."
        )
    return s


def _section_gallery(data: ReportData) -> Section:
    s = Section("gallery", SECTIONS["gallery"],
                "Chosen test images: the image, its ground-truth mask, each method's map for a few "
                "members and every ensemble's map. Every map is divided by its max |value|, so all "
                "share one colour scale (red positive, blue negative); per-image scores under each.")
    if not data.gallery:
        s.missing = data.notes.get("gallery", "No maps to show: the store has no entries.")
        return s
    for item in data.gallery:
        title = f"{item.sample_id}: class {item.label}"
        if item.prediction is not None:
            title += f", predicted {item.prediction}"
        s.figures.append(Figure(F.gallery_figure(item.image, item.mask, item.cells, title=title),
                                title))
    return s


def _section_metrics(data: ReportData, stats: pd.DataFrame | None) -> Section:
    s = Section("metrics", SECTIONS["metrics"],
                "Mean and 95% confidence interval over the test images, per explanation and "
                "metric. ↑ higher is better, ↓ lower is better; the best per metric is in bold. "
                f"'{EXP_AVG}' pools the members per image (its mean is the Exp-Avg).")
    if stats is None or stats.empty:
        s.missing = data.notes.get("metrics", "No metrics table: run `concilium evaluate`.")
        return s
    hib, cat = _meta_maps(data.meta)
    best = best_per_metric(stats, data.meta)
    families = [*FAMILIES, "other"]
    for family in families:
        metrics = sorted(m for m in stats["metric"].unique() if cat.get(m, "other") == family)
        if not metrics:
            continue
        sub = stats[stats["metric"].isin(metrics)]
        header = ["explanation"] + [f"{m}{_arrow(hib.get(m))}" for m in metrics]
        rows = []
        for expl in dict.fromkeys(sub["explanation"]):
            row = [Cell(expl)]
            for m in metrics:
                r = sub[(sub["explanation"] == expl) & (sub["metric"] == m)]
                if r.empty:
                    row.append(Cell(""))
                    continue
                r = r.iloc[0]
                text = _fmt(r["mean"])
                if np.isfinite(r["ci_low"]):
                    text += f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                row.append(Cell(text, bold=best.get(m) == expl))
            rows.append(row)
        s.tables.append(Table(header, rows, family))
    return s


def _section_radar(data: ReportData, stats: pd.DataFrame | None) -> Section:
    s = Section("radar", SECTIONS["radar"],
                "Per explanation, the mean score of each metric family, every metric rescaled to "
                "[0, 1] over the explanations shown with its direction respected (1 = best).")
    if stats is None or stats.empty:
        s.missing = data.notes.get("metrics", "No metrics table: run `concilium evaluate`.")
        return s
    scores = family_scores(stats, data.meta)
    scores = scores.dropna(how="all")
    if scores.empty:
        s.missing = "No metric has a known family and direction (metric metadata missing)."
        return s
    s.figures.append(Figure(F.radar_figures(scores)))
    s.tables.append(frame_table(scores.reset_index(), caption="Family scores"))
    return s


def _section_paper(data: ReportData) -> Section:
    s = Section("paper", SECTIONS["paper"],
                "The ensembles paper's table: the metric of the averaged map (Ens-Avg), the mean "
                "over members of each member's metric (Exp-Avg) and the map of the averaged-logit "
                "model (Ens-Logit).")
    if data.metrics is None:
        s.missing = data.notes.get("metrics", "No metrics table: run `concilium evaluate`.")
        return s
    table = paper_table(data.metrics)
    if table.empty or table[["ens_avg", "ens_logit"]].isna().all().all():
        s.missing = "No ens-avg or ens-logit explanations were evaluated."
        return s
    hib, _ = _meta_maps(data.meta)
    rows = []
    for r in table.itertuples():
        cand = {"ens_avg": r.ens_avg, "exp_avg": r.exp_avg, "ens_logit": r.ens_logit}
        finite = {k: v for k, v in cand.items() if np.isfinite(v)}
        h = hib.get(r.metric)
        win = None
        if finite and h is not None:
            win = max(finite, key=finite.get) if h else min(finite, key=finite.get)
        rows.append([Cell(str(r.method)), Cell(f"{r.metric}{_arrow(h)}"),
                     *[Cell(_fmt(v), bold=win == k) for k, v in cand.items()],
                     Cell(str(r.n_members))])
    s.tables.append(Table(["method", "metric", "Ens-Avg", "Exp-Avg", "Ens-Logit", "members"],
                          rows))
    return s


def _section_consensus(data: ReportData) -> Section:
    s = Section("consensus", SECTIONS["consensus"],
                "Each committee member's consensus score (similarity of its maps to the committee's "
                "vote) against its accuracy.")
    table = data.tables.get("consensus")
    if table is None or table.empty:
        s.missing = data.notes.get("consensus", "No consensus table: run `concilium ensemble "
                                   "--kind consensus`.")
        return s
    points = consensus_points(table)
    if points is not None and len(points.dropna()) >= 2:
        p = points.dropna()
        x, y = p["consensus_score"].to_numpy(float), p["accuracy"].to_numpy(float)
        corr = ""
        if len(p) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            from scipy import stats as sps

            pr, pp = sps.pearsonr(x, y)
            sr, sp = sps.spearmanr(x, y)
            corr = (f"Pearson r = {pr:+.3f} (p = {pp:.3g}), Spearman rho = {sr:+.3f} "
                    f"(p = {sp:.3g}) over {len(p)} members.")
            s.paragraphs.append(corr)
        s.figures.append(Figure(
            F.scatter_figure(x, y, [str(m) for m in p["member"]], xlabel="consensus score",
                             ylabel="accuracy", title="consensus score vs accuracy"), corr))
    s.tables.append(frame_table(table))
    return s


def _bar_section(
    data: ReportData, key: str, section_id: str, intro: str, value_names: Sequence[str],
    label_names: Sequence[str], missing: str,
) -> Section:
    s = Section(section_id, SECTIONS[section_id], intro)
    table = data.tables.get(key)
    if table is None or table.empty:
        s.missing = data.notes.get(key, missing)
        return s
    value = next((c for c in value_names if c in table.columns), None)
    label = next((c for c in label_names if c in table.columns), None)
    if value is not None and label is not None:
        flagged = table["flagged"].astype(bool).tolist() if "flagged" in table.columns else None
        labels = table[label].astype(str).tolist()
        if "source" in table.columns and "method" in table.columns and \
                len(table[["source", "method"]].drop_duplicates()) > 1:
            labels = [f"{a} ({explanation_label(str(b), str(c))})" for a, b, c in
                      zip(labels, table["source"], table["method"], strict=True)]
        elif "source" in table.columns and table["source"].nunique() > 1:
            labels = [f"{a} ({b})" for a, b in zip(labels, table["source"].astype(str),
                                                     strict=True)]
        threshold = None
        for col in ("threshold", "flag_threshold"):
            if col in table.columns and table[col].notna().any():
                threshold = float(table[col].dropna().iloc[0])
        n_flag = sum(flagged) if flagged else 0
        if flagged is not None:
            names = sorted({str(x) for x, f in zip(table[label], flagged, strict=True) if f})
            s.paragraphs.append(f"Flagged ({n_flag}): {', '.join(names) if names else 'none'}.")
        s.figures.append(Figure(F.bar_figure(labels[:40], table[value].to_numpy(float)[:40],
                                             flagged=(flagged or [False] * len(labels))[:40],
                                             threshold=threshold, xlabel=value,
                                             title=SECTIONS[section_id])))
    s.tables.append(frame_table(table))
    return s


def _section_attributes(data: ReportData) -> Section:
    s = Section("attributes", SECTIONS["attributes"],
                "For models with attribute heads: which attributes the model found and where, and "
                "the relevance mass of each attribute's map on its part mask next to the class "
                "map's.")
    if not data.attribute_cards:
        s.missing = data.notes.get("attributes", "The models have no attribute heads.")
        return s
    rows = []
    for card in data.attribute_cards:
        found = [a for a in card.attributes if a.probability >= 0.5] or card.attributes[:1]
        because = "; ".join(f"attribute {a.name} (probability {a.probability:.2f}) here"
                            for a in found)
        s.items.append((f"{card.sample_id}: predicted class {card.predicted} "
                        f"(probability {card.probability:.2f}) because: {because}.",
                        f"{card.method} maps of member {card.source}", ""))
        s.figures.append(Figure(F.attribute_card_figure(
            card.image, card.class_map, [(f"{a.name} p={a.probability:.2f}", a.saliency)
                                         for a in found],
            class_title=f"class {card.predicted}"), card.sample_id))
        for a in card.attributes:
            rows.append([Cell(card.sample_id), Cell(a.name), Cell(_fmt(a.probability)),
                         Cell(a.part or ""), Cell(_fmt(a.mass), bold=a.mass > a.class_mass),
                         Cell(_fmt(a.class_mass))])
    s.tables.append(Table(["sample", "attribute", "probability", "part mask",
                           "relevance mass (attribute map)", "relevance mass (class map)"], rows))
    return s


def build_sections(data: ReportData) -> tuple[list[Section], dict]:
    """All sections in report order, and the machine summary (``summary.json`` content)."""
    stats = explanation_stats(data.metrics, members=data.members_view) \
        if data.metrics is not None and not data.metrics.empty else None
    found = findings(data.metrics, data.tables, card=data.dataset)
    sections = [
        _section_findings(data, found),
        _section_dataset(data),
        _section_models(data),
        _section_gallery(data),
        _section_metrics(data, stats),
        _section_radar(data, stats),
        _section_paper(data),
        _section_consensus(data),
        _bar_section(data, "per_class", "per-class",
                     "Quality of the CNN ensembler's explanation per class (Dice with the masks); "
                     "classes below the threshold are flagged (red): hard or under-represented.",
                     ("dice", "mean_dice", "value", "iou"), ("class_name", "class", "label"),
                     "No per-class table: run `concilium audit`."),
        _bar_section(data, "bias", "bias",
                     "Share of attribution mass on regions that are not evidence (the watermark, "
                     "or outside the object) per class; flagged classes (red) suggest the model "
                     "uses a shortcut.", ("mass_share", "share", "bias", "value"),
                     ("class_name", "class", "label"), "No bias table: run `concilium audit`."),
        _bar_section(data, "subsets", "subsets",
                     "The CNN ensembler trained on subsets of the methods: which methods add "
                     "information.", ("test_dice", "dice", "val_dice", "value"), ("subset", "methods", "left_out"),
                     "No method-subset table: run `concilium ensemble --kind cnn` with the study."),
        _bar_section(data, "anonymisation", "anonymisation",
                     "A classifier trained on images replaced by their explanations, next to the "
                     "original's accuracy (feature reduction / anonymisation).",
                     ("test_accuracy", "accuracy", "value"), ("mode", "input", "variant", "name"),
                     "No anonymisation table: run `concilium audit`."),
        _section_attributes(data),
        _bar_section(data, "one_vs_one", "one-vs-one",
                     "Why class c and not t: one-vs-one maps with counterfactual (GANMEX) and "
                     "classic baselines, scored on the difference mask.",
                     ("relevance_mass", "value", "auc"), ("baseline", "method", "name"),
                     "No counterfactual baseline in this run (GANMEX not trained)."),
    ]
    summary = {
        "title": data.title,
        "concilium_version": __version__,
        "dataset": _jsonable(data.dataset),
        "members": [] if data.members is None else _jsonable(data.members.to_dict("records")),
        "explanations": [] if stats is None else _jsonable(stats.to_dict("records")),
        "best_per_metric": {} if stats is None else best_per_metric(stats, data.meta),
        "findings": [_jsonable(f.as_dict()) for f in found],
        "paper_table": [] if data.metrics is None
        else _jsonable(paper_table(data.metrics).to_dict("records")),
        "missing_sections": {s.id: s.missing for s in sections if s.missing},
    }
    return sections, summary


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    return str(obj)


def render_html(data: ReportData) -> tuple[str, dict]:
    """Render the report page and its machine summary.

    Returns:
        ``(html, summary)``.
    """
    sections, summary = build_sections(data)
    env = Environment(
        loader=PackageLoader("concilium.report", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    )
    html = env.get_template("report.html").render(
        title=data.title, sections=sections, version=__version__,
    )
    return html, summary


def save(data: ReportData, out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``summary.json`` into ``out_dir``; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html, summary = render_html(data)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
