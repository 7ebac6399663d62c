"""The shared perturbation engine (``concilium.metrics.shared``) against the same metrics run one
by one, on the same inputs, in one process.

Two measurements:

* ``suite`` (default): the perturbation-sequence metrics (deletion, AOPC, pixel flipping,
  monotonicity, region perturbation, IROF when registered) and the noisy-explanation metrics
  (max/avg sensitivity) on ``--n`` images of ``--size`` px through ``small-cnn``. Prints, per
  metric, its time alone and its model forwards; then the suite in one
  ``evaluate_suite`` call: time, forwards, ``suite / sum of one-by-one`` for both, and the
  largest value difference between the suite and the metrics alone (0 = identical).
* ``--run RUN``: the evaluate stage of a finished run (``make demo`` writes ``runs/demo``)
  with the run's own ``experiment.json`` evaluate settings, on a scratch copy of the run,
  with ``shared=False`` (every metric on its own) and ``shared=True``; prints both times,
  each metric's CPU time (those over 0.5 s), the speed-up and the largest difference between
  the two metric tables.

Wall-clock and CPU time are both printed: on a shared machine the wall time includes waiting
for the cores; CPU time / threads is what the work needs.

    .venv/bin/python benchmarks/shared_engine.py                  # the suite, 32 images 64 px
    .venv/bin/python benchmarks/shared_engine.py --n 8 --size 224 # at 224 px
    .venv/bin/python benchmarks/shared_engine.py --run runs/demo  # the demo's evaluate stage
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

SUITE = (
    "deletion",
    "aopc",
    "pixel_flipping",
    "monotonicity",
    "region_perturbation",
    "irof",
    "max_sensitivity",
    "avg_sensitivity",
)


class Counting(nn.Module):
    """Counts the images pushed through the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.model(x)


def clocked(fn: Callable[[], object]) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds / threads, result)``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, (time.process_time() - c) / torch.get_num_threads(), out


def suite(args: argparse.Namespace) -> None:
    from concilium.data.synthetic import SynthConfig, generate
    from concilium.explain import explain
    from concilium.metrics import METRICS, evaluate, evaluate_suite
    from concilium.models import create_model

    torch.manual_seed(0)
    data = generate(SynthConfig(n=args.n, size=args.size, seed=0))
    images, labels = data.images, data.labels
    net = create_model("small-cnn", num_classes=int(labels.max()) + 1).eval()
    model = Counting(net).eval()

    def explainer(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return explain(m, x, t, method="saliency", reduction="sum", baseline="zero")

    maps = explainer(net, images, labels)
    explainer(model, images[:1], labels[:1])  # the explainer's one-time set-up on this model
    step = max(1, args.size * args.size // 256)  # pixel flipping / monotonicity: 256 steps
    params = {
        "pixel_flipping": {"step": step},
        "monotonicity": {"step": step, "abs": False},
        "max_sensitivity": {"nr_samples": args.samples},
        "avg_sensitivity": {"nr_samples": args.samples},
        "region_perturbation": {"patch_size": max(1, args.size // 16)},
    }
    names = [n for n in SUITE if n in METRICS]
    missing = [n for n in SUITE if n not in METRICS]
    alone: dict[str, Tensor] = {}
    total_wall = total_cpu = 0.0
    total_fwd = 0
    print(f"{args.n} images {args.size}x{args.size}, small-cnn, threads {torch.get_num_threads()}")
    print(f"{'metric':22s} {'wall s':>8s} {'cpu s':>8s} {'forwards':>9s}")
    for name in names:
        model.images = 0
        wall, cpu, out = clocked(
            lambda name=name: evaluate(
                name,
                maps,
                images=images,
                labels=labels,
                model=model,
                explainer=explainer,
                generator=torch.Generator().manual_seed(0),
                **params.get(name, {}),
            )
        )
        alone[name] = out  # type: ignore[assignment]
        total_wall, total_cpu, total_fwd = (
            total_wall + wall,
            total_cpu + cpu,
            total_fwd + model.images,
        )
        print(f"{name:22s} {wall:8.2f} {cpu:8.2f} {model.images:9d}")
    model.images = 0
    wall, cpu, out = clocked(
        lambda: evaluate_suite(
            names,
            maps,
            images=images,
            labels=labels,
            model=model,
            explainer=explainer,
            params={k: v for k, v in params.items() if k in names},
        )
    )
    together: dict[str, Tensor] = out  # type: ignore[assignment]
    diff = max(float((together[n] - alone[n]).abs().nan_to_num(0.0).max()) for n in names)
    nan_same = all(torch.equal(together[n].isnan(), alone[n].isnan()) for n in names)
    print(f"{'one by one (sum)':22s} {total_wall:8.2f} {total_cpu:8.2f} {total_fwd:9d}")
    print(f"{'suite (shared)':22s} {wall:8.2f} {cpu:8.2f} {model.images:9d}")
    print(
        f"suite / one-by-one: wall {wall / total_wall:.3f}, cpu {cpu / total_cpu:.3f}, "
        f"forwards {model.images / total_fwd:.3f}; largest value difference {diff:.3g}"
        f"{'' if nan_same else ' (NaN pattern differs!)'}"
    )
    if missing:
        print(f"not registered (skipped): {', '.join(missing)}")


def stage(args: argparse.Namespace) -> None:
    import pandas as pd

    import concilium.jobs.evaluate as job
    from concilium.jobs.evaluate import evaluate_run
    from concilium.store import read_metrics

    run = Path(args.run)
    settings = json.loads((run / "experiment.json").read_text())["evaluate"]
    timings: dict[bool, tuple[float, float]] = {}
    tables: dict[bool, pd.DataFrame] = {}
    per_metric: dict[bool, dict[str, float]] = {False: {}, True: {}}
    plain = job.evaluate
    current = [False]

    def timed(name: str, *a: object, **k: object) -> Tensor:  # CPU seconds per metric
        t = time.process_time()
        out = plain(name, *a, **k)
        spent = per_metric[current[0]]
        spent[name] = spent.get(name, 0.0) + (time.process_time() - t) / torch.get_num_threads()
        return out

    job.evaluate = timed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        for shared in (False, True):
            current[0] = shared
            work = Path(tmp) / f"run-{shared}"
            shutil.copytree(run, work, ignore=shutil.ignore_patterns("results", "report*"))
            wall, cpu, _ = clocked(
                lambda work=work, shared=shared: evaluate_run(
                    work,
                    settings["metrics"],
                    params=settings.get("params"),
                    mask=settings.get("mask", "masks"),
                    split=settings.get("split", "test"),
                    limit=settings.get("limit"),
                    costly_limit=settings.get("costly_limit"),
                    shared=shared,
                )
            )
            timings[shared] = (wall, cpu)
            tables[shared] = read_metrics(work)
            print(
                f"shared={shared!s:5s}: wall {wall:7.1f} s, cpu/threads {cpu:7.1f} s, "
                f"{len(tables[shared])} values"
            )
    job.evaluate = plain  # type: ignore[assignment]
    print(f"{'metric (CPU s / thread)':32s} {'store off':>10s} {'store on':>10s}")
    for name, off in sorted(per_metric[False].items(), key=lambda kv: -kv[1]):
        if off >= 0.5:
            print(f"{name:32s} {off:10.1f} {per_metric[True].get(name, 0.0):10.1f}")
    key = ["source", "method", "entry_hash", "metric", "sample"]
    a = tables[False].set_index(key)["value"].sort_index()
    b = tables[True].set_index(key)["value"].sort_index()
    same_index = a.index.equals(b.index)
    diff = (a - b).abs().max() if same_index else float("nan")
    nan_same = same_index and bool((a.isna() == b.isna()).all())
    print(
        f"speed-up: wall {timings[False][0] / timings[True][0]:.2f}x, "
        f"cpu {timings[False][1] / timings[True][1]:.2f}x; same rows {same_index}, "
        f"same NaNs {nan_same}, largest value difference {diff:.3g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="images (default 32)")
    ap.add_argument("--size", type=int, default=64, help="image side (default 64)")
    ap.add_argument("--samples", type=int, default=8, help="sensitivity samples (default 8)")
    ap.add_argument("--run", default=None, help="time the evaluate stage of this run instead")
    args = ap.parse_args()
    if args.run is not None:
        stage(args)
    else:
        suite(args)


if __name__ == "__main__":
    main()
