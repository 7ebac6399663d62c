"""The sections that open the report: the recommendation ("which explanation should I trust?")
and the main plots at a glance. The numbers come from :mod:`concilium.metrics.recommend`,
:mod:`concilium.metrics.informative` and :mod:`concilium.metrics.differences` through the shared
:class:`~concilium.report.context.Context`; nothing is decided here.
"""

from __future__ import annotations

import pandas as pd

from concilium.metrics.recommend import Recommendation
from concilium.report import charts as C
from concilium.report import sections as _sections  # noqa: F401  (placed after its sections)
from concilium.report.context import Context
from concilium.report.data import ReportData
from concilium.report.registry import SECTIONS
from concilium.report.summary import metric_ranks
from concilium.report.view import Cell, Figure, Section, Table, fmt, frame_table, to_csv
from concilium.vocabulary import FAMILIES

SHORT_LIST = 5
"""Explanations in the recommendation's short list (the full ranking is one click away)."""
FOREST_PANELS = 8
"""At most this many metrics in the forest plot (informative ones first, in family order)."""


def _no_metrics(data: ReportData) -> str:
    return f"No metrics table: run `concilium evaluate {data.run_dir}`."


def _interval(row: pd.Series, family: str) -> str:
    value, low, high = row[family], row[f"{family}_low"], row[f"{family}_high"]
    if pd.isna(value):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{fmt(value, 2)} [no interval]"
    return f"{fmt(value, 2)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def lead(rec: Recommendation) -> list[str]:
    """The recommendation in words: who to use, the trade-off, how sure."""
    r = rec.ranking
    n = len(r)
    fams = ", ".join(rec.families)
    top = r.iloc[0]
    front = r[r["status"] == "front"]
    best = "; ".join(f"{x.explanation} (best in {x.best_in})" for x in front.itertuples()
                     if x.best_in)
    if len(front) == 1:
        first = (f"Use {top.explanation}: it is the only explanation on the Pareto front of "
                 f"{fams} (no other scores at least as well in every family), and it is surely "
                 f"better than another explanation in {top.sure_wins} explanation-family "
                 "comparisons.")
    else:
        first = (f"Ranked first: {top.explanation} ({top.sure_wins} sure wins, "
                 f"{top.sure_losses} sure losses over the explanations and families). "
                 f"{len(front)} of {n} explanations are on the Pareto front of {fams}"
                 + (f"; the trade-off: {best}." if best else "."))
    out = [first]
    dominated = n - len(front)
    out.append(f"{dominated} of {n} explanations are dominated: another scores at least as well "
               "in every family and is surely better (disjoint 95% intervals) in at least one.")
    sure = []
    if top.tied_with:
        sure.append(f"{top.explanation} cannot be told apart from {top.tied_with}: their "
                    "family intervals overlap in every family.")
    if top.behind_on_means:
        sure.append(f"{top.behind_on_means} beat {top.explanation} on every family's mean "
                    "score, but not surely (the intervals overlap).")
    if not sure:
        sure.append(f"{top.explanation} is told apart from every other front explanation in "
                    "at least one family (disjoint intervals).")
    out.append("How sure: " + " ".join(sure))
    return out


@SECTIONS.register("recommendation", "Which explanation to trust", first=True)
def section_recommendation(data: ReportData, ctx: Context) -> Section:
    """The ranked short list with each family's score and interval, the Pareto front, how sure,
    and the rule in words (the same rule and ranking as ``summary.json``'s
    ``recommendation``)."""
    s = Section("recommendation", SECTIONS["recommendation"])
    rec = ctx.recommendation
    if rec is None:
        s.missing = data.notes.get("metrics", _no_metrics(data))
        return s
    if rec.ranking.empty:
        s.missing = ("No recommendation: no metric separates the explanations on this run "
                     "(each is folded away under Metrics, with the reason).")
        return s
    s.paragraphs.extend(lead(rec))
    short = rec.ranking.head(SHORT_LIST)
    header = ["rank", "explanation", "Pareto", *rec.families, "best in"]
    rows = []
    for _, r in short.iterrows():
        status = "front" if r["status"] == "front" else f"dominated by {r['dominated_by']}"
        rows.append([Cell(str(r["rank"])), Cell(str(r["explanation"]), bold=r["rank"] == 1),
                     Cell(status, css=str(r["status"])),
                     *[Cell(_interval(r, f)) for f in rec.families], Cell(str(r["best_in"]))])
    s.tables.append(Table(header, rows, f"Short list: the first {len(short)} of "
                          f"{len(rec.ranking)} explanations (family score 0 = worst .. 1 = best, "
                          "95% interval)", csv=to_csv(rec.ranking), folded=False))
    shown = rec.ranking.head(SHORT_LIST)
    s.figures.append(Figure(C.family_interval_figure(shown, rec.families), (
        "Family scores with their 95% intervals, the short list (green: Pareto front).")))
    used = rec.metrics[rec.metrics["used"]]
    per_family = {f: sorted(used.loc[used["family"] == f, "metric"]) for f in rec.families}
    s.details.append(("The rule, and the metrics it uses", [
        rec.rule,
        *[f"{f}: {', '.join(ms)}." for f, ms in per_family.items()],
        f"Not used: the {len(ctx.uninformative)} metrics that do not inform (folded away under "
        "Metrics, with the reason) and any metric without a direction or family.",
    ]))
    s.tables.append(frame_table(rec.ranking, max_rows=200, caption="The whole ranking"))
    return s


@SECTIONS.register("glance", "The main plots", after="findings")
def section_glance(data: ReportData, ctx: Context) -> Section:
    """The forest plot of paired differences (Ens-Avg vs Exp-Avg vs Ens-Logit per method and
    metric) and the heat map of ranks (explanation x metric)."""
    s = Section("glance", SECTIONS["glance"])
    if ctx.stats is None or ctx.stats.empty:
        s.missing = data.notes.get("metrics", _no_metrics(data))
        return s
    dull = ctx.uninformative
    order = {f: i for i, f in enumerate(FAMILIES)}
    family = dict(zip(data.meta["metric"], data.meta["category"], strict=True))
    informative = sorted((m for m in ctx.stats["metric"].unique() if m not in dull),
                         key=lambda m: (order.get(family.get(m), len(order)), m))
    if ctx.differences is not None:
        panels = [m for m in informative if m in set(ctx.differences["metric"])][:FOREST_PANELS]
        if panels:
            s.figures.append(Figure(C.forest_figure(ctx.differences, metrics=panels), (
                "Paired differences per method with 95% bootstrap intervals, oriented so that "
                "right of 0 means the first source is better; the metrics that inform, "
                f"{len(panels)} shown (all in the folded table of 'Ensemble vs members')."),
                wide=True))
    ranks = metric_ranks(ctx.stats, data.meta, informative)
    if not ranks.empty and len(ranks.columns):
        s.figures.append(Figure(C.rank_heatmap_figure(ranks), (
            "Rank of each explanation per informative metric (1 = best mean; direction from "
            "the metric registry).")))
        s.tables.append(frame_table(ranks.reset_index(names="explanation"), max_rows=200,
                                    caption="Ranks per metric"))
    if not s.figures:
        s.missing = "No informative metric to plot (see Metrics)."
    return s
