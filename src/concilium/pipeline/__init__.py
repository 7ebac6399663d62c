"""The main job: from an experiment configuration to a report.

Example:
    >>> from concilium.pipeline import load_config, plan, run
    >>> config = load_config("examples/benchmark.toml")  # doctest: +SKIP
    >>> print(format_plan(plan(config, "runs/bench")))   # doctest: +SKIP
    >>> run(config, "runs/bench")                         # doctest: +SKIP

The stages are also callable one by one through the packages they wrap
(:func:`concilium.models.train_ensemble`, :func:`concilium.store.compute.explain_to_store`,
:func:`concilium.ensemble.registry.run_ensemble`, :func:`evaluate_run`,
:func:`concilium.ensemble.audit.run_audit`, :func:`concilium.report.write_report`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from concilium.pipeline.analysis import evaluate_run
from concilium.pipeline.config import ExperimentConfig, load_config, parse_config
from concilium.pipeline.demo import demo_config
from concilium.pipeline.plan import PlannedStage, format_plan, plan
from concilium.pipeline.run import StageResult, read_state, run_pipeline

__all__ = [
    "ExperimentConfig",
    "PlannedStage",
    "StageResult",
    "demo_config",
    "evaluate_run",
    "format_plan",
    "load_config",
    "parse_config",
    "plan",
    "read_state",
    "run",
    "run_pipeline",
]


def run(
    config: ExperimentConfig | str | Path, out: str | Path, *, console: Console | None = None
) -> list[StageResult]:
    """Run an experiment (a validated config or the path of its TOML file) into ``out``;
    finished stages with unchanged inputs are skipped. See :func:`run_pipeline`."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    return run_pipeline(config, out, console=console)
