"""The data sections of the report, one builder per section, each reading a :class:`ReportData`
and the shared :class:`~concilium.report.context.Context`, registered in
:data:`~concilium.report.registry.SECTIONS` in report order (the overview sections that open the
report are in :mod:`concilium.report.overview`).

A builder turns tables and arrays into a :class:`Section` (paragraphs, tables, figures); a section
whose inputs are missing says so in one line, with the command that writes them. Tables are read
by the column names their writers document (``concilium.jobs``, ``concilium.ensemble.audit``);
a table without them is shown as it is. Directions, arrows and families come from the metric
registry's metadata (``higher_is_better``, ``category``), never from a metric's name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from concilium.metrics.claims import consensus_accuracy_claim, consensus_localisation_claim
from concilium.metrics.informative import RULE as INFORMATIVE_RULE
from concilium.metrics.tables import paper_table
from concilium.report import figures as F
from concilium.report.context import Context
from concilium.report.data import ReportData
from concilium.report.registry import SECTIONS
from concilium.report.summary import (
    best_per_metric,
    consensus_points,
    explanation_label,
    family_scores,
)
from concilium.report.view import Cell, Figure, Section, Table, fmt, frame_table, to_csv
from concilium.vocabulary import EXP_AVG, FAMILIES


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


def _lacks(table: pd.DataFrame, columns: list[str], writer: str) -> str | None:
    """A note when ``table`` lacks documented columns (then it is shown as it is)."""
    missing = [c for c in columns if c not in table.columns]
    if not missing:
        return None
    return (f"The table lacks the columns {', '.join(missing)} that {writer} writes (an older "
            "version?); shown as it is.")


def _section(data: ReportData, section_id: str, intro: str = "", *, present: bool, missing: str,
             note: str | None = None) -> Section:
    """A new section; when its input is not ``present``, ``missing`` is set to why: the loader's
    note ``data.notes[note or section_id]`` if it left one, else ``missing``."""
    s = Section(section_id, SECTIONS[section_id], intro)
    if not present:
        s.missing = data.notes.get(note or section_id, missing)
    return s


def _no_metrics(data: ReportData) -> str:
    return f"No metrics table: run `concilium evaluate {data.run_dir}`."


# ----------------------------------------------------------------------------- sections


@SECTIONS.register("findings", "Headline findings")
def section_findings(data: ReportData, ctx: Context) -> Section:
    """The claims of the ensembling papers: each verdict (held, not held, inconclusive, not
    measured) with its estimate, interval, n, seeds and p-value on one line, the rule, test and
    details one click away; the same fields as the findings of ``summary.json``."""
    found = ctx.findings
    s = _section(data, "findings", "The claims of the ensembling papers, checked on this run "
                 "(estimate, 95% interval, n, p-value; 'how' gives the rule and the test).",
                 present=bool(found),
                 missing="No findings: the run has no metrics or audit tables yet.")
    for f in found:
        css = {"held": "held", "not held": "failed"}.get(f.verdict, "")
        number = f" {f.numbers()}." if f.numbers() else ""
        test = f" Test: {f.test}." if f.test else ""
        s.items.append((f"{f.claim}: {f.verdict}.{number}",
                        f"{f.detail}. Rule: {f.rule}.{test}", css))
    return s


@SECTIONS.register("dataset", "Dataset")
def section_dataset(data: ReportData, ctx: Context) -> Section:
    """The dataset card and the samples per class and split."""
    s = _section(data, "dataset", present=bool(data.dataset),
                 missing="No dataset card: run.json was not found.")
    if s.missing is not None:
        return s
    knobs = {k: v for k, v in data.dataset.items() if k != "class_names"}
    s.tables.append(
        Table(["property", "value"],
              [[Cell(str(k)), Cell(fmt(v) if not isinstance(v, dict | list) else json.dumps(v))]
               for k, v in knobs.items()],
              "Where the data came from", csv=to_csv(pd.DataFrame(
                  {"property": list(map(str, knobs)), "value": [str(v) for v in knobs.values()]})))
    )
    if data.class_counts is not None and not data.class_counts.empty:
        counts = data.class_counts.reset_index().rename(columns={"index": "class"})
        s.tables.append(frame_table(counts, caption="Samples per class and split"))
    elif data.dataset.get("class_names"):
        s.paragraphs.append("Classes: " + ", ".join(map(str, data.dataset["class_names"])))
    return s


MEMBER_COLUMNS = ("member_id", "arch", "diversity", "seed", "epochs", "val_accuracy",
                  "num_attributes")
"""The fields of a member card (:class:`concilium.models.MemberCard`) the models section shows."""


@SECTIONS.register("models", "Models")
def section_models(data: ReportData, ctx: Context) -> Section:
    """One row per member card, and the range of validation accuracies."""
    s = _section(data, "models", "Each member's card (validation accuracy).",
                 present=data.members is not None and not data.members.empty,
                 missing="No member cards were found.")
    if s.missing is not None:
        return s
    cols = [c for c in MEMBER_COLUMNS if c in data.members.columns]
    s.tables.append(frame_table(data.members[cols or list(data.members.columns)],
                                caption="Member cards"))
    if "val_accuracy" in data.members.columns:
        acc = data.members["val_accuracy"].astype(float)
        s.paragraphs.append(
            f"{len(acc)} members; validation accuracy {acc.min():.3f} to {acc.max():.3f} "
            f"(mean {acc.mean():.3f})."
        )
    return s


@SECTIONS.register("gallery", "Gallery")
def section_gallery(data: ReportData, ctx: Context) -> Section:
    """The chosen images with their stored maps."""
    s = _section(data, "gallery",
                 "Chosen test images: the image, its ground-truth mask, each method's map for a "
                 "few members and every ensemble's map. Every map is divided by its max |value|, "
                 "so all share one colour scale (red positive, blue negative); per-image scores "
                 "under each.", present=bool(data.gallery),
                 missing=f"No maps to show: run `concilium explain` into {data.run_dir}.")
    if s.missing is not None:
        return s
    for item in data.gallery:
        title = f"{item.sample_id}: class {item.label}"
        if item.prediction is not None:
            title += f", predicted {item.prediction}"
        s.figures.append(Figure(F.gallery_figure(item.image, item.mask, item.cells, title=title),
                                title, wide=True))
    return s


@SECTIONS.register("metrics", "Metrics")
def section_metrics(data: ReportData, ctx: Context) -> Section:
    """Mean and 95% CI per explanation and metric, one folded table per metric family, the
    metrics that inform only; those that do not (:mod:`concilium.metrics.informative`) are
    listed with the reason and folded into a table of their own."""
    stats = ctx.stats
    s = _section(data, "metrics",
                 "Mean and 95% confidence interval over the test images, per explanation and "
                 "metric. ↑ higher is better, ↓ lower is better; the best per metric is in bold. "
                 f"'{EXP_AVG}' pools the members per image (its mean is the Exp-Avg). Metrics "
                 "that do not separate the explanations are folded away below, with the reason.",
                 present=stats is not None and not stats.empty, missing=_no_metrics(data))
    if stats is None or s.missing is not None:
        return s
    hib, cat = _meta_maps(data.meta)
    best = best_per_metric(stats, data.meta)
    dull = ctx.uninformative
    for family in [*FAMILIES, "other"]:
        metrics = sorted(m for m in stats["metric"].unique()
                         if cat.get(m, "other") == family and m not in dull)
        if metrics:
            s.tables.append(_stats_table(stats, metrics, hib, best, family))
    if dull:
        s.paragraphs.append(f"{len(dull)} of {stats['metric'].nunique()} metrics do not inform "
                            f"on this run and are folded away: {', '.join(sorted(dull))}.")
        s.details.append(("Why these metrics are folded away", [
            f"{m}: {why}." for m, why in sorted(dull.items())] + [f"Rule: {INFORMATIVE_RULE}."]))
        s.tables.append(_stats_table(stats, sorted(dull), hib, best,
                                     "metrics that do not inform"))
    return s


def _stats_table(stats: pd.DataFrame, metrics: list[str], hib: dict, best: dict,
                 caption: str) -> Table:
    """Explanations (rows) x ``metrics`` (columns): mean [low, high]; CSV in long form."""
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
            text = fmt(r["mean"])
            if np.isfinite(r["ci_low"]):
                text += f" [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
            row.append(Cell(text, bold=best.get(m) == expl))
        rows.append(row)
    return Table(header, rows, caption, csv=to_csv(sub))


@SECTIONS.register("radar", "Metric families")
def section_radar(data: ReportData, ctx: Context) -> Section:
    """Per explanation, the mean rescaled score of each metric family."""
    s = _section(data, "radar",
                 "Per explanation, the mean score of each metric family, every metric that "
                 "informs rescaled to [0, 1] over the explanations shown with its direction "
                 "respected (1 = best).",
                 present=ctx.stats is not None and not ctx.stats.empty,
                 missing=_no_metrics(data), note="metrics")
    if ctx.stats is None or s.missing is not None:
        return s
    informs = ctx.stats[~ctx.stats["metric"].isin(list(ctx.uninformative))]
    if informs.empty:
        s.missing = ("No metric separates the explanations on this run (each is folded away "
                     "under Metrics, with the reason).")
        return s
    scores = family_scores(informs, data.meta).dropna(how="all")
    if scores.empty:
        s.missing = "No metric has a known family and direction (metric metadata missing)."
        return s
    s.figures.append(Figure(F.radar_figures(scores)))
    s.tables.append(frame_table(scores.reset_index(), caption="Family scores"))
    return s


@SECTIONS.register("paper", "Ensemble vs members")
def section_paper(data: ReportData, ctx: Context) -> Section:
    """Ens-Avg vs Exp-Avg vs Ens-Logit per method and metric (the winner in bold)."""
    s = _section(data, "paper",
                 "The ensembles paper's table: the metric of the averaged map (Ens-Avg), the mean "
                 "over members of each member's metric (Exp-Avg) and the map of the "
                 "averaged-logit model (Ens-Logit); their paired differences with intervals are "
                 "the forest plot at the top.", present=data.metrics is not None,
                 missing=_no_metrics(data), note="metrics")
    if s.missing is not None:
        return s
    table = paper_table(data.metrics)
    if table.empty or table[["ens_avg", "ens_logit"]].isna().all().all():
        s.missing = ("No ens-avg or ens-logit explanations were evaluated: run `concilium "
                     f"ensemble {data.run_dir} --kind ens-avg`, then `concilium evaluate`.")
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
                     *[Cell(fmt(v), bold=win == k) for k, v in cand.items()],
                     Cell(str(r.n_members))])
    _ensemble_size_part(data, s)
    s.tables.append(Table(["method", "metric", "Ens-Avg", "Exp-Avg", "Ens-Logit", "members"],
                          rows, "Ens-Avg, Exp-Avg and Ens-Logit per method and metric",
                          csv=to_csv(table)))
    if ctx.differences is not None:
        s.tables.append(frame_table(ctx.differences, max_rows=400, caption=(
            "Paired differences (positive: the first source is better) with 95% bootstrap "
            "intervals")))
    return s


def _ensemble_size_part(data: ReportData, s: Section) -> None:
    """Claim 1's ensemble-size curve under the paper table, when ``ens-avg`` wrote one."""
    curves = data.tables.get("ensemble_size")
    if curves is None or curves.empty:
        return
    s.figures.append(Figure(F.ensemble_size_figure(curves), (
        "Ens-Avg against the number of members K (mean over random member subsets; band: the "
        "range of 95% of the subsets). On mask correlation part of any gain over K = 1 is "
        "algebraic (review ensembling D10): compare with the averaging_expectation table."),
        wide=True))


@SECTIONS.register("consensus", "Committee consensus")
def section_consensus(data: ReportData, ctx: Context) -> Section:
    """Consensus score vs held-out accuracy and vs the member's own localisation, per member
    (``RUN/results/consensus.parquet``): one scatter plot each with the least-squares line and
    a bootstrap band, and the two claim-2b findings (:mod:`concilium.metrics.claims`)."""
    table = data.tables.get("consensus")
    s = _section(data, "consensus",
                 "Each committee member's consensus score (similarity of its maps to the vote "
                 "of the other members) against its held-out accuracy and its own "
                 "localisation.",
                 present=table is not None and not table.empty,
                 missing=f"No consensus table: run `concilium ensemble {data.run_dir} --kind "
                         "consensus`.")
    if table is None or s.missing is not None:
        return s
    points = consensus_points(table)
    if points is None:
        s.paragraphs.append(_lacks(table, ["member", "consensus_score", "accuracy"],
                                   "`concilium ensemble --kind consensus`") or "")
    else:
        how = [f"{c} = {', '.join(str(v) for v in table[c].unique())}"
               for c in ("similarity", "leave_one_out", "accuracy_on") if c in table.columns]
        if how:
            s.paragraphs.append("Scores: " + "; ".join(how) + ".")
        found = [f(points) for f in (consensus_accuracy_claim, consensus_localisation_claim)]
        text = " ".join(f"{f.claim}: {f.verdict} (r = {fmt(f.estimate)}, 95% interval "
                        f"[{fmt(f.ci_low)}, {fmt(f.ci_high)}], permutation p = "
                        f"{fmt(f.p_value)}, {f.n} members)." for f in found
                        if f.verdict != "not measured")
        if text:
            s.paragraphs.append(text)
        if len(points.dropna(subset=["consensus_score"])) >= 2:
            s.figures.append(Figure(F.consensus_scatter_figure(points), (
                "Per member: least-squares line and 95% bootstrap band over the members.")))
    s.tables.append(frame_table(table, caption="Consensus per member"))
    return s


@dataclass(frozen=True)
class BarSpec:
    """A bar-chart section over one results table, read by its documented columns.

    Attributes:
        section: the section id (registered in :data:`SECTIONS`).
        title: the section heading.
        table: the table's file stem under ``RUN/results/``.
        value: the column drawn as bars.
        label: the column naming each bar.
        intro: what the section shows.
        command: the command that writes the table (``{run}`` is the run directory).
        threshold: the column holding the flag threshold (drawn as a line), if any.
        interval: the columns of each bar's interval ``(low, high)``, drawn when present.
    """

    section: str
    title: str
    table: str
    value: str
    label: str
    intro: str
    command: str
    threshold: str | None = None
    interval: tuple[str, str] | None = None


BAR_SECTIONS: tuple[BarSpec, ...] = (
    BarSpec("per-class", "Per-class quality", "per_class", "dice", "class",
            "Quality of the CNN ensembler's explanation per class (Dice with the masks); classes "
            "below the threshold are flagged (red): hard or under-represented.",
            "`concilium ensemble {run} --kind cnn`, then `concilium audit {run}`",
            threshold="flag_threshold", interval=("dice_low", "dice_high")),
    BarSpec("bias", "Bias", "bias", "share", "class",
            "Share of attribution mass on regions that are not evidence (the watermark, or outside "
            "the object) per class; flagged classes (red) suggest the model uses a shortcut.",
            "`concilium audit {run}`"),
    BarSpec("subsets", "Method subsets", "subsets", "test_dice", "subset",
            "The CNN ensembler trained on subsets of the methods: which methods add information.",
            "`concilium audit {run} --subsets leave_one_out`"),
    BarSpec("anonymisation", "Anonymisation", "anonymisation", "test_accuracy", "mode",
            "A classifier trained on images replaced by their explanations, next to the "
            "original's accuracy (feature reduction / anonymisation).",
            "`concilium audit {run} --anonymisation`"),
    BarSpec("one-vs-one", "One-vs-one explanations", "one_vs_one", "relevance_mass", "baseline",
            "Why class c and not t: one-vs-one maps with counterfactual (GANMEX) and classic "
            "baselines, scored on the difference mask.",
            "`concilium run` with a [ganmex] section (or `python experiments/ganmex_one_vs_one.py "
            "--bench BENCH --run {run}`)"),
)
"""The bar-chart sections, by the columns their writers document."""


def bar_section(data: ReportData, spec: BarSpec) -> Section:
    """Bars of ``spec.value`` per ``spec.label`` (flagged rows in red), and the whole table."""
    table = data.tables.get(spec.table)
    s = Section(spec.section, spec.title, spec.intro)
    if table is None or table.empty:
        s.missing = data.notes.get(
            spec.section, f"No {spec.table} table: run {spec.command.format(run=data.run_dir)}.")
    if table is None or s.missing is not None:
        return s
    lacks = _lacks(table, [spec.value, spec.label], spec.command.format(run=data.run_dir))
    if lacks:
        s.paragraphs.append(lacks)
        s.tables.append(frame_table(table, caption=spec.table))
        return s
    flagged = table["flagged"].astype(bool).tolist() if "flagged" in table.columns else None
    labels = table[spec.label].astype(str).tolist()
    if {"source", "method"} <= set(table.columns) and \
            len(table[["source", "method"]].drop_duplicates()) > 1:
        labels = [f"{a} ({explanation_label(str(b), str(c))})" for a, b, c in
                  zip(labels, table["source"], table["method"], strict=True)]
    elif "source" in table.columns and table["source"].nunique() > 1:
        labels = [f"{a} ({b})" for a, b in zip(labels, table["source"].astype(str), strict=True)]
    threshold = None
    if spec.threshold in table.columns and table[spec.threshold].notna().any():
        threshold = float(table[spec.threshold].dropna().iloc[0])
    if flagged is not None:
        names = sorted({str(x) for x, f in zip(table[spec.label], flagged, strict=True) if f})
        s.paragraphs.append(f"Flagged ({sum(flagged)}): {', '.join(names) if names else 'none'}.")
    low = high = None
    if spec.interval is not None and set(spec.interval) <= set(table.columns):
        low, high = (table[c].to_numpy(float)[:40] for c in spec.interval)
        s.paragraphs.append(f"Bars: {spec.value} with its 95% interval ({spec.interval[0]} to "
                            f"{spec.interval[1]}).")
    s.figures.append(Figure(F.bar_figure(labels[:40], table[spec.value].to_numpy(float)[:40],
                                         flagged=(flagged or [False] * len(labels))[:40],
                                         threshold=threshold, xlabel=spec.value,
                                         title=spec.title, low=low, high=high)))
    s.tables.append(frame_table(table, caption=f"The {spec.table} table"))
    return s


def section_one_vs_one(data: ReportData, spec: BarSpec) -> Section:
    """The one-vs-one bars (relevance mass on the pixels where x and its exact counterfactual
    differ, per baseline), then the paper's claims with their verdicts and the generator's
    quality, as ``concilium.jobs.one_vs_one`` wrote them (``one_vs_one_claims``,
    ``one_vs_one_generator``)."""
    s = bar_section(data, spec)
    for name, intro in (("one_vs_one_claims", "The paper's claims: GANMEX against the best other "
                         "baseline, difference and 95% interval across seeds."),
                        ("one_vs_one_generator", "The generator on the same images: target "
                         "success, |x - G|, |G - x*| and the share of |x - G| in the changed "
                         "region.")):
        table = data.tables.get(name)
        if s.missing is None and table is not None and not table.empty:
            s.paragraphs.append(intro)
            s.tables.append(frame_table(table))
    return s


_BAR_BUILDERS = {"one-vs-one": section_one_vs_one}
"""Bar sections with more than their bars; the others are :func:`bar_section` alone."""

for _spec in BAR_SECTIONS:
    SECTIONS.register(_spec.section, _spec.title)(
        lambda data, ctx, spec=_spec: _BAR_BUILDERS.get(spec.section, bar_section)(data, spec))


@SECTIONS.register("attributes", "Attribute explanations", after="anonymisation")
def section_attributes(data: ReportData, ctx: Context) -> Section:
    """The attribute cards written by ``concilium audit`` (``RUN/results/attributes.*``)."""
    s = _section(data, "attributes",
                 "For models with attribute heads: which attributes the model found and where, "
                 "and the relevance mass of each attribute's map on its part mask next to the "
                 "class map's.", present=bool(data.attribute_cards),
                 missing=f"No attribute cards: run `concilium audit {data.run_dir}` (it explains "
                         "the attribute head of the first multitask member).")
    if s.missing is not None:
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
            rows.append([Cell(card.sample_id), Cell(a.name), Cell(fmt(a.probability)),
                         Cell(a.part or ""), Cell(fmt(a.mass), bold=a.mass > a.class_mass),
                         Cell(fmt(a.class_mass))])
    header = ["sample", "attribute", "probability", "part mask",
              "relevance mass (attribute map)", "relevance mass (class map)"]
    s.tables.append(Table(header, rows, "Attributes of each card", csv=to_csv(pd.DataFrame(
        [[c.text for c in r] for r in rows], columns=header))))
    return s
