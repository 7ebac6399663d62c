"""Run-level ensemblers (registry :data:`ENSEMBLERS`): read a run's stored maps, ensemble them,
write the result back as a new source, plus any tables under ``RUN/results/``.

Each kind is one module of this package with its own options model (an option of another kind
is an error naming the valid ones); :func:`run_ensemble` runs one by name.

Kinds and what they write (``methods`` defaults to every method all the run's members have):

============ ===================================================== ==========================
kind         what                                                  source(s), method
============ ===================================================== ==========================
ens-avg      members' normalised maps reduced per method           ``ens-avg``, each method
ens-logit    explain the averaged-logit ensemble model             ``ens-logit``, each method
consensus    committee vote per method + consensus-score tables    ``consensus``, each method
aggregate    one source's methods normalised and reduced           ``aggregate``, ``a+b+...``
weighted     one source's methods weighted by metric scores        ``weighted``, ``a+b+...``
krr          kernel ridge from one source's methods to the masks   ``krr``, ``a+b+...``
cnn          U-Net ensembler trained on the train split            ``cnn`` (probability) and
                                                                   ``cnn:logit``, ``a+b+...``
============ ===================================================== ==========================

Method ensembles read the maps of ``from_source`` (default: the first member; ``ens-avg`` to
combine the members' averaged maps). ``source`` renames the output (``ens-avg:head``).

Adding a kind: a module here with an options model (subclass of :class:`EnsembleOptionsBase`)
and a run function decorated with :func:`ensembler`, plus its import below. The CLI flags, the
``[ensemble.options.<kind>]`` table and the registry tests follow from the model.

Example:
    >>> ensemble_options("krr", {"folds": 3}).folds
    3
"""

# importing a kind's module registers it
from concilium.jobs.ensemble.aggregate import AggregateOptions, run_aggregate
from concilium.jobs.ensemble.base import (
    ENSEMBLERS,
    EnsembleOptionsBase,
    EnsembleResult,
    EnsemblerSpec,
    ensemble_options,
    ensembler,
    run_ensemble,
)
from concilium.jobs.ensemble.cnn import ENSEMBLERS_DIR, CnnOptions, run_cnn
from concilium.jobs.ensemble.consensus import ConsensusOptions, member_accuracy, run_consensus
from concilium.jobs.ensemble.ens_avg import EnsAvgOptions, run_ens_avg
from concilium.jobs.ensemble.ens_logit import EnsLogitOptions, run_ens_logit
from concilium.jobs.ensemble.krr import KrrOptions, run_krr
from concilium.jobs.ensemble.weighted import WeightedOptions, run_weighted

__all__ = [
    "ENSEMBLERS",
    "ENSEMBLERS_DIR",
    "AggregateOptions",
    "CnnOptions",
    "ConsensusOptions",
    "EnsAvgOptions",
    "EnsLogitOptions",
    "EnsembleOptionsBase",
    "EnsembleResult",
    "EnsemblerSpec",
    "KrrOptions",
    "WeightedOptions",
    "ensemble_options",
    "ensembler",
    "member_accuracy",
    "run_aggregate",
    "run_cnn",
    "run_consensus",
    "run_ens_avg",
    "run_ens_logit",
    "run_ensemble",
    "run_krr",
    "run_weighted",
]
