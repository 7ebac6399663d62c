"""``concilium run --dry-run``: what each stage would do, what is cached, and what it costs.

The cost of a stage is counted in model passes per image (a forward+backward pass of one image
through one member; the explanation methods' counts come from their registry entries) and
turned into seconds with a quick probe: one timed batched forward+backward pass of each
architecture at the experiment's image size. Nothing is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from concilium.explain import METHODS, method_params
from concilium.metrics import METRICS
from concilium.metrics.randomisation import randomisable_layers
from concilium.models import create_model, parse_sources
from concilium.pipeline.config import ExperimentConfig, resolve_metrics
from concilium.pipeline.context import Stage
from concilium.pipeline.runner import read_state, stage_hashes
from concilium.pipeline.stages import STAGES

PlanStatus = Literal["cached", "run", "resume", "skip"]
SYNTH_SECONDS_PER_IMAGE = 0.002
"""Generator cost per image (the data issue's target: 10,000 images of 64 px in 20 s)."""
REPORT_SECONDS = 15.0
PROBE_BATCH = 64


@dataclass
class PlannedStage:
    """One line of the plan.

    Attributes:
        name: the stage.
        status: ``cached`` (finished with the same hash: skipped), ``resume`` (started with the
            same hash, not finished), ``run`` (new or changed), ``skip`` (not enabled).
        passes: estimated model passes (image x forward+backward), ``None`` when not estimated.
        seconds: estimated seconds, ``None`` when not estimated.
        detail: what the stage will do.
    """

    name: str
    status: PlanStatus
    passes: int | None
    seconds: float | None
    detail: str


@cache
def probe_seconds(arch: str, size: tuple[int, int], num_classes: int) -> float:
    """Seconds of one image's forward+backward pass through ``arch`` (batched, measured)."""
    model = create_model(arch, num_classes=num_classes)
    x = torch.rand(PROBE_BATCH, 3, *size)
    model(x).sum().backward()  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.zero_grad()
        model(x).sum().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times)[1] / PROBE_BATCH


def _split_sizes(config: ExperimentConfig) -> tuple[dict[str, int], tuple[int, int], int]:
    return config.data.spec().split_sizes()


def _archs(models) -> list[str]:
    if models.option("diversity") == "arch":
        archs = list(models.option("archs") or ["small-cnn"])
        n = models.option("members")
        return [archs[i % len(archs)] for i in range(n)]
    return [models.option("arch") or "small-cnn"] * models.option("members")


def _train_cost(models, n_train: int, size, classes) -> tuple[int, float]:
    if models.given is not None:  # existing members: nothing to train
        return 0, 0.0
    archs = _archs(models)
    epochs = models.option("epochs")
    if models.option("diversity") == "head":
        ft = models.option("finetune_epochs") or max(1, epochs // 5)
        per_member = [ft * n_train] * len(archs)
        per_member[0] += epochs * n_train  # the shared backbone
    else:
        per_member = [epochs * n_train] * len(archs)
    passes = sum(per_member)
    seconds = sum(p * probe_seconds(a, size, classes) for p, a in zip(per_member, archs,
                                                                       strict=True))
    return passes, seconds


def _explain_cost(methods, params, members: list[str], n: int, size, classes) -> tuple[int, float]:
    per_image = 0
    for m in methods:
        spec = METHODS.get(m)
        p = spec.params.model_validate(method_params(m, **params.get(m, {})))
        per_image += int(spec.passes(p, size))
    passes = per_image * n * len(members)
    seconds = sum(per_image * n * probe_seconds(a, size, classes) for a in members)
    return passes, seconds


@cache
def _layers(arch: str, num_classes: int) -> int:
    """Layers of ``arch`` that MPRT randomises (modules with ``reset_parameters``)."""
    return len(randomisable_layers(create_model(arch, num_classes=num_classes)))


def _metric_passes(name: str, params: dict, size: tuple[int, int], arch: str, classes: int) -> int:
    """Model passes per image of a metric, from its registry metadata (``MetricSpec.passes``;
    an image given to the explanation method counts one pass)."""
    spec = METRICS.get(name)
    layers = _layers(arch, classes) if spec.needs_explainer else 0
    return spec.model_passes(params, size=size, layers=layers)


def plan(config: ExperimentConfig, out: str | Path, *, stages: list[Stage] | None = None
         ) -> list[PlannedStage]:
    """The plan of ``concilium run``: per stage, cached or not, and the estimated cost.

    Args:
        config: the validated experiment.
        out: the run directory (read only: its ``stages.json`` says what is cached).
        stages: the stage list (default: the pipeline's).
    """
    if stages is None:
        stages = STAGES
    state = read_state(Path(out)) if Path(out).is_dir() else {}
    hashes = stage_hashes(stages, config, state)
    sizes, size, classes = _split_sizes(config)
    e = config.explain
    n_expl = (sum(sizes.values()) if e.split == "all" else sizes[e.split])
    n_expl = min(n_expl, e.limit) if e.limit else n_expl
    # existing members are costed as small-cnn (their size is not known without loading them);
    # members from hf:, timm:, ... are not costed at all: a ViT-B is not a small-cnn
    members = _archs(config.models) if config.models.given is None else ["small-cnn"]
    foreign = config.models.given is not None and any(
        s.kind != "folder" for s in parse_sources(config.models.given))
    out_plan: list[PlannedStage] = []
    for stage in stages:
        if stage.name not in hashes:
            out_plan.append(PlannedStage(stage.name, "skip", None, None, "not configured"))
            continue
        record = state.get(stage.name, {})
        same = record.get("hash") == hashes[stage.name]
        status: PlanStatus = "run"
        if stage.always_run:
            status = "run"
        elif same and record.get("status") == "done":
            status = "cached"
        elif same:
            status = "resume"
        passes: int | None = None
        seconds: float | None = None
        if stage.name == "data":
            passes, seconds = 0, sum(sizes.values()) * SYNTH_SECONDS_PER_IMAGE
        elif stage.name == "models":
            passes, seconds = _train_cost(config.models, sizes["train"], size, classes)
        elif stage.name == "committee" and config.committee is not None:
            c = config.committee
            n = min(n_expl, c.limit) if c.limit else n_expl
            p1, s1 = _train_cost(c.models, sizes["train"], size, classes)
            p2, s2 = _explain_cost(c.methods, c.params, _archs(c.models), n, size, classes)
            passes, seconds = p1 + p2, s1 + s2
        elif foreign and stage.name in ("explain", "ensemble", "evaluate"):
            passes, seconds = None, None
        elif stage.name == "explain":
            passes, seconds = _explain_cost(e.methods, e.params, members, n_expl, size, classes)
        elif stage.name == "ensemble" and "ens-logit" in config.ensemble.kinds:
            passes, seconds = _explain_cost(e.methods, e.params, members, n_expl, size, classes)
        elif stage.name == "evaluate":
            names = resolve_metrics(config.evaluate.metrics)
            n_eval = min(n_expl, config.evaluate.limit or n_expl)
            n_costly = min(n_eval, config.evaluate.costly_limit or n_eval)
            sources = len(members) + len(config.ensemble.kinds)
            per = sum(_metric_passes(m, config.evaluate.params.get(m, {}), size, members[0], classes)
                      for m in names)
            passes = per * n_costly * sources * len(e.methods)
            seconds = passes * probe_seconds(members[0], size, classes) / 3  # mostly forwards
        elif stage.name == "report":
            passes, seconds = 0, REPORT_SECONDS
        out_plan.append(PlannedStage(stage.name, status, passes, seconds,
                                     stage.describe(config)))
    return out_plan


def format_plan(planned: list[PlannedStage]) -> str:
    """The plan as an aligned text table, with the total of what would run."""
    lines = [f"{'stage':<10} {'status':<7} {'passes':>12} {'seconds':>9}  detail"]
    total_p, total_s = 0, 0.0
    for p in planned:
        passes = "-" if p.passes is None else f"{p.passes:,}"
        secs = "-" if p.seconds is None else f"{p.seconds:.0f}"
        lines.append(f"{p.name:<10} {p.status:<7} {passes:>12} {secs:>9}  {p.detail}")
        if p.status in ("run", "resume"):
            total_p += p.passes or 0
            total_s += p.seconds or 0.0
    lines.append(f"to run: about {total_p:,} model passes, {total_s:.0f} s "
                 "(estimate from method pass counts and a timed forward+backward probe; "
                 "'-' = not estimated)")
    return "\n".join(lines)
