"""Ensembles of explanations: normalisations, reducers, cross-model averaging, committee
consensus, metric-weighted and supervised ensembles, the learned CNN ensembler, and the audits of
what ensembles reveal about data and models.

Every ensembler is a plain function of stacked maps ``(K, N, H, W)``; nothing here reads or writes
a run (the run-level ensemble job is :mod:`concilium.jobs.ensemble`).
"""

from concilium.ensemble.averaging import LogitEnsemble, ens_avg, ens_logit_maps
from concilium.ensemble.cnn import (
    CNNEnsembler,
    CNNTrainConfig,
    EnsemblerCard,
    UNet,
    dice_score,
    iou_score,
    soft_dice_loss,
    train_cnn_ensembler,
)
from concilium.ensemble.consensus import (
    consensus,
    consensus_correlations,
    consensus_scores,
    consensus_table,
    correct_by_all,
    correlation,
)
from concilium.ensemble.krr import krr_ensemble
from concilium.ensemble.normalise import NORMALISATIONS, normalise
from concilium.ensemble.reduce import REDUCERS, aggregate, reduce, stack_maps
from concilium.ensemble.similarity import SIMILARITIES, mean_pairwise_similarity, similarity
from concilium.ensemble.weighted import metric_weights, weighted_ensemble

__all__ = [
    "NORMALISATIONS", "REDUCERS", "SIMILARITIES",
    "CNNEnsembler", "CNNTrainConfig", "EnsemblerCard", "LogitEnsemble", "UNet",
    "aggregate", "consensus", "consensus_correlations", "consensus_scores", "consensus_table",
    "correct_by_all", "correlation", "dice_score", "ens_avg", "ens_logit_maps", "iou_score",
    "krr_ensemble", "mean_pairwise_similarity", "metric_weights", "normalise",
    "reduce", "similarity", "soft_dice_loss", "stack_maps", "train_cnn_ensembler",
    "weighted_ensemble",
]
