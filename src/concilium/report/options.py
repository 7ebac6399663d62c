"""The options of the report (:class:`ReportOptions`): defined and checked here once, for
:func:`concilium.report.write_report`, :func:`concilium.report.load.load_report_data`, the
experiment's ``[report]`` section and the flags of ``concilium report``.

Example:
    >>> ReportOptions(gallery_images=2).gallery_members
    3
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_GALLERY_METRICS = ("relevance_mass", "mask_correlation", "pointing_game")
"""The per-image scores printed under each gallery map by default."""

MembersView = Literal["pooled", "each", "both"]


class ReportOptions(BaseModel):
    """Options of the report (``extra="forbid"``: an unknown option names the valid ones)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(
        None, description='the report title (default: "concilium report: <run dir name>")')
    gallery_images: int = Field(
        4, ge=0, description="test images the gallery shows (one per class first)")
    gallery_members: int = Field(
        3, ge=0, description="members' maps per method the gallery shows")
    gallery_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GALLERY_METRICS),
        description="the per-image scores printed under each gallery map (those evaluated)")
    members_view: MembersView = Field(
        "pooled", description="member rows of the metric table: pooled (one Exp-Avg row per "
                              "method), each (one row per member) or both")

    @field_validator("gallery_images", "gallery_members", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be an int >= 0; got {value!r}")
        return value
