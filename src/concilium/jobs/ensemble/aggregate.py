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
    entry_meta,
    source_maps,
)
from concilium.store import Run, write_source


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
    params = {"kind": "aggregate", "from": src, "inputs": hashes,
              "normalisation": options.normalisation, "reducer": options.reducer,
              "absolute": options.absolute, "trim": options.trim}
    return EnsembleResult([write_source(run.store, options.source or "aggregate",
                                        "+".join(methods), out, sample_ids=run.data.ids,
                                        params=params, meta=entry_meta(run, "aggregate"))])
