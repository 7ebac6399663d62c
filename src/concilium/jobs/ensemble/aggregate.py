"""``aggregate``: one source's methods normalised and reduced (``normEnsembleXAI``)."""

from __future__ import annotations

from concilium.ensemble.reduce import aggregate
from concilium.jobs.ensemble.base import (
    Absolute,
    EnsembleOptionsBase,
    EnsembleResult,
    FromSource,
    Normalisation,
    Reducer,
    Trim,
    ensembler,
    source_maps,
    write_entry,
)
from concilium.store import Run


class AggregateOptions(EnsembleOptionsBase):
    """Options of ``aggregate``."""

    from_source: FromSource = None
    normalisation: Normalisation = "max_abs"
    reducer: Reducer = "mean"
    absolute: Absolute = False
    trim: Trim = 0.2


@ensembler("aggregate", options=AggregateOptions)
def run_aggregate(run: Run, options: AggregateOptions) -> EnsembleResult:
    """Normalise then reduce one source's methods (normEnsembleXAI)."""
    src, methods, maps, hashes = source_maps(run, options.from_source, options.methods)
    out = aggregate(maps, normalisation=options.normalisation, reducer=options.reducer,
                    absolute=options.absolute, trim=options.trim)
    params = {"from": src, "inputs": hashes, "normalisation": options.normalisation,
              "reducer": options.reducer, "absolute": options.absolute, "trim": options.trim}
    return EnsembleResult([write_entry(run, "aggregate", "+".join(methods), out,
                                       source=options.source, params=params)])
