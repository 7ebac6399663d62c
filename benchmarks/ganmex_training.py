"""GANMEX on the benchmark: does the generator find minimal counterfactuals within the budget?

Generates the ground-truth benchmark (default 32 px, 8 classes), trains a small-cnn classifier
(or loads a member with --model), then trains a GANMEX generator against it. At every checkpoint
it validates on held-out (val) images against the exact minimal counterfactuals ``x*`` of the
benchmark (``concilium.data.counterfactuals``): target success ``C(G(x, t)) = t``,
``|x - G|``, ``|G - x*|`` and the share of ``|x - G|`` inside the pixels where ``x`` and ``x*``
differ. At the end it prints the issue's goal figures, each with its threshold:

* target success >= 90 %,
* ``|x - G| <= 0.02`` per pixel,
* at least 30 % of ``|x - G|`` inside the changed region,
* the relevance mass of integrated gradients on ``logit_c - logit_t`` with the GANMEX baseline
  inside the changed region at least 2x the mass with the blur baseline (x* as ceiling),

all on the val images the validation uses (their fixed targets), after at most
``--budget-minutes`` of GANMEX training. Seconds are wall time of this process; the CPU seconds
are printed beside them (on a shared machine the two differ).

Example (the figures in docs/ganmex.md; ``--preset reference`` for the reference's settings)::

    nice .venv/bin/python benchmarks/ganmex_training.py --threads 1 --out /tmp/gbench32
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

OVERRIDES = (
    # flag, option, type
    ("--lr-g", "lr_g", float), ("--lr-d", "lr_d", float), ("--beta1", "beta1", float),
    ("--n-critic", "n_critic", int), ("--l-cls", "l_cls", float), ("--l-sim", "l_sim", float),
    ("--l-rec", "l_rec", float), ("--kappa", "kappa", float),
    ("--target-loss", "target_loss", str), ("--similarity", "similarity", str),
    ("--same-class", "same_class", str), ("--output", "output", str),
    ("--base-channels", "base_channels", int), ("--batch-size", "batch_size", int),
)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="image size (32 or 64)")
    parser.add_argument("--n", type=int, default=2000, help="benchmark images (all splits)")
    parser.add_argument("--classes", type=int, default=8, help="benchmark classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None,
                        help="member folder to use instead of training a small-cnn (its data "
                        "must be the benchmark generated with these --size/--n/--classes/--seed)")
    parser.add_argument("--clf-epochs", type=int, default=15, help="classifier epochs")
    parser.add_argument("--preset", default="default", help="GANMEX preset: default, reference")
    for flag, _, kind in OVERRIDES:
        parser.add_argument(flag, type=kind, default=None, help="override the preset")
    parser.add_argument("--steps", type=int, default=4000, help="GANMEX steps at most")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--until-success", type=float, default=None,
                        help="stop at the first checkpoint with this success (and --until-l1)")
    parser.add_argument("--until-l1", type=float, default=None,
                        help="stop once |x - G| is at most this (with success >= 0.9)")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--cpu-budget", action="store_true",
                        help="count the budget in CPU seconds of this process (fair on a shared "
                        "machine with --threads 1) instead of wall seconds")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder: OUT/data, OUT/member, OUT/generator (default a temp "
                        "dir); an existing OUT/member is reused")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from concilium.data import counterfactuals, write_folder
    from concilium.data.synthetic import SynthConfig, generate
    from concilium.ganmex import (
        GanmexBaseline,
        GanmexOptions,
        card_hash,
        read_history,
        train_ganmex,
        validation_targets,
    )
    from concilium.metrics.contrast import PairedBaseline, contrast_explain
    from concilium.metrics.localisation import relevance_mass
    from concilium.models.architectures import create_model
    from concilium.models.fit import evaluate_accuracy, train_member
    from concilium.models.members import MemberCard, load_member, save_member

    budget = 60.0 * args.budget_minutes
    t0 = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="ganmex-bench-"))
    ds = generate(SynthConfig(n=args.n, size=args.size, num_classes=args.classes, seed=args.seed))
    if not (out / "data").is_dir():
        write_folder(ds, out / "data", overwrite=True)
    print(f"benchmark: {len(ds)} images {ds.image_size[0]} px, {ds.num_classes} classes "
          f"({time.perf_counter() - t0:.1f} s); torch threads {torch.get_num_threads()}, "
          f"device {args.device}")
    member_dir = args.model or out / "member"
    if (member_dir / "card.json").is_file():
        classifier, card = load_member(member_dir, device=args.device)
        if card.data_fingerprint != ds.fingerprint():
            raise ValueError(f"member {member_dir} was trained on other data; pass the same "
                             "--size/--n/--classes/--seed or another --out")
        print(f"classifier: member {member_dir} ({card.arch}), val accuracy {card.val_accuracy}")
    else:
        t1 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            classifier = create_model("small-cnn", num_classes=ds.num_classes)
        result = train_member(classifier, ds, epochs=args.clf_epochs, seed=args.seed,
                              device=args.device)
        card = MemberCard(
            member_id="m0", arch="small-cnn", num_classes=ds.num_classes,
            class_names=ds.class_names, image_size=ds.image_size, seed=args.seed,
            diversity="seed", val_accuracy=result.val_accuracy, epochs=args.clf_epochs,
            gradcam_layer=classifier.gradcam_layer, data_fingerprint=ds.fingerprint(),
        )
        save_member(classifier, card, member_dir)
        print(f"classifier: small-cnn, {args.clf_epochs} epochs in "
              f"{time.perf_counter() - t1:.1f} s, val accuracy {result.val_accuracy:.3f}")
    classifier.eval()
    train, val, test = ds.subset("train"), ds.subset("val"), ds.subset("test")
    test_acc, _ = evaluate_accuracy(classifier, test.images, test.labels, device=args.device)
    print(f"classifier test accuracy {test_acc:.3f}")

    overrides = {opt: getattr(args, flag[2:].replace("-", "_")) for flag, opt, _ in OVERRIDES}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "same_class" in overrides and overrides["same_class"] != "uniform":
        overrides["same_class"] = float(overrides["same_class"])
    options = GanmexOptions.preset(args.preset, steps=args.steps, seed=args.seed,
                                   checkpoint_every=args.checkpoint_every,
                                   val_size=args.val_size, **overrides)
    print(f"GANMEX preset {args.preset}: " + ", ".join(
        f"{k}={v}" for k, v in options.model_dump().items()))
    val_part = val.subset(list(range(min(args.val_size, len(val)))))
    generator_dir = out / "generator"
    print(f"{'step':>6} {'wall s':>7} {'cpu s':>7} {'success':>8} {'|x-G|':>7} {'|G-x*|':>7} "
          f"{'in region':>9} {'critic gap':>10}")
    cpu0 = _cpu_seconds()

    class _Stop(Exception):
        pass

    def on_validation(rec) -> None:
        print(f"{rec.step:>6} {rec.seconds:>7.1f} {_cpu_seconds() - cpu0:>7.1f} "
              f"{rec.success_rate:>8.1%} {rec.l1:>7.4f} {rec.counterfactual_l1:>7.4f} "
              f"{rec.in_region:>9.1%} {rec.critic_gap:>+10.3f}", flush=True)
        if (_cpu_seconds() - cpu0 if args.cpu_budget else rec.seconds) >= budget:
            raise _Stop

    try:
        _, history = train_ganmex(
            classifier, train.images, train.labels, out_dir=generator_dir,
            class_names=ds.class_names, options=options, val_images=val_part.images,
            val_labels=val_part.labels,
            val_counterfactuals=lambda t: counterfactuals(val_part, t),
            classifier_card_hash=card_hash(card), device=args.device, resume=True,
            on_validation=on_validation, until_success=args.until_success,
            until_l1=args.until_l1,
        )
    except _Stop:
        history = read_history(generator_dir / "validation.csv")
    last = history[-1]
    print(f"measured: {last.seconds / last.step:.3f} wall s per GANMEX step (batch "
          f"{options.batch_size}, {args.size} px), validation included")

    # -- the goal figures on the validation images and targets --------------------------------
    x, c = val_part.images, val_part.labels
    t = validation_targets(c, ds.num_classes, seed=options.seed)
    x_star = counterfactuals(val_part, t)
    changed = (x_star != x).any(1)
    with torch.no_grad():
        right = classifier(x).argmax(1) == c
    x, c, t, x_star, changed = x[right], c[right], t[right], x_star[right], changed[right]
    ganmex = GanmexBaseline(generator_dir, classifier_card=card)
    masses = {}
    for name, baseline in (("ganmex", ganmex), ("blur", "blur"),
                           ("x*", PairedBaseline(x, x_star, name="x*"))):
        maps = contrast_explain(classifier, x, c, t, method="integrated_gradients",
                                baseline=baseline, method_params={"n_steps": args.ig_steps})
        masses[name] = relevance_mass(maps.abs(), masks=changed).nanmean().item()
    ratio = masses["ganmex"] / masses["blur"]
    goals = [
        ("target success >= 90%", f"{last.success_rate:.1%}", last.success_rate >= 0.9),
        ("|x - G| <= 0.02", f"{last.l1:.4f}", last.l1 <= 0.02),
        (">= 30% of |x - G| in the changed region", f"{last.in_region:.1%}",
         last.in_region >= 0.3),
        ("IG-contrast mass on the changed region >= 2x blur's",
         f"{masses['ganmex']:.3f} vs blur {masses['blur']:.3f} = {ratio:.2f}x "
         f"(x* {masses['x*']:.3f})", ratio >= 2.0),
    ]
    clock = "CPU" if args.cpu_budget else "wall"
    print(f"\ngoal figures at step {last.step} ({last.seconds:.0f} s wall, "
          f"{_cpu_seconds() - cpu0:.0f} s CPU; budget {budget:.0f} s {clock}; "
          f"|G - x*| {last.counterfactual_l1:.4f}; IG masses over the "
          f"{int(right.sum())} correctly classified of {len(right)} val images):")
    for what, value, held in goals:
        print(f"  {'REACHED' if held else 'not reached':<12} {what}: {value}")
    print(f"generator: {generator_dir}, classifier: {member_dir}")


if __name__ == "__main__":
    main()
