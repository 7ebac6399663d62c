"""The Ray engine's overhead and scaling on one machine: the same explain + evaluate work with the
in-process engine, Ray with 1 worker and Ray with 2 workers, each into a fresh run folder.

Goals (issue 15): Ray with 1 worker takes at most 1.1x the in-process time; 2 workers are at
least 1.7x faster than 1 on work large enough to amortise the start-up.

What is timed: ``explain_run`` then ``evaluate_run`` on one engine object (its workers start in
the explain job and serve the evaluate job: that start-up is included); ``ray.init`` (a local
instance, once) is timed apart. Every run uses one torch thread per worker and in process, so
the comparison is of engines, not of thread counts. The results are also checked: every Ray run
must write the in-process run's bytes and metric values.

On a shared machine the CPU share of one run swings with the other users' load, so the engines
are measured in interleaved rounds (in-process, ray-1, ray-2, in-process, ...) and the best time
of each is compared (``--rounds``); the load average is printed with every time.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_scaling.py [--n 256] [--size 32]
        [--members 2] [--steps 32] [--chunk 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

from concilium.data.specs import SyntheticDataset
from concilium.data.synthetic import SynthConfig, generate
from concilium.jobs.engines import make_engine
from concilium.jobs.evaluate import evaluate_run
from concilium.jobs.explain import ExplainOptions, explain_run
from concilium.models import MemberCard, create_model, save_member
from concilium.store import read_metrics

METRICS = ["relevance_mass", "pointing_game", "faithfulness_correlation"]


def _files(run: Path) -> dict[str, bytes]:
    root = run / "explanations.zarr"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "/c/" in p.as_posix()}


def _values(run: Path) -> pd.DataFrame:
    keys = ["source", "method", "metric", "sample"]
    return read_metrics(run).sort_values(keys, ignore_index=True)[[*keys, "value"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="images explained and scored")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--members", type=int, default=2, help="small-cnn members")
    ap.add_argument("--steps", type=int, default=32, help="integrated gradients steps")
    ap.add_argument("--chunk", type=int, default=16, help="rows per store chunk and metric call")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best time kept")
    args = ap.parse_args()
    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    cfg = SynthConfig(n=args.n, size=args.size, num_classes=2, seed=0,
                      split_fractions=(0.0, 0.0, 1.0))
    data = generate(cfg)
    for i in range(args.members):
        torch.manual_seed(i)
        model = create_model("small-cnn", num_classes=2)
        save_member(model.eval(), MemberCard(
            member_id=f"m{i}", arch="small-cnn", num_classes=2, class_names=data.class_names,
            image_size=(args.size, args.size), seed=i, diversity="seed", epochs=0,
            gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint()),
            root / "models" / f"m{i}")
    dataset = SyntheticDataset(config=cfg.model_dump(mode="json", exclude_unset=True))
    options = ExplainOptions(
        methods=["saliency", "integrated_gradients", "gradient_shap"], split="all",
        params={"integrated_gradients": {"n_steps": args.steps}}, chunk_size=args.chunk,
        batch_size=64, seed=0)
    params = {"faithfulness_correlation": {"nr_runs": 8, "subset_size": 64}}
    units = args.members * 3 * -(-args.n // args.chunk)
    print(f"work: {args.n} images {args.size}x{args.size}, {args.members} members x 3 methods "
          f"(IG {args.steps} steps) = {units} explain chunks of {args.chunk}; metrics "
          f"{', '.join(METRICS)}")

    def timed(name: str, engine) -> float:
        run = root / name
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        explain_run(run, dataset=dataset, models=root / "models", options=options,
                    engine=engine)
        t1 = time.perf_counter()
        evaluate_run(run, METRICS, params=params, split="all", chunk=args.chunk, engine=engine)
        t2 = time.perf_counter()
        print(f"  {name:10s} explain {t1 - t0:7.1f} s  evaluate {t2 - t1:7.1f} s  "
              f"total {t2 - t0:7.1f} s  (load average {os.getloadavg()[0]:.1f})", flush=True)
        return t2 - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"  ray.init (local, once): {time.perf_counter() - t0:.1f} s")
    wall: dict[str, list[float]] = {}
    for r in range(args.rounds):
        print(f"round {r + 1}:")
        wall.setdefault("inprocess", []).append(timed("inprocess", make_engine("inprocess")))
        for workers in (1, 2):
            engine = make_engine("ray", workers=workers)  # its workers start inside the timing
            wall.setdefault(f"ray-{workers}", []).append(timed(f"ray-{workers}", engine))
            engine.close()
            same = (_files(root / f"ray-{workers}") == _files(root / "inprocess")
                    and _values(root / f"ray-{workers}").equals(_values(root / "inprocess")))
            print(f"  ray-{workers} results identical to in-process: {same}")
    best = {k: min(v) for k, v in wall.items()}
    print(f"best of {args.rounds}: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()))
    print(f"ratio ray-1 / in-process: {best['ray-1'] / best['inprocess']:.2f} (goal <= 1.1)")
    print(f"speed-up ray-2 vs ray-1:  {best['ray-1'] / best['ray-2']:.2f} (goal >= 1.7)")


if __name__ == "__main__":
    main()
