"""The registry of report sections: each section is one builder, registered with its id and
heading; the report draws them in registry order.

A new section is one function in any module of :mod:`concilium.report` that ``concilium.report``
imports (:mod:`~concilium.report.sections`, :mod:`~concilium.report.overview`)::

    @SECTIONS.register("model-sources", "Model sources", after="models")
    def section_model_sources(data: ReportData, ctx: Context) -> Section:
        s = Section("model-sources", SECTIONS["model-sources"])
        ...
        return s

``SECTIONS`` reads as a mapping ``id -> heading`` in report order (the browser test checks each
heading); a duplicate id raises, an unknown ``after`` raises naming the known ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from concilium.report.context import Context
from concilium.report.data import ReportData
from concilium.report.view import Section

Builder = Callable[[ReportData, Context], Section]


@dataclass(frozen=True)
class SectionSpec:
    """One registered section: its id (the HTML anchor), heading and builder."""

    id: str
    title: str
    build: Builder


class SectionRegistry(Mapping[str, str]):
    """Section id -> heading, in report order, with the builders behind them."""

    def __init__(self) -> None:
        self._specs: list[SectionSpec] = []

    def register(self, section_id: str, title: str, *, after: str | None = None,
                 first: bool = False) -> Callable[[Builder], Builder]:
        """Decorator registering a builder as section ``section_id`` (appended, or placed right
        after the section ``after``, or ``first``).

        Raises:
            ValueError: the id is taken, or ``after`` names no registered section.
        """
        def decorator(build: Builder) -> Builder:
            if section_id in self:
                raise ValueError(f"report section {section_id!r} is already registered")
            spec = SectionSpec(section_id, title, build)
            if first:
                self._specs.insert(0, spec)
            elif after is None:
                self._specs.append(spec)
            else:
                ids = [s.id for s in self._specs]
                if after not in ids:
                    raise ValueError(f"unknown report section {after!r} for after=; known: "
                                     f"{', '.join(ids)}")
                self._specs.insert(ids.index(after) + 1, spec)
            return build
        return decorator

    def specs(self) -> list[SectionSpec]:
        """The registered sections in report order."""
        return list(self._specs)

    def __getitem__(self, section_id: str) -> str:
        for spec in self._specs:
            if spec.id == section_id:
                return spec.title
        raise KeyError(section_id)

    def __iter__(self) -> Iterator[str]:
        return iter([s.id for s in self._specs])

    def __len__(self) -> int:
        return len(self._specs)


SECTIONS = SectionRegistry()
"""Every report section, in report order."""

