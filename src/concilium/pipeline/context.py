"""What every stage of ``concilium run`` gets (:class:`Context`) and what a stage is
(:class:`Stage`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from concilium.jobs.engine import Engine
from concilium.jobs.engines import make_engine
from concilium.pipeline.config import ExperimentConfig


@dataclass
class Context:
    """What every stage gets: the configuration, the run directory and shared caches.

    Attributes:
        config: the validated experiment.
        out: the run directory ``RUN``.
        console: where progress goes.
        cache: objects shared between stages of one process (the dataset).
    """

    config: ExperimentConfig
    out: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        """Where explain and evaluate run (``engine``, ``address``, ``workers``), made once."""
        if "engine" not in self.cache:
            c = self.config
            address = c.address if c.engine != "inprocess" else None
            workers = c.workers if c.engine != "inprocess" else None
            self.cache["engine"] = make_engine(c.engine, address=address, workers=workers)
        return self.cache["engine"]

    @property
    def models_dir(self) -> Path:
        """Where trained members go (``RUN/models``), or ``[models] dir``."""
        d = self.config.models.dir
        return Path(d).expanduser().resolve() if d else self.out / "models"

    @property
    def model_sources(self) -> list[str]:
        """The member sources explained: ``[models] sources``, ``dir``, or the trained
        members in ``RUN/models``."""
        return self.config.models.given or [str(self.models_dir)]

    @property
    def committee_run(self) -> Path:
        """The committee's sub-run (its own store and results)."""
        return self.out / "committee"

    @property
    def committee_models_dir(self) -> Path:
        """Where the committee's trained members go, or its ``dir``."""
        c = self.config.committee
        d = c.models.dir if c is not None else None
        return Path(d).expanduser().resolve() if d else self.out / "committee-models"

    @property
    def committee_sources(self) -> list[str]:
        """The committee's member sources (as :attr:`model_sources`)."""
        c = self.config.committee
        given = c.models.given if c is not None else None
        return given or [str(self.committee_models_dir)]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: stage name (keys of ``stages.json``).
        section: the part of the configuration this stage depends on (hashed).
        upstream: the stages whose outputs it reads.
        run: does the work; returns a small JSON-able summary.
        enabled: whether the configuration asks for this stage.
        describe: one line for the plan.
        always_run: a cheap stage that runs every time (the data: its generator or folder may
            have changed although the configuration did not); its summary (the data
            fingerprint) then enters the hashes of the stages after it.
    """

    name: str
    section: Callable[[ExperimentConfig], Any]
    upstream: tuple[str, ...]
    run: Callable[[Context], Mapping[str, Any]]
    enabled: Callable[[ExperimentConfig], bool] = lambda c: True
    describe: Callable[[ExperimentConfig], str] = lambda c: ""
    always_run: bool = False

