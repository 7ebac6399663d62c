"""The view model of the report: what the template draws (sections of paragraphs, items,
tables and figures) and how a value is printed. No data access, no numbers computed here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Cell:
    """One table cell: its text, bold for the best of a row or column."""

    text: str
    bold: bool = False
    css: str = ""


@dataclass
class Table:
    """A table of a section."""

    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class Figure:
    """A figure of a section: a ``data:`` URI and its caption."""

    uri: str
    caption: str = ""


@dataclass
class Section:
    """One section as the template draws it; ``missing`` says why it is empty."""

    id: str
    title: str
    intro: str = ""
    paragraphs: list[str] = field(default_factory=list)
    items: list[tuple[str, str | None, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    missing: str | None = None


def fmt(x: object, digits: int = 3) -> str:
    """How the report prints a value: ``digits`` decimals, ``n/a`` for NaN, ``yes``/``no``."""
    if x is None:
        return ""
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return "n/a" if not np.isfinite(x) else f"{float(x):.{digits}f}"
    return str(x)


def frame_table(frame: pd.DataFrame, *, caption: str = "", max_rows: int = 60) -> Table:
    """Any DataFrame as a table, every value through :func:`fmt`."""
    shown = frame.head(max_rows)
    rows = [[Cell(fmt(v)) for v in row] for row in shown.itertuples(index=False)]
    if len(frame) > max_rows:
        caption = (caption + " " if caption else "") + f"(first {max_rows} of {len(frame)} rows)"
    return Table([str(c) for c in frame.columns], rows, caption)
