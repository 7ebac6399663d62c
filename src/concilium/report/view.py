"""The view model of the report: what the template draws (sections of paragraphs, items,
tables and figures) and how a value is printed. No data access, no numbers computed here."""

from __future__ import annotations

import base64
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
    """A table of a section: drawn folded (``<details>``) unless ``folded`` is false, with a
    link that downloads ``csv`` (the whole table, also the rows not drawn) from the page."""

    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    csv: str = ""
    folded: bool = True
    name: str = ""
    """The CSV file's name without ``.csv`` (set by the builder: ``<section id>-<k>``)."""

    @property
    def csv_uri(self) -> str:
        """``csv`` as a ``data:`` URI (base64, UTF-8), "" without one."""
        if not self.csv:
            return ""
        return "data:text/csv;charset=utf-8;base64," + base64.b64encode(
            self.csv.encode("utf-8")).decode("ascii")


@dataclass
class Figure:
    """A figure of a section: a ``data:`` URI and its caption; ``wide`` figures take the full
    width of the page, the others sit side by side."""

    uri: str
    caption: str = ""
    wide: bool = False


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
    details: list[tuple[str, list[str]]] = field(default_factory=list)
    """Folded notes: ``(summary line, paragraphs)``, drawn as ``<details>``."""


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


def to_csv(frame: pd.DataFrame) -> str:
    """A table as the CSV its download link gives (every row, full precision, no index)."""
    return frame.to_csv(index=False)


def frame_table(frame: pd.DataFrame, *, caption: str = "", max_rows: int = 60,
                folded: bool = True) -> Table:
    """Any DataFrame as a table, every value through :func:`fmt`; the CSV holds every row."""
    shown = frame.head(max_rows)
    rows = [[Cell(fmt(v)) for v in row] for row in shown.itertuples(index=False)]
    if len(frame) > max_rows:
        caption = (caption + " " if caption else "") + f"(first {max_rows} of {len(frame)} rows)"
    return Table([str(c) for c in frame.columns], rows, caption, csv=to_csv(frame),
                 folded=folded)
