"""GANMEX one-vs-one experiment: does a counterfactual baseline ``G(x, t)`` beat the usual ones?

On benchmark classes that differ in exactly one part, "why class c and not t" has an exact answer:
the minimal counterfactual ``x*`` (same bird, pose, background and noise, class t's part;
``concilium.data.counterfactuals``) and the pixels where it differs from ``x``. For correctly
classified test images and a one-part partner ``t`` per image, integrated gradients explains
``logit_c - logit_t`` with the baselines ``x*`` (the ceiling), GANMEX ``G(x, t)``, zero, blur,
uniform and the training mean, scored with ``concilium.metrics.one_vs_one``:

* relevance mass and ROC-AUC of ``|map|`` on the changed pixels (higher better),
* contrast AOPC deleting towards ``x*`` in 0.5 % steps up to 20 %, MoRF - LeRF (higher better),
* cascading randomisation (Spearman, lower = more sensitive); GANMEX's baseline is made for the
  trained model, so its randomisation score is declared untestable (the reason is printed),
  unless ``--regenerate-steps K`` fine-tunes the generator K steps per randomised model.

Every seed draws its own images and contrasts; means over seeds come with Student-t intervals,
and each of the paper's claims gets a verdict (GANMEX against the best other baseline, x*
excluded). The generator's quality on the same images is printed too.

Inputs: the output folder of ``benchmarks/ganmex_training.py --out DIR`` (``--bench DIR``: data,
member, generator). ``--run RUN`` also writes the tables the report reads.

Example::

    nice .venv/bin/python experiments/ganmex_one_vs_one.py --bench /tmp/gbench32 --threads 1
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def _fmt(row, metric: str) -> str:
    mean, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if mean is None or not math.isfinite(mean):
        return f"{'n/a':>22}"
    if low is None or not math.isfinite(low):
        return f"{mean:>8.3f}{'':>14}"
    return f"{mean:>8.3f} [{low:6.3f},{high:6.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True,
                        help="output folder of benchmarks/ganmex_training.py")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--limit", type=int, default=48, help="images per seed")
    parser.add_argument("--methods", default="integrated_gradients")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--step", type=float, default=0.5, help="AOPC step, percent")
    parser.add_argument("--max-percent", type=float, default=20.0)
    parser.add_argument("--no-mprt", action="store_true", help="skip the randomisation test")
    parser.add_argument("--regenerate-steps", type=int, default=0,
                        help="fine-tune the generator this many steps against every randomised "
                        "model (0: GANMEX's randomisation score is declared untestable)")
    parser.add_argument("--pairs", default="one_part", choices=["one_part", "all"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=None, help="write per-image scores here")
    parser.add_argument("--run", type=Path, default=None,
                        help="write the tables to RUN/results/one_vs_one*.parquet (the report)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import pandas as pd

    from concilium.data.folder import load_folder
    from concilium.jobs.one_vs_one import OneVsOneOptions, member_scores
    from concilium.metrics.one_vs_one import (
        ONE_VS_ONE_METRICS,
        UNTESTABLE,
        claim_verdicts,
        summarise_one_vs_one,
    )
    from concilium.models.members import load_member
    from concilium.store import write_table

    model, card = load_member(args.bench / "member")
    ds = load_folder(args.bench / "data")
    if ds.fingerprint() != card.data_fingerprint:
        raise ValueError(f"the member in {args.bench} was trained on other data")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    params = {m: {"n_steps": args.ig_steps} for m in methods if m == "integrated_gradients"}
    options = OneVsOneOptions(methods=methods, params=params,
                              seeds=[int(s) for s in args.seeds.split(",")], limit=args.limit,
                              pairs=args.pairs, step=args.step, max_percent=args.max_percent,
                              randomisation=not args.no_mprt,
                              regenerate_steps=args.regenerate_steps)
    rows = member_scores(model, args.bench / "generator", ds, options, classifier_card=card)
    maps, gen = rows[rows["method"] != "generator"], rows[rows["method"] == "generator"]
    quality = summarise_one_vs_one(gen).iloc[0]
    print(f"{len(options.seeds)} seeds x up to {options.limit} correctly classified test images "
          f"({args.pairs} pairs); intervals: 95% Student-t across the seeds' means")
    print("generator on these images: " + ", ".join(
        f"{m} {_fmt(quality, m).strip()}" for m in ("success", "l1", "counterfactual_l1",
                                                     "in_region")))
    summary = summarise_one_vs_one(maps)
    metrics = [m for m in ONE_VS_ONE_METRICS if m in summary.columns]
    print(f"\n{'method':<22} {'baseline':<8} " + " ".join(f"{m:>22}" for m in metrics))
    for _, row in summary.iterrows():
        print(f"{row['method']:<22} {row['baseline']:<8} "
              + " ".join(_fmt(row, m) for m in metrics))
    print("(higher is better except aopc_lerf and mprt; x* is the exact counterfactual, the "
          "ceiling)")
    verdicts = claim_verdicts(maps)
    print("\nPaper claims (GANMEX against the best other baseline, x* excluded):")
    for _, v in verdicts.iterrows():
        if v["verdict"] == "untestable":
            print(f"- {v['method']}: {v['claim']}: UNTESTABLE ({UNTESTABLE})")
            continue
        print(f"- {v['method']}: {v['claim']}: {v['verdict'].upper()} (ganmex "
              f"{v['candidate']:.3f} vs {v['best_other']} {v['best_other_value']:.3f}; "
              f"difference {v['diff']:+.3f} [{v['diff_low']:+.3f}, {v['diff_high']:+.3f}])")
    if args.run:
        summary["member"] = summary["source"] = card.member_id
        for name, table in (("one_vs_one", summary), ("one_vs_one_claims", verdicts),
                            ("one_vs_one_generator", summarise_one_vs_one(gen))):
            print(f"table: {write_table(args.run, name, table)}")
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"per-image scores: {args.csv}")


if __name__ == "__main__":
    main()
