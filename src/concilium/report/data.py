"""What the report shows, already read from ``RUN/``: :class:`ReportData` and its parts.

:mod:`concilium.report.load` fills it from a run directory (reading only), the builders of
:mod:`concilium.report.sections` turn it into sections, :mod:`concilium.report.render` into HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from concilium.report.figures import GalleryCell
from concilium.report.options import MembersView


@dataclass
class GalleryItem:
    """One chosen test image with its stored maps."""

    sample_id: str
    label: str
    image: np.ndarray
    mask: np.ndarray
    cells: list[GalleryCell]
    prediction: str | None = None


@dataclass
class AttributeFinding:
    """One attribute of an attribute card (a row of ``RUN/results/attributes.parquet`` and its
    map)."""

    name: str
    probability: float
    saliency: np.ndarray
    part: str | None = None
    mass: float = math.nan
    class_mass: float = math.nan


@dataclass
class AttributeCard:
    """"Predicted class X because: attribute A (probability p) here [map], ..."."""

    sample_id: str
    predicted: str
    probability: float
    image: np.ndarray
    class_map: np.ndarray
    attributes: list[AttributeFinding]
    source: str = "m0"
    method: str = "gradcam"


@dataclass
class ReportData:
    """Everything the report shows, already loaded.

    Attributes:
        title: the report title.
        run_dir: the run directory, as the commands in "missing" notes name it.
        dataset: the dataset card: ``class_names`` plus free-form knobs (generator parameters,
            folder path, image size, ...).
        class_counts: rows = class names, columns = splits, values = sample counts.
        members: one row per member (``member_id, arch, diversity, seed, epochs,
            val_accuracy``...), from the members' cards.
        metrics: the tidy metrics table (``sample, label, source, method, metric, value``).
        meta: metric metadata (``metric, category, higher_is_better``).
        tables: the other results tables by file stem (``RUN/results/<stem>.parquet``).
        gallery: chosen images with their stored maps.
        attribute_cards: multitask explanation cards (written by ``concilium audit``).
        notes: section id -> why its inputs are missing.
        members_view: how member rows appear in the metric table (see ``explanation_stats``).
    """

    title: str = "concilium report"
    run_dir: str = "RUN"
    dataset: dict = field(default_factory=dict)
    class_counts: pd.DataFrame | None = None
    members: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    meta: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["metric", "category", "higher_is_better"])
    )
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    gallery: list[GalleryItem] = field(default_factory=list)
    attribute_cards: list[AttributeCard] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    members_view: MembersView = "pooled"
