"""Time the full demo's ``committee`` stage and print its consensus study (claim 2b).

Runs the ``data`` and ``committee`` stages of ``concilium demo`` (the full demo unless
``--quick``) into a temporary folder: trains the mixed-architecture committee, explains it,
builds the consensus and scores it. Prints the stage's wall time, the consensus table (one row
per member: consensus score, held-out accuracy, own localisation) and the two claim-2b findings
as the report decides them. The committee's size, epochs and explained images can be overridden
to compare settings. Wall time on a shared machine includes waiting for the cores; CPU time
divided by the thread count is what the stages need with their cores free.

Usage:
    .venv/bin/python benchmarks/committee_stage.py                       # the full demo's committee
    .venv/bin/python benchmarks/committee_stage.py --members 5 --epochs 3 --limit 120 \
        --n-samples 16                                                   # the former committee
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from concilium.pipeline.config import parse_config
from concilium.pipeline.demo import demo_values
from concilium.pipeline.runner import run_pipeline
from concilium.pipeline.stages import STAGES
from concilium.report.summary import findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo's committee")
    parser.add_argument("--members", type=int, default=None, help="committee size")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per member")
    parser.add_argument("--limit", type=int, default=None, help="images explained")
    parser.add_argument("--n-samples", type=int, default=None, help="SmoothGrad samples")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    values = demo_values(quick=args.quick)
    committee = values["committee"]
    for key, value in (("members", args.members), ("epochs", args.epochs)):
        if value is not None:
            committee["models"][key] = value
    if args.limit is not None:
        committee["limit"] = args.limit
    if args.n_samples is not None:
        committee["params"]["smoothgrad"]["n_samples"] = args.n_samples
    config = parse_config(values)
    stages = [s for s in STAGES if s.name in ("data", "committee")]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        t0, c0 = time.perf_counter(), time.process_time()
        results = run_pipeline(config, out, stages=stages)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        seconds = {r.name: r.seconds for r in results}
        table = pd.read_parquet(out / "results" / "consensus.parquet")
    m = committee["models"]
    print(f"committee: {m['members']} members ({', '.join(m['archs'])}), {m['epochs']} epochs, "
          f"limit {committee['limit']}")
    print(f"committee stage: {seconds['committee']:.1f} s wall (data {seconds['data']:.1f} s, "
          f"total {total:.1f} s); CPU time / threads of both stages: {cpu / args.threads:.1f} s")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[["member", "method", "consensus_score", "accuracy", "localisation",
                     "similarity", "leave_one_out", "accuracy_on", "n_images"]]
              .round(4).to_string(index=False))
    for f in findings(None, {"consensus": table})[2:4]:
        print(f"{f.claim}: {f.verdict}; r = {f.estimate:+.3f} [{f.ci_low:+.3f}, "
              f"{f.ci_high:+.3f}], n = {f.n}, p = {f.p_value:.3g}")


if __name__ == "__main__":
    main()
