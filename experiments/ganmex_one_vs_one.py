"""GANMEX one-vs-one experiment: does a counterfactual baseline ``G(x, t)`` beat the usual ones?

On benchmark classes that differ in exactly one part (e.g. "short beak, plain wings" vs "short
beak, striped wings"), the question "why class c and not t" has a known answer: the differing
part, ``ImageDataset.difference_masks(t)``. For each correctly classified test image of such a
class, with ``t`` a one-part-different class, we explain class ``c`` with integrated gradients
and DeepLIFT against the zero, blur, uniform, mean (training-set mean image) and GANMEX
baselines, and score the maps with ``concilium.metrics.evaluate``:

* relevance mass and ROC-AUC of ``|map|`` on the difference mask (localisation; higher better),
* deletion AOPC, MoRF (higher better) and LeRF (lower better), deleting to ``--deletion-baseline``
  (the same replacement for every explanation, so only the ranking of pixels differs),
* sparseness (Gini of ``|map|``; higher better),
* cascading model-parameter randomisation (MPRT, top-down, Spearman of ``|map|``, mean over
  layers; lower = the maps change more when layers are re-initialised, the GANMEX claim). The
  GANMEX baseline stays the one generated for the trained model (it is cached by image).

Then it prints, per claim of Shih, Tien and Karnin (ICML 2021), whether GANMEX was the best
baseline for each method here, with the numbers.

Inputs: the data, member and generator written by ``benchmarks/ganmex_training.py --out DIR``
(``--bench DIR``), or ``--data FOLDER --model MEMBER --gen GEN`` (the data fingerprint is checked
against the member card).

Example::

    .venv/bin/python experiments/ganmex_one_vs_one.py --bench /tmp/gbench32 --limit 48
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import torch

METRICS = (
    # name, column label, scored on |map|
    ("relevance_mass", "mass", True),
    ("auc", "AUC", True),
    ("aopc", "AOPC MoRF", False),
    ("aopc_lerf", "AOPC LeRF", False),
    ("sparseness", "sparse", True),
    ("mprt", "MPRT", True),
)
BASELINES = ("zero", "blur", "uniform", "mean", "ganmex")


def one_part_partners(class_part_values: list[dict[str, str]]) -> dict[int, list[int]]:
    """For each class, the classes whose definition differs in exactly one part."""
    out: dict[int, list[int]] = {}
    for c, a in enumerate(class_part_values):
        for t, b in enumerate(class_part_values):
            differing = [p for p in set(a) | set(b) if a.get(p) != b.get(p)]
            if t != c and len(differing) == 1:
                out.setdefault(c, []).append(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=None,
                        help="output folder of benchmarks/ganmex_training.py (member + generator)")
    parser.add_argument("--model", type=Path, default=None, help="member folder")
    parser.add_argument("--gen", type=Path, default=None, help="GANMEX generator folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder dataset the member was trained on (default BENCH/data)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of contrasts")
    parser.add_argument("--limit", type=int, default=48, help="images explained (at most)")
    parser.add_argument("--methods", default="integrated_gradients,deeplift")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--deletion-baseline", default="black",
                        help="replacement of deleted pixels for AOPC: black, zero, blur, mean, "
                        "uniform, or ganmex (delete towards G(x, t))")
    parser.add_argument("--aopc-step", type=float, default=5.0, help="percent of pixels per step")
    parser.add_argument("--no-mprt", action="store_true", help="skip the randomisation test")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=None, help="write per-image scores here")
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory: write the table to RUN/results/one_vs_one.csv "
                        "(the report's one-vs-one section)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or (args.bench / "member" if args.bench else None)
    gen_dir = args.gen or (args.bench / "generator" if args.bench else None)
    data_dir = args.data or (args.bench / "data" if args.bench else None)
    if model_dir is None or gen_dir is None or data_dir is None:
        parser.error("give --bench DIR, or --model MEMBER, --gen GEN and --data FOLDER")

    from concilium.data.folder import load_folder
    from concilium.explain import MeanBaseline, explain
    from concilium.ganmex import GanmexBaseline
    from concilium.metrics import METRICS as REGISTRY
    from concilium.metrics import evaluate
    from concilium.models.members import load_member

    model, card = load_member(model_dir)
    ds = load_folder(data_dir)
    if ds.fingerprint() != card.data_fingerprint:
        raise ValueError(
            f"the member in {model_dir} was trained on other data (fingerprint "
            f"{card.data_fingerprint}, {data_dir} has {ds.fingerprint()}); pass the --data "
            "folder it was trained on"
        )
    partners = one_part_partners(ds.class_part_values)
    test = ds.subset("test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    rng = random.Random(args.seed)
    rows, contrast = [], []
    for i, (c, p) in enumerate(zip(test.labels.tolist(), pred.tolist(), strict=True)):
        if c in partners and c == p:
            rows.append(i)
            contrast.append(rng.choice(partners[c]))
    rows, contrast = rows[:args.limit], contrast[:args.limit]
    if not rows:
        raise ValueError("no correctly classified test image has a one-part partner class")
    data = test.subset(rows)
    images, labels, t = data.images, data.labels, torch.tensor(contrast)
    masks = data.difference_masks(t)
    pairs = sorted({(c, tt) for c, tt in zip(labels.tolist(), contrast, strict=True)})
    print(f"{len(rows)} correctly classified test images ({ds.image_size[0]} px) of classes with a "
          f"one-part partner; pairs (c, t): {pairs}; difference mask covers "
          f"{masks.float().mean():.1%} of the pixels on average")

    ganmex = GanmexBaseline(gen_dir, classifier_card=model_dir)
    bound = ganmex.for_contrast(images, t)
    with torch.no_grad():
        b = ganmex(images, t)
        flipped = (model(b).argmax(1) == t).float().mean().item()
    print(f"GANMEX baselines: C(G(x, t)) = t for {flipped:.1%} of the images; mean |x - G(x, t)| "
          f"{(images - b).abs().mean():.4f}")
    train_mean = ds.subset("train").images.mean(0)
    providers = {"zero": "zero", "blur": "blur", "uniform": f"uniform:seed={args.seed}",
                 "mean": MeanBaseline(train_mean), "ganmex": bound}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    per_image = []
    metrics = [m for m in METRICS if not (m[0] == "mprt" and args.no_mprt)]
    deletion = b if args.deletion_baseline == "ganmex" else args.deletion_baseline
    metric_params = {
        "aopc": {"baseline": deletion, "step": args.aopc_step},
        "aopc_lerf": {"baseline": deletion, "step": args.aopc_step},
        "mprt": {"order": "top_down", "similarity": "spearman"},
    }
    for method in methods:
        params = {"n_steps": args.ig_steps} if method == "integrated_gradients" else {}
        for name in BASELINES:
            baseline = providers[name]

            def explainer(m, x, y, baseline=baseline, method=method, params=params):
                return explain(m, x, y, method=method, baseline=baseline, **params)

            maps = explainer(model, images, labels)
            row = {}
            for metric, _, use_abs in metrics:
                scores = evaluate(metric, maps.abs() if use_abs else maps, images=images,
                                  labels=labels, masks=masks, model=model,
                                  explainer=explainer, **metric_params.get(metric, {}))
                valid = scores[~torch.isnan(scores)]
                mean = valid.mean().item() if len(valid) else float("nan")
                sem = (valid.std().item() / math.sqrt(len(valid))) if len(valid) > 1 else 0.0
                row[metric] = (mean, sem)
                per_image += [(method, name, metric, i, v) for i, v in
                              enumerate(scores.tolist())]
            table[(method, name)] = row
            print(f"  {method:<22} {name:<8} " + "  ".join(
                f"{m}={row[m][0]:.4f}" for m in row), flush=True)

    print()
    print(f"{'method':<22} {'baseline':<8} " + " ".join(f"{label:>16}" for _, label, _ in
                                                        metrics))
    for (method, name), row in table.items():
        print(f"{method:<22} {name:<8} " + " ".join(
            f"{row[m][0]:>9.4f}±{row[m][1]:<6.4f}" for m, *_ in metrics))
    print("(mean ± standard error over images; higher is better for mass, AUC, AOPC MoRF, "
          "sparse; lower for AOPC LeRF and MPRT; AOPC deletes to "
          f"{args.deletion_baseline!r} in {args.aopc_step:g}% steps and scores softmax(c))")

    claims = {
        "relevance_mass": "better localisation of the class-difference region (relevance mass)",
        "auc": "better localisation of the class-difference region (ROC-AUC)",
        "aopc": "better deletion AOPC, MoRF order",
        "aopc_lerf": "better deletion AOPC, LeRF order",
        "sparseness": "sparser maps",
        "mprt": "more sensitive to cascading randomisation (lower similarity)",
    }
    print("\nPaper claims (GANMEX best of the five baselines?):")
    for metric, _, _ in metrics:
        hib = REGISTRY.get(metric).higher_is_better
        verdicts = []
        for method in methods:
            values = {name: table[(method, name)][metric][0] for name in BASELINES}
            others = {k: v for k, v in values.items() if k != "ganmex"}
            best_other = (max if hib else min)(others, key=others.get)
            g, o = values["ganmex"], others[best_other]
            held = (g > o) if hib else (g < o)
            verdicts.append(f"{method}: {'HELD' if held else 'did NOT hold'} (ganmex {g:.4f} vs "
                            f"best other {best_other} {o:.4f})")
        print(f"- {claims[metric]}: " + "; ".join(verdicts))
    if args.run:
        import pandas as pd

        results = args.run / "results"
        results.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame([
            {"baseline": name, "source": method, "n": len(rows),
             **{m: row[m][0] for m, *_ in metrics}, **{f"{m}_sem": row[m][1] for m, *_ in metrics}}
            for (method, name), row in table.items()
        ])
        frame.to_csv(results / "one_vs_one.csv", index=False)
        print(f"table: {results / 'one_vs_one.csv'}")
    if args.csv:
        import csv

        with args.csv.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["method", "baseline", "metric", "image", "value"])
            writer.writerows(per_image)
        print(f"per-image scores: {args.csv}")


if __name__ == "__main__":
    main()
