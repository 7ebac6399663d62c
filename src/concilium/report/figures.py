"""Matplotlib figures of the report, each returned as a ``data:image/png;base64,...`` URI so that
the HTML file is self-contained and readable offline.

Every function takes plain numpy arrays or pandas DataFrames (no store, no model), draws on the
non-interactive Agg backend and closes its figure.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

MAP_CMAP = "bwr"
DPI = 72
GALLERY_MAP_INCHES = 2.3
"""The side of each gallery map (image, mask and every map drawn at this one size: about
165 px at :data:`DPI`)."""


def to_data_uri(fig: Figure) -> str:
    """Encode a figure as a base64 PNG data URI and close it.

    Every text is drawn literally: a ``$`` in a class or method name is not read as
    matplotlib mathtext (``"$\\frac{$"`` would fail to parse and ``"$x$"`` would change).
    """
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({"text.parse_math": False}):  # tick labels made while drawing
            fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def unit_scale(saliency: np.ndarray) -> np.ndarray:
    """Scale one map to max-abs 1 so every map of the gallery shares the colour scale [-1, 1].

    A constant-zero map stays zero.
    """
    peak = float(np.abs(saliency).max()) if saliency.size else 0.0
    return saliency / peak if peak > 0 else np.zeros_like(saliency)


def _show_image(ax: plt.Axes, image: np.ndarray) -> None:
    ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class GalleryCell:
    """One map of the gallery grid.

    Attributes:
        row: the row label (the method, or ``"across methods"``).
        column: the column label (the source: a member id or an ensemble name).
        saliency: the ``(H, W)`` map, any scale (it is rescaled to max-abs 1).
        caption: the per-image scores printed under the map.
    """

    row: str
    column: str
    saliency: np.ndarray
    caption: str = ""


def gallery_figure(
    image: np.ndarray, mask: np.ndarray, cells: Sequence[GalleryCell], *, title: str
) -> str:
    """One test image: the image and its mask, then a grid of maps (rows: methods, columns:
    sources), all on one colour scale with one colour bar, per-image scores under each map.

    Args:
        image: ``(H, W, 3)`` in [0, 1].
        mask: ``(H, W)`` bool ground truth.
        cells: the maps to draw.
        title: figure title (plain text; the figure is a picture, no HTML).
    """
    rows = list(dict.fromkeys(c.row for c in cells))
    by_row = {r: [c for c in cells if c.row == r] for r in rows}
    n_rows, n_cols = len(rows) + 1, max(2, *(len(v) for v in by_row.values()))
    width = GALLERY_MAP_INCHES * 1.12 * n_cols + 1.6
    height = (GALLERY_MAP_INCHES + 0.7) * n_rows + 0.5
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    # margins in inches, so that every map keeps GALLERY_MAP_INCHES whatever the grid
    fig.subplots_adjust(left=0.5 / width, right=1 - 1.1 / width, top=1 - 0.6 / height,
                        bottom=0.35 / height, wspace=0.12, hspace=0.7 / GALLERY_MAP_INCHES)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].axis("on")
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("image", fontsize=10)
    axes[0, 1].axis("on")
    _show_image(axes[0, 1], image * 0.35)
    axes[0, 1].imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.8, vmin=0, vmax=1)
    axes[0, 1].set_title("mask", fontsize=10)
    gray = image.mean(axis=-1) if image.ndim == 3 else image
    last = None
    for r, row in enumerate(rows, start=1):
        for c, cell in enumerate(by_row[row]):
            ax = axes[r, c]
            ax.axis("on")
            ax.imshow(gray, cmap="gray", alpha=0.35)
            last = ax.imshow(
                unit_scale(cell.saliency), cmap=MAP_CMAP, vmin=-1, vmax=1, alpha=0.85,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(cell.column if len(cell.column) <= 22 else cell.column[:21] + "…",
                         fontsize=9)
            if cell.caption:
                ax.set_xlabel(cell.caption, fontsize=8)
    for r, row in enumerate(rows, start=1):
        axes[r, 0].axis("on")
        label = row if len(row) <= 40 else f"{row.split(': ')[0]}: {row.count('+') + 1} methods"
        axes[r, 0].set_ylabel(label.replace(": ", ":\n"), fontsize=9)
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    if last is not None:
        cax = fig.add_axes((1 - 0.8 / width, 0.3, 0.15 / width, 0.4))
        bar = fig.colorbar(last, cax=cax)
        bar.set_label("map / max|map|", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=11, y=1 - 0.15 / height)
    return to_data_uri(fig)


def radar_figures(scores: pd.DataFrame, *, columns: int = 4) -> str:
    """Small multiples: one radar chart per explanation over the metric families.

    Args:
        scores: index = explanation labels, columns = families, values in [0, 1] (1 = best);
            NaN where a family was not measured (drawn at 0 and marked "n/a").
        columns: charts per row.
    """
    families = list(scores.columns)
    n = len(scores)
    n_cols = min(columns, max(n, 1))
    n_rows = int(np.ceil(n / n_cols))
    angles = np.linspace(0, 2 * np.pi, len(families), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(2.6 * n_cols, 2.7 * n_rows),
        subplot_kw={"projection": "polar"}, squeeze=False,
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (label, row) in zip(axes.flat, scores.iterrows(), strict=False):
        ax.set_visible(True)
        values = row.to_numpy(dtype=float)
        shown = np.nan_to_num(values, nan=0.0)
        ax.plot(closed, np.concatenate([shown, shown[:1]]), color="tab:blue", linewidth=1.2)
        ax.fill(closed, np.concatenate([shown, shown[:1]]), color="tab:blue", alpha=0.25)
        ax.set_xticks(angles)
        ax.set_xticklabels(
            [f"{f[:5]}" + (" n/a" if np.isnan(v) else "") for f, v in zip(families, values,
                                                                          strict=True)],
            fontsize=6,
        )
        ax.set_ylim(0, 1)
        ax.set_yticks([0.5, 1.0])
        ax.set_yticklabels([])
        ax.set_title(str(label), fontsize=7, pad=10)
    fig.tight_layout()
    return to_data_uri(fig)


def bar_figure(
    labels: Sequence[str], values: np.ndarray, *, flagged: Sequence[bool] | None = None,
    threshold: float | None = None, xlabel: str, title: str,
    low: np.ndarray | None = None, high: np.ndarray | None = None,
) -> str:
    """Horizontal bars, flagged bars in red, an optional threshold line and, with ``low`` and
    ``high``, each bar's interval as an error bar (NaN bounds: none)."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(5.4, 0.3 * n + 1.1))
    colours = ["tab:red" if f else "tab:blue" for f in (flagged or [False] * n)]
    shown = np.nan_to_num(values, nan=0.0)
    ax.barh(np.arange(n), shown, color=colours)
    if low is not None and high is not None:
        lo, hi = np.asarray(low, float), np.asarray(high, float)
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(values)
        ax.errorbar(shown[ok], np.arange(n)[ok], xerr=[shown[ok] - lo[ok], hi[ok] - shown[ok]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=2, label="95% interval")
        if ok.any():
            ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels([str(s) for s in labels], fontsize=8)
    ax.invert_yaxis()
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    return to_data_uri(fig)


def attribute_card_figure(
    image: np.ndarray, class_map: np.ndarray, attribute_maps: Sequence[tuple[str, np.ndarray]],
    *, class_title: str,
) -> str:
    """The class map next to the maps of the attributes found, each on the image."""
    n = 2 + len(attribute_maps)
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.3), squeeze=False)
    axes = axes[0]
    _show_image(axes[0], image)
    axes[0].set_title("image", fontsize=7)
    gray = image.mean(axis=-1)
    panels = [(class_title, class_map), *attribute_maps]
    for ax, (name, saliency) in zip(axes[1:], panels, strict=True):
        ax.imshow(gray, cmap="gray", alpha=0.35)
        ax.imshow(unit_scale(saliency), cmap=MAP_CMAP, vmin=-1, vmax=1, alpha=0.85)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=7)
    return to_data_uri(fig)


def ensemble_size_figure(curves: pd.DataFrame, *, title: str = "Ens-Avg vs ensemble size") -> str:
    """Ens-Avg's score against the number of members K, one panel per metric, one line per method
    (and source, when the table has a ``source`` column), with the range over member subsets.

    Args:
        curves: rows ``metric, method, k, mean, low, high`` (the ``ensemble_size`` table written
            by ``concilium ensemble --kind ens-avg``), optionally ``source``.
        title: the figure title.

    Raises:
        ValueError: if a column is missing (names it).
    """
    need = {"metric", "method", "k", "mean", "low", "high"}
    if not need <= set(curves.columns):
        raise ValueError(f"ensemble_size table lacks columns {sorted(need - set(curves.columns))}"
                         "; write it with `concilium ensemble --kind ens-avg`")
    metrics = sorted(curves["metric"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    keys = ["source", "method"] if "source" in curves.columns else ["method"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for key, grp in curves[curves["metric"] == metric].groupby(keys, sort=True):
            g = grp.sort_values("k")
            label = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
            line, = ax.plot(g["k"], g["mean"], marker="o", markersize=3, linewidth=1,
                            label=label)
            ax.fill_between(g["k"], g["low"], g["high"], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("members K", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)


def line_band(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray, *, rng: np.random.Generator,
    n_boot: int = 1000, level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line of ``y`` on ``x`` on ``grid`` and its percentile bootstrap band.

    The points are resampled with replacement (``n_boot`` times, from ``rng``) and the line is
    refitted; a resample whose ``x`` is constant has no line and is skipped.

    Returns:
        ``(fit, low, high)`` on ``grid`` (the band NaN when no resample has a line).

    Raises:
        ValueError: fewer than 2 points, or a constant ``x``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a line needs at least 2 points with distinct x; got {x.size} points")
    slope, intercept = np.polyfit(x, y, 1)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    xb, yb = x[idx], y[idx]
    xc = xb - xb.mean(1, keepdims=True)
    sxx = (xc**2).sum(1)
    ok = sxx > 0
    slopes = (xc * (yb - yb.mean(1, keepdims=True))).sum(1)[ok] / sxx[ok]
    intercepts = yb.mean(1)[ok] - slopes * xb.mean(1)[ok]
    if not ok.any():
        nan = np.full_like(grid, np.nan, dtype=float)
        return slope * grid + intercept, nan, nan
    lines = slopes[:, None] * grid[None, :] + intercepts[:, None]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(lines, [tail, 100 - tail], axis=0)
    return slope * grid + intercept, low, high


def consensus_scatter_figure(
    points: pd.DataFrame, *, panels: Sequence[tuple[str, str]] = (
        ("accuracy", "held-out accuracy"), ("localisation", "own localisation")),
    seed: int = 0, n_boot: int = 1000, level: float = 0.95,
) -> str:
    """Consensus score against each of ``panels``' columns, one panel each: the members as
    labelled points, the least-squares line and its percentile bootstrap band over the members
    (:func:`line_band`, seeded by ``seed``). A column that is missing or has fewer than 2
    finite points with distinct scores is drawn without a line.

    Args:
        points: one row per member: ``member``, ``consensus_score`` and the panels' columns.
        panels: ``(column, axis label)`` per panel.
        seed: seeds the bootstrap.
        n_boot: bootstrap resamples.
        level: band coverage.
    """
    shown = [(c, label) for c, label in panels if c in points.columns]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(4.4 * max(len(shown), 1), 3.4),
                             squeeze=False)
    for ax, (column, label) in zip(axes[0], shown, strict=False):
        x = points["consensus_score"].to_numpy(float)
        y = points[column].to_numpy(float)
        finite = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[finite], y[finite], color="tab:blue", s=22, zorder=3)
        names = points["member"].to_numpy()[finite]
        for xi, yi, name in zip(x[finite], y[finite], names, strict=True):
            ax.annotate(str(name), (xi, yi), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        if finite.sum() >= 2 and np.ptp(x[finite]) > 0:
            grid = np.linspace(x[finite].min(), x[finite].max(), 50)
            fit, low, high = line_band(x[finite], y[finite], grid,
                                       rng=np.random.default_rng(seed), n_boot=n_boot,
                                       level=level)
            ax.fill_between(grid, low, high, color="tab:red", alpha=0.15, linewidth=0,
                            label=f"{level:.0%} bootstrap band")
            ax.plot(grid, fit, color="tab:red", linewidth=1, label="least squares")
            ax.legend(fontsize=6, loc="best")
        ax.set_xlabel("consensus score", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(f"consensus score vs {label}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return to_data_uri(fig)
