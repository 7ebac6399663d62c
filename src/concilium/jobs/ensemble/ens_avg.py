"""``ens-avg``: the members' normalised maps of each method, reduced over the members.

With ground-truth masks and the paper's setting (``reducer="mean"``, signed maps) it also writes
two result tables for claim 1 (review ensembling D10): ``averaging_expectation`` (per image and
method, the observed Ens-Avg mask correlation beside what algebra expects,
:func:`concilium.ensemble.expectation.averaging_expectation`) and ``ensemble_size`` (Ens-Avg's
iou and mask correlation against the number of members over seeded member subsets,
:func:`concilium.ensemble.expectation.ensemble_size_curve`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from pydantic import Field
from torch import Tensor

from concilium.ensemble.expectation import averaging_expectation, ensemble_size_curve
from concilium.ensemble.reduce import aggregate
from concilium.jobs.ensemble.base import (
    Absolute,
    EnsembleOptionsBase,
    EnsembleResult,
    Members,
    Normalisation,
    Reducer,
    Trim,
    complete_methods,
    ensembler,
    member_sources,
    write_entry,
)
from concilium.metrics import MetricWarning, evaluate
from concilium.store import Run, member_stack

SIZE_METRICS = ("iou", "mask_correlation")
"""Metrics of the ensemble-size table."""


class EnsAvgOptions(EnsembleOptionsBase):
    """Options of ``ens-avg``."""

    members: Members = None
    normalisation: Normalisation = "max_abs"
    reducer: Reducer = "mean"
    absolute: Absolute = False
    trim: Trim = 0.2
    size_subsets: int = Field(10, ge=1, description="member subsets per ensemble size in the "
                                                    "ensemble_size table")
    seed: int = Field(0, description="seeds the member subsets of the ensemble_size table")


def _claim_tables(method: str, stack: Tensor, masks: Tensor, ids: list[str], *,
                  normalisation: str, subsets: int,
                  rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``averaging_expectation`` and ``ensemble_size`` rows of one method."""
    expectation = averaging_expectation(stack, masks, normalisation=normalisation)
    expectation["sample"] = [ids[i] for i in expectation["sample"]]
    with warnings.catch_warnings():
        # a constant subset average scores NaN and its image is dropped for every K (documented
        # in ensemble_size_curve): one warning per subset and K would flood the terminal
        warnings.simplefilter("ignore", MetricWarning)
        curves = [ensemble_size_curve(stack, lambda m, name=metric: evaluate(name, m, masks=masks),
                                      rng=rng, subsets=subsets, normalisation=normalisation)
                  .assign(metric=metric) for metric in SIZE_METRICS]
    return (expectation.assign(method=method),
            pd.concat(curves, ignore_index=True).assign(method=method))


@ensembler("ens-avg", options=EnsAvgOptions)
def run_ens_avg(run: Run, options: EnsAvgOptions) -> EnsembleResult:
    """Ens-Avg: the members' maps of each method, normalised per image and reduced."""
    members = member_sources(run, options.members)
    out = EnsembleResult()
    masks = run.data.masks
    claim_tables = (options.reducer == "mean" and not options.absolute and masks is not None
                    and bool(masks.any()))
    rng = np.random.default_rng(options.seed)
    expectations, sizes = [], []
    for method in complete_methods(run, members, options.methods):
        stack, hashes = member_stack(run.store, members, method, run.data.ids)
        # Ens-Avg is aggregate() over the members (concilium.ensemble.averaging.ens_avg)
        maps = aggregate(stack, normalisation=options.normalisation, reducer=options.reducer,
                         absolute=options.absolute, trim=options.trim)
        params = {"inputs": hashes, "normalisation": options.normalisation,
                  "reducer": options.reducer, "absolute": options.absolute, "trim": options.trim}
        out.entries.append(write_entry(run, "ens-avg", method, maps, source=options.source,
                                       params=params))
        if claim_tables:
            e, c = _claim_tables(method, stack, masks, list(run.data.ids),
                                 normalisation=options.normalisation,
                                 subsets=options.size_subsets, rng=rng)
            expectations.append(e)
            sizes.append(c)
    if expectations:
        out.tables["averaging_expectation"] = pd.concat(expectations, ignore_index=True)
        out.tables["ensemble_size"] = pd.concat(sizes, ignore_index=True)
    return out
