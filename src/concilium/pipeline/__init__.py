"""The main job: from an experiment configuration to a report.

Example:
    >>> from concilium.pipeline import load_config, plan, run
    >>> config = load_config("examples/benchmark.toml")  # doctest: +SKIP
    >>> print(format_plan(plan(config, "runs/bench")))   # doctest: +SKIP
    >>> run(config, "runs/bench")                         # doctest: +SKIP

The stages are thin calls of the run-level jobs, also callable one by one
(:func:`concilium.models.train_ensemble`, :func:`concilium.jobs.explain.explain_run`,
:func:`concilium.jobs.ensemble.run_ensemble`, :func:`concilium.jobs.evaluate.evaluate_run`,
:func:`concilium.jobs.audit.run_audit`, :func:`concilium.report.write_report`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from concilium.pipeline.config import ExperimentConfig, load_config, parse_config
from concilium.pipeline.demo import demo_config
from concilium.pipeline.dryrun import PlannedStage, format_plan, plan
from concilium.pipeline.runner import StageResult, read_state, run_pipeline

__all__ = [
    "ExperimentConfig",
    "PlannedStage",
    "StageResult",
    "demo_config",
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
