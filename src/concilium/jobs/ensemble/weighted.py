"""``weighted``: one source's methods weighted by their mean metric scores on held-out rows.

The weights come from the metric scores of the run's ``weight_split`` rows (default ``val``),
never from the rows the ensemble is scored on (``concilium evaluate`` scores ``test``): scoring
an ensemble with the metric its weights were taken from, on the same rows, is circular.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field

from concilium.ensemble.weighted import metric_weights, weighted_ensemble
from concilium.jobs.ensemble.base import (
    Absolute,
    EnsembleOptionsBase,
    EnsembleResult,
    FromSource,
    Normalisation,
    ensembler,
    source_maps,
    write_entry,
)
from concilium.metrics.tables import higher_is_better_of
from concilium.store import Run, read_metrics


class WeightedOptions(EnsembleOptionsBase):
    """Options of ``weighted`` (the scores come from ``RUN/results/metrics.parquet``)."""

    from_source: FromSource = None
    normalisation: Normalisation = "max_abs"
    absolute: Absolute = False
    weight_metrics: list[str] = Field(
        default_factory=lambda: ["relevance_mass"],
        description="metrics whose mean scores per method set the weights")
    metric_weights: dict[str, float] | None = Field(
        None, description="importance of each weight metric (default: 1 each; every weight "
                          "metric needs one)")
    weight_split: Literal["val", "train"] = Field(
        "val", description="rows whose metric scores set the weights (held out from test)")
    clip_negative: bool = Field(
        True, description="zero negative weights and renormalise the rest to sum 1")


@ensembler("weighted", options=WeightedOptions)
def run_weighted(run: Run, options: WeightedOptions) -> EnsembleResult:
    """Weight one source's methods by their mean metric scores (from the metrics table)."""
    src, methods, maps, hashes = source_maps(run, options.from_source, options.methods)
    metrics = read_metrics(run.run_dir)
    held_out = {i for i, s in zip(run.data.ids, run.data.splits, strict=True)
                if s == options.weight_split}
    if not held_out:
        raise ValueError(f"the weights come from the run's {options.weight_split!r} rows and this "
                         "run has none; explain with --split all")
    rows = metrics[(metrics.source == src) & metrics.metric.isin(options.weight_metrics)
                   & metrics["sample"].isin(held_out)]
    scores: dict[str, dict[str, float]] = {}
    for metric in options.weight_metrics:
        part = rows[rows.metric == metric].groupby("method")["value"].mean()
        if part.empty:
            raise ValueError(f"the metrics table has no {metric!r} scores of source {src!r} on "
                             f"the {options.weight_split!r} rows; run `concilium evaluate "
                             f"{run.run_dir} --metrics {metric} --split {options.weight_split}` "
                             "first")
        scores[metric] = part.to_dict()
    hib = {m: higher_is_better_of(m) for m in options.weight_metrics}
    w = metric_weights(scores, methods=methods, higher_is_better=hib,
                       metric_weights=options.metric_weights, clip_negative=options.clip_negative)
    out = weighted_ensemble(maps, w, normalisation=options.normalisation,
                            absolute=options.absolute)
    params = {"from": src, "inputs": hashes, "metrics": options.weight_metrics,
              "weight_split": options.weight_split,
              "metric_weights": options.metric_weights,
              "weights": [round(float(x), 8) for x in w],
              "normalisation": options.normalisation, "absolute": options.absolute}
    table = pd.DataFrame({"method": methods, "weight": w.tolist(), "source": src})
    entry = write_entry(run, "weighted", "+".join(methods), out, source=options.source,
                        params=params)
    return EnsembleResult([entry], {"weights": table})
