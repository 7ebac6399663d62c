"""Paired differences between explanation sources per method and metric, with intervals: the
numbers of the report's forest plot (Ens-Avg vs Exp-Avg vs Ens-Logit).

Each difference is ``A - B`` on the images where both are finite (Exp-Avg per
:mod:`concilium.metrics.tables`: NaN where any member is NaN), oriented so that a positive value
means A is better (direction from the metric registry), with the percentile bootstrap interval of
:func:`concilium.metrics._paired.paired_interval` (the same machinery as the claims) drawn from
an explicit generator.

Example:
    >>> import numpy as np, pandas as pd
    >>> rows = [(f"s{i}", src, "saliency", "iou", v + 0.01 * i)
    ...         for i in range(10) for src, v in (("m0", 0.1), ("m1", 0.3), ("ens-avg", 0.4))]
    >>> t = pd.DataFrame(rows, columns=["sample", "source", "method", "metric", "value"])
    >>> d = paired_differences(t, rng=np.random.default_rng(0))
    >>> d[["comparison", "method", "metric", "estimate", "n"]].values.tolist()
    [['ens-avg - exp-avg', 'saliency', 'iou', 0.2, 10]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from concilium.metrics._paired import paired_block, paired_interval, wide_table
from concilium.metrics.tables import higher_is_better_of
from concilium.vocabulary import EXP_AVG

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("ens-avg", EXP_AVG), ("ens-logit", EXP_AVG), ("ens-avg", "ens-logit"))
"""The default comparisons ``(A, B)``: A - B, positive when A is better."""

DIFFERENCE_COLUMNS: tuple[str, ...] = (
    "comparison", "a", "b", "method", "metric", "estimate", "ci_low", "ci_high", "n")


def paired_differences(
    metrics: pd.DataFrame,
    *,
    rng: np.random.Generator,
    comparisons: Sequence[tuple[str, str]] = COMPARISONS,
    metric_names: Sequence[str] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Oriented paired differences ``A - B`` per comparison, method and metric.

    Args:
        metrics: the tidy metrics table (``sample, source, method, metric, value``; a ``seed``
            column pairs and resamples images within each seed).
        rng: draws the bootstrap resamples.
        comparisons: ``(A, B)`` source pairs; a pair with no paired image for a method is left
            out.
        metric_names: the metrics (default: every metric of the table).
        n_boot: bootstrap resamples.
        level: interval coverage.

    Returns:
        Columns :data:`DIFFERENCE_COLUMNS` (``comparison`` is ``"A - B"``); NaN bounds with
        fewer than two paired images.
    """
    need = {"sample", "source", "method", "metric", "value"}
    if not need <= set(metrics.columns):
        raise ValueError(f"a metrics table needs the columns {sorted(need)}; got "
                         f"{list(metrics.columns)}")
    names = sorted(metrics["metric"].unique()) if metric_names is None else list(metric_names)
    rows = []
    for metric in names:
        if not (metrics["metric"] == metric).any():
            continue
        wide = wide_table(metrics, metric)
        sign = 1.0 if higher_is_better_of(metric) else -1.0
        for a, b in comparisons:
            methods = sorted({m for s, m in wide.columns if s == a} &
                             {m for s, m in wide.columns if s == b})
            for method in methods:
                block = paired_block(f"{metric}/{method}", wide, [(a, method), (b, method)],
                                     lambda mu, s=sign: s * (mu[..., 0] - mu[..., 1]))
                if not len(block.x):
                    continue
                est, low, high, n = paired_interval([block], rng=rng, n_boot=n_boot,
                                                    level=level)
                rows.append({"comparison": f"{a} - {b}", "a": a, "b": b, "method": method,
                             "metric": metric, "estimate": round(est, 12), "ci_low": low,
                             "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))
