"""concilium.metrics: one pure batched function per metric, a registry with metadata, and the
uniform entry point :func:`evaluate`.

Example:
    >>> from concilium.metrics import METRICS, evaluate
    >>> METRICS.get("auc").category
    'localisation'
"""

from concilium.metrics import (  # noqa: F401  (importing registers the metrics)
    complexity,
    faithfulness,
    localisation,
    randomisation,
    road,
    robustness,
)
from concilium.metrics._common import MetricWarning
from concilium.metrics.complexity import complexity as complexity_entropy
from concilium.metrics.complexity import effective_complexity, sparseness
from concilium.metrics.evaluate import evaluate, evaluate_curve
from concilium.metrics.faithfulness import (
    faithfulness_correlation,
    infidelity,
    monotonicity,
    monotonicity_correlation,
    perturbation_curve,
    pixel_flipping,
    pixel_flipping_curve,
    sufficiency,
)
from concilium.metrics.localisation import (
    auc,
    average_precision,
    com_distance,
    f1_at_quarter_max,
    iou,
    mask_correlation,
    pointing_game,
    relevance_mass,
    relevance_rank,
    top_k_intersection,
)
from concilium.metrics.perturb import BASELINE_NAMES, make_baseline
from concilium.metrics.randomisation import mprt, mprt_curve, random_logit
from concilium.metrics.registry import CATEGORIES, METRICS, MetricSpec, metrics_in
from concilium.metrics.road import road as road_score
from concilium.metrics.road import road_curve
from concilium.metrics.robustness import avg_sensitivity, local_lipschitz, max_sensitivity

__all__ = [
    "BASELINE_NAMES",
    "CATEGORIES",
    "METRICS",
    "MetricSpec",
    "MetricWarning",
    "auc",
    "average_precision",
    "avg_sensitivity",
    "com_distance",
    "complexity_entropy",
    "effective_complexity",
    "evaluate",
    "evaluate_curve",
    "f1_at_quarter_max",
    "faithfulness_correlation",
    "infidelity",
    "iou",
    "local_lipschitz",
    "make_baseline",
    "mask_correlation",
    "max_sensitivity",
    "metrics_in",
    "monotonicity",
    "monotonicity_correlation",
    "mprt",
    "mprt_curve",
    "perturbation_curve",
    "pixel_flipping",
    "pixel_flipping_curve",
    "pointing_game",
    "random_logit",
    "relevance_mass",
    "relevance_rank",
    "road_curve",
    "road_score",
    "sparseness",
    "sufficiency",
    "top_k_intersection",
]
