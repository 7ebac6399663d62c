"""What a run-level job hands an engine, and the in-process engine.

A job cuts its work into *units* aligned with the store's chunks (explain: one member, one
method or shared-pass group, one chunk; evaluate: one entry, one set of metrics that share a row
step, one chunk of rows) and describes the computation by a :class:`Work`: ``setup()`` builds a
worker's state once (the data, the models loaded once), ``step(state, unit)`` computes one unit.
An :class:`Engine` runs the steps somewhere and hands each result back to the driver, in this
process, through ``on_result``; the driver alone records progress (store done markers, the
results table, the progress display).

Every random choice of a unit is seeded from the unit itself (``(seed, source, first row)``), never
from which worker ran it or what it ran before, so every engine writes the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

U = TypeVar("U")
R = TypeVar("R")


class Work(Protocol[U, R]):
    """The computation of a job, as engines run it (picklable: distributed engines ship it to
    their workers once).

    ``setup`` is called once per worker (a restarted worker calls it again); ``step`` once per
    unit, possibly on another machine, possibly twice when a worker died part-way (a step must
    therefore only write whole chunks, which a second run overwrites with the same bytes).
    """

    def setup(self) -> Any:
        """The worker's state: data, models, open store handles."""

    def step(self, state: Any, unit: U) -> R:
        """Compute one unit; return what the driver records."""


class Engine(Protocol):
    """Runs the units of a job.

    Attributes:
        name: the engine's registered name (``inprocess``, ``ray``).
    """

    name: str

    def run(self, work: Work[U, R], units: Sequence[U],
            on_result: Callable[[U, R], None]) -> None:
        """Compute every unit and call ``on_result(unit, result)`` in this process as each one
        finishes (any order). An exception in ``on_result`` stops the run; units already
        handed to ``on_result`` stay recorded."""


class InProcessEngine:
    """The default engine: every unit in order, in this process, on the job's device."""

    name = "inprocess"

    def run(self, work: Work[U, R], units: Sequence[U],
            on_result: Callable[[U, R], None]) -> None:
        if not units:
            return
        state = work.setup()
        for unit in units:
            on_result(unit, work.step(state, unit))

    def __repr__(self) -> str:
        return "InProcessEngine()"


class PreparedWork:
    """``work`` whose state the driver has built already: for the in-process engine, so a job
    that opened the run to plan its units does not open it twice (never shipped to workers)."""

    def __init__(self, work: Work[U, R], state: Any) -> None:
        self.work, self.state = work, state

    def setup(self) -> Any:
        return self.state

    def step(self, state: Any, unit: U) -> R:
        return self.work.step(state, unit)
