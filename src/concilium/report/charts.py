"""Statistical charts of the report (forest plot of paired differences, heat map of ranks,
family intervals of the recommendation), each returned as a ``data:`` URI like
:mod:`concilium.report.figures`; plain DataFrames in, no store, no model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from concilium.report.figures import plt, to_data_uri

COMPARISON_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def forest_figure(
    diffs: pd.DataFrame, *, metrics: Sequence[str] | None = None, columns: int = 4,
    title: str = "Paired differences (positive = the first is better), 95% intervals",
) -> str:
    """Small multiples, one panel per metric: per method (rows) each comparison's oriented paired
    difference as a dot with its interval, a line at 0.

    Args:
        diffs: rows ``comparison, method, metric, estimate, ci_low, ci_high``
            (:func:`concilium.metrics.differences.paired_differences`).
        metrics: the panels, in order (default: every metric of ``diffs``).
        columns: panels per row.
        title: the figure title.

    Raises:
        ValueError: a column is missing (naming it).
    """
    need = {"comparison", "method", "metric", "estimate", "ci_low", "ci_high"}
    if not need <= set(diffs.columns):
        raise ValueError(f"a differences table needs the columns {sorted(need)}; missing "
                         f"{sorted(need - set(diffs.columns))}")
    metrics = list(metrics) if metrics is not None else sorted(diffs["metric"].unique())
    comparisons = list(dict.fromkeys(diffs["comparison"]))
    methods = sorted(diffs["method"].unique())
    n_cols = max(1, min(columns, len(metrics)))
    n_rows = int(np.ceil(len(metrics) / n_cols))
    height = 0.19 * len(methods) * (1 + 0.2 * (len(comparisons) - 1)) + 0.75
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.9 * n_cols, height * n_rows + 0.3),
                             squeeze=False, sharey=True)
    for ax in axes.flat:
        ax.set_visible(False)
    step = 0.7 / max(len(comparisons), 1)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        ax.set_visible(True)
        sub = diffs[diffs["metric"] == metric]
        for k, comp in enumerate(comparisons):
            part = sub[sub["comparison"] == comp].set_index("method").reindex(methods)
            y = np.arange(len(methods)) + (k - (len(comparisons) - 1) / 2) * step
            est = part["estimate"].to_numpy(float)
            lo, hi = part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float)
            ok = np.isfinite(est)
            colour = COMPARISON_COLOURS[k % len(COMPARISON_COLOURS)]
            bars = np.isfinite(lo) & np.isfinite(hi) & ok
            ax.errorbar(est[bars], y[bars], xerr=[est[bars] - lo[bars], hi[bars] - est[bars]],
                        fmt="o", color=colour, markersize=2.5, linewidth=1, capsize=1.5,
                        label=comp)
            ax.plot(est[ok & ~bars], y[ok & ~bars], "o", color=colour, markersize=3,
                    markerfacecolor="white")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(np.arange(len(methods)))
        ax.set_yticklabels([_short(m, 22) for m in methods], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=8, pad=2)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    handles, labels = next(a for a in axes.flat if a.get_visible()).get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (height * n_rows + 0.3)), h_pad=0.4)
    fig.legend(handles, labels, loc="upper right", ncol=len(comparisons), fontsize=7,
               bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.text(0.01, 1.0, title, fontsize=8, va="top")
    return to_data_uri(fig)


def rank_heatmap_figure(ranks: pd.DataFrame, *, title: str = "Rank per metric (1 = best)") -> str:
    """A heat map of ranks: rows = explanations, columns = metrics, 1 (dark) = best; each cell
    printed; NaN cells blank.

    Args:
        ranks: index = explanation labels, columns = metric labels, values = ranks.
        title: the figure title.
    """
    values = ranks.to_numpy(float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(0.55 * n_cols + 2.6, 0.24 * n_rows + 1.6))
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", vmin=1, vmax=max(top, 2),
                      aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if values[i, j] <= top / 2 else "black")
    ax.set_xticks(np.arange(n_cols))
    ax.set_xticklabels([_short(str(c), 20) for c in ranks.columns], rotation=60, ha="right",
                       fontsize=7)
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels([_short(str(r), 34) for r in ranks.index], fontsize=7)
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return to_data_uri(fig)


def family_interval_figure(
    ranking: pd.DataFrame, families: Sequence[str], *,
    title: str = "Family score with its interval (1 = best of the explanations)",
) -> str:
    """One panel per family: each ranked explanation (rows, best first) as a dot at its family
    score with its interval; Pareto-front explanations in green, dominated ones in grey.

    Args:
        ranking: :attr:`concilium.metrics.recommend.Recommendation.ranking` (or its head):
            ``explanation, status`` and ``<family>``, ``<family>_low``, ``<family>_high``.
        families: the panels.
        title: the figure title.
    """
    n = len(ranking)
    fig, axes = plt.subplots(1, max(len(families), 1), figsize=(
        2.3 * max(len(families), 1) + 1.9, 0.24 * n + 0.9), squeeze=False, sharey=True)
    y = np.arange(n)
    colours = np.where(ranking["status"].to_numpy() == "front", "tab:green", "tab:gray")
    for ax, family in zip(axes[0], families, strict=False):
        s = ranking[family].to_numpy(float)
        lo = ranking[f"{family}_low"].to_numpy(float)
        hi = ranking[f"{family}_high"].to_numpy(float)
        for i in range(n):
            if not np.isfinite(s[i]):
                continue
            if np.isfinite(lo[i]) and np.isfinite(hi[i]):
                ax.plot([lo[i], hi[i]], [y[i], y[i]], color=colours[i], linewidth=1.6)
            ax.plot(s[i], y[i], "o", color=colours[i], markersize=4)
        ax.set_title(family, fontsize=9)
        ax.axvline(0, color="#cccccc", linewidth=0.6)
        ax.axvline(1, color="#cccccc", linewidth=0.6)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([f"{r}. {_short(str(e), 30)}" for r, e in
                                zip(ranking["rank"], ranking["explanation"], strict=True)],
                               fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_data_uri(fig)
