"""What several sections share, computed once per report from a :class:`ReportData`: the
per-explanation statistics, the headline findings, which metrics inform and the recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from concilium.metrics.claims import Finding
from concilium.metrics.differences import paired_differences
from concilium.metrics.recommend import Recommendation, recommend
from concilium.report.data import ReportData
from concilium.report.summary import explanation_stats, findings


@dataclass
class Context:
    """The numbers behind several sections.

    Attributes:
        stats: mean and interval per explanation and metric
            (:func:`~concilium.report.summary.explanation_stats`), ``None`` without metrics.
        findings: the headline findings (:func:`~concilium.report.summary.findings`).
        recommendation: the ranked explanations (:func:`concilium.metrics.recommend.recommend`
            over ``stats`` without in-sample explanations), ``None`` without metrics.
        differences: paired differences Ens-Avg / Ens-Logit / Exp-Avg per method and metric
            (:func:`concilium.metrics.differences.paired_differences`), ``None`` without them.
    """

    stats: pd.DataFrame | None = None
    findings: list[Finding] = field(default_factory=list)
    recommendation: Recommendation | None = None
    differences: pd.DataFrame | None = None

    @property
    def uninformative(self) -> dict[str, str]:
        """Metric -> why it does not inform (empty without a recommendation)."""
        if self.recommendation is None:
            return {}
        m = self.recommendation.metrics
        return dict(zip(m.loc[~m["informative"], "metric"], m.loc[~m["informative"], "reason"],
                        strict=True))


def recommendation_table(stats: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The summary table :func:`~concilium.metrics.recommend.recommend` reads: ``stats`` without
    in-sample explanations, with each metric's ``family`` and ``higher_is_better`` from
    ``meta``."""
    keep = stats[~stats["in_sample"].astype(bool)] if "in_sample" in stats else stats
    m = meta.rename(columns={"category": "family"})[["metric", "family", "higher_is_better"]]
    return keep.merge(m, on="metric", how="left")[
        ["explanation", "metric", "family", "higher_is_better", "mean", "ci_low", "ci_high"]]


def build_context(data: ReportData, *, seed: int = 0) -> Context:
    """The shared numbers of ``data`` (``seed`` seeds every bootstrap)."""
    ctx = Context(findings=findings(data.metrics, data.tables, card=data.dataset, seed=seed))
    if data.metrics is None or data.metrics.empty:
        return ctx
    ctx.stats = explanation_stats(data.metrics, members=data.members_view)
    pooled = ctx.stats if data.members_view == "pooled" else explanation_stats(data.metrics)
    ctx.recommendation = recommend(recommendation_table(pooled, data.meta))
    metrics = data.metrics
    if "in_sample" in metrics.columns:
        metrics = metrics[~metrics["in_sample"].fillna(False).astype(bool)]
    directed = data.meta.dropna(subset=["higher_is_better"])["metric"]
    names = sorted(set(metrics["metric"]) & set(directed))
    diffs = paired_differences(metrics, rng=np.random.default_rng(seed), n_boot=1000,
                               metric_names=names)
    ctx.differences = diffs if not diffs.empty else None
    return ctx
