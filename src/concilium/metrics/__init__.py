"""concilium.metrics: one pure batched function per metric, a registry with metadata, and the
uniform entry point :func:`evaluate`.

Every metric is registered under its Python name and exported here. The families live in
``localisation``, ``faithfulness`` (one-shot), ``curves`` (deletion, insertion, AOPC, pixel
flipping, monotonicity), ``regions`` (region perturbation, selectivity), ``estimates``
(faithfulness estimate, sensitivity-n), ``imputation`` (ROAD), ``robustness`` (sensitivities,
Lipschitz), ``stability`` (relative stabilities), ``translation`` (continuity), ``agreement``
(consistency), ``mosaic`` (focus), ``concentration`` (the complexity family) and
``randomisation``; the registry in ``registry``, the entry point in ``evaluate``.
Statistics over a tidy metrics table (mean and interval, Exp-Avg, the summary, the paper table)
are defined once in :mod:`concilium.metrics.tables`, the verdicts of the headline claims in
:mod:`concilium.metrics.claims`; neither is re-exported here.
IROF lives in ``iterative_removal``; the features the region metrics remove (patches,
superpixels) are defined once in :mod:`concilium.metrics.features`.

Example:
    >>> from concilium.metrics import METRICS, evaluate
    >>> METRICS.get("auc").category
    'localisation'
"""

from concilium.metrics._common import MetricWarning
from concilium.metrics.agreement import consistency
from concilium.metrics.axiomatic import completeness, input_invariance, non_sensitivity
from concilium.metrics.concentration import complexity, effective_complexity, sparseness
from concilium.metrics.curves import (
    aopc,
    aopc_curve,
    aopc_lerf,
    aopc_lerf_curve,
    curve_metric,
    deletion,
    deletion_curve,
    deletion_lerf,
    deletion_lerf_curve,
    insertion,
    insertion_curve,
    insertion_lerf,
    insertion_lerf_curve,
    monotonicity,
    monotonicity_curve,
    perturbation_curve,
    pixel_flipping,
    pixel_flipping_curve,
)
from concilium.metrics.estimates import faithfulness_estimate, sensitivity_n
from concilium.metrics.evaluate import evaluate, evaluate_curve, evaluate_suite
from concilium.metrics.faithfulness import (
    faithfulness_correlation,
    infidelity,
    monotonicity_correlation,
    sufficiency,
)
from concilium.metrics.imputation import road, road_curve
from concilium.metrics.iterative_removal import irof
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
from concilium.metrics.mosaic import focus
from concilium.metrics.mprt_variants import efficient_mprt, smooth_mprt, smooth_mprt_curve
from concilium.metrics.perturb import BASELINE_NAMES, make_baseline
from concilium.metrics.randomisation import mprt, mprt_curve, random_logit
from concilium.metrics.regions import region_perturbation, selectivity
from concilium.metrics.registry import (
    CATEGORIES,
    METRICS,
    MetricSpec,
    PassCount,
    metrics_in,
    register_metric,
)
from concilium.metrics.robustness import avg_sensitivity, local_lipschitz, max_sensitivity
from concilium.metrics.shared import PassStats, SharedPasses, shared_passes
from concilium.metrics.stability import (
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from concilium.metrics.translation import continuity

__all__ = [
    "BASELINE_NAMES",
    "CATEGORIES",
    "METRICS",
    "MetricSpec",
    "MetricWarning",
    "PassCount",
    "PassStats",
    "SharedPasses",
    "aopc",
    "aopc_curve",
    "aopc_lerf",
    "aopc_lerf_curve",
    "auc",
    "average_precision",
    "avg_sensitivity",
    "com_distance",
    "completeness",
    "complexity",
    "consistency",
    "continuity",
    "curve_metric",
    "deletion",
    "deletion_curve",
    "deletion_lerf",
    "deletion_lerf_curve",
    "effective_complexity",
    "efficient_mprt",
    "evaluate",
    "evaluate_curve",
    "evaluate_suite",
    "f1_at_quarter_max",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "focus",
    "infidelity",
    "input_invariance",
    "insertion",
    "insertion_curve",
    "insertion_lerf",
    "insertion_lerf_curve",
    "iou",
    "irof",
    "local_lipschitz",
    "make_baseline",
    "mask_correlation",
    "max_sensitivity",
    "metrics_in",
    "monotonicity",
    "monotonicity_correlation",
    "monotonicity_curve",
    "mprt",
    "mprt_curve",
    "non_sensitivity",
    "perturbation_curve",
    "pixel_flipping",
    "pixel_flipping_curve",
    "pointing_game",
    "random_logit",
    "region_perturbation",
    "register_metric",
    "relevance_mass",
    "relevance_rank",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "road",
    "road_curve",
    "selectivity",
    "shared_passes",
    "sensitivity_n",
    "smooth_mprt",
    "smooth_mprt_curve",
    "sparseness",
    "sufficiency",
    "top_k_intersection",
]
