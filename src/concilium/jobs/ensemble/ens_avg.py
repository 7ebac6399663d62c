"""``ens-avg``: the members' normalised maps of each method, reduced over the members."""

from __future__ import annotations

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
from concilium.store import Run, member_stack


class EnsAvgOptions(EnsembleOptionsBase):
    """Options of ``ens-avg``."""

    members: Members = None
    normalisation: Normalisation = "max_abs"
    reducer: Reducer = "mean"
    absolute: Absolute = False
    trim: Trim = 0.2


@ensembler("ens-avg", options=EnsAvgOptions)
def run_ens_avg(run: Run, options: EnsAvgOptions) -> EnsembleResult:
    """Ens-Avg: the members' maps of each method, normalised per image and reduced."""
    members = member_sources(run, options.members)
    out = EnsembleResult()
    for method in complete_methods(run, members, options.methods):
        stack, hashes = member_stack(run.store, members, method, run.data.ids)
        # Ens-Avg is aggregate() over the members (concilium.ensemble.averaging.ens_avg)
        maps = aggregate(stack, normalisation=options.normalisation, reducer=options.reducer,
                         absolute=options.absolute, trim=options.trim)
        params = {"inputs": hashes, "normalisation": options.normalisation,
                  "reducer": options.reducer, "absolute": options.absolute, "trim": options.trim}
        out.entries.append(write_entry(run, "ens-avg", method, maps, source=options.source,
                                       params=params))
    return out
