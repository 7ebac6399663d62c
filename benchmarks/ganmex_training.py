"""GANMEX training speed on this CPU: how long until >= 90% target success on the benchmark?

Generates the ground-truth benchmark (default 32 px, the SynthConfig default of 8 classes),
trains a small-cnn classifier (or loads a member with --model), then trains a GANMEX generator
against it and prints the validation curve: step, seconds, target success rate
``C(G(x, t)) = t`` on the val split, mean L1 ``|x - G(x, t)|``, and the two realism proxies
(critic gap, feature distance to real images of class t). The claim under test (issue 7) is
">= 90% target success within 15 minutes of GANMEX training on this CPU".

The run stops at the first checkpoint reaching --target, or after --steps, or once --max-seconds
of GANMEX training have passed; if the target was not reached, it says so and extrapolates the
15-minute budget in steps from the measured seconds per step (an extrapolation, not a result).

Example (the figures quoted in docs/ganmex.md)::

    .venv/bin/python benchmarks/ganmex_training.py --size 32 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="image size (32 or 64)")
    parser.add_argument("--n", type=int, default=2000, help="benchmark images (all splits)")
    parser.add_argument("--classes", type=int, default=8, help="benchmark classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder dataset to use instead of generating the benchmark",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="member folder to use instead of training a small-cnn",
    )
    parser.add_argument("--clf-epochs", type=int, default=15, help="classifier epochs")
    parser.add_argument("--steps", type=int, default=2000, help="GANMEX steps at most")
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-g", type=float, default=2e-5)
    parser.add_argument("--lr-d", type=float, default=1e-4)
    parser.add_argument("--l-cls", type=float, default=1000.0)
    parser.add_argument("--l-sim", type=float, default=100.0)
    parser.add_argument("--l-rec", type=float, default=0.0)
    parser.add_argument(
        "--output",
        default="tanh",
        choices=["tanh", "sigmoid", "residual"],
        help="generator output mapping (tanh = StarGAN/reference)",
    )
    parser.add_argument("--target", type=float, default=0.9, help="target success rate")
    parser.add_argument(
        "--keep-training",
        action="store_true",
        help="go on after reaching --target (until --steps or --max-seconds)",
    )
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop GANMEX training after this long (default: the budget)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder: OUT/generator (and OUT/member); default a temp dir",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from concilium.data.folder import load_folder, write_folder
    from concilium.data.synthetic import SynthConfig, generate
    from concilium.ganmex import GanmexOptions, card_hash, train_ganmex
    from concilium.models.architectures import create_model
    from concilium.models.fit import evaluate_accuracy, train_member
    from concilium.models.members import MemberCard, load_member, save_member

    budget = 60.0 * args.budget_minutes
    max_seconds = args.max_seconds if args.max_seconds is not None else budget
    t0 = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="ganmex-bench-"))
    if args.data is not None:
        ds = load_folder(args.data)
    else:  # keep the data next to the models: the experiment reuses exactly these images
        ds = generate(
            SynthConfig(n=args.n, size=args.size, num_classes=args.classes, seed=args.seed)
        )
        write_folder(ds, out / "data", overwrite=True)
    print(
        f"benchmark: {len(ds)} images {ds.image_size[0]}x{ds.image_size[1]}, "
        f"{ds.num_classes} classes ({time.perf_counter() - t0:.1f} s, "
        f"{args.data or out / 'data'}); torch threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )
    if args.model is not None:
        classifier, card = load_member(args.model, device=args.device)
        hash_ = card_hash(card)
        print(f"classifier: member {args.model} ({card.arch}), val accuracy {card.val_accuracy}")
    else:
        t1 = time.perf_counter()
        torch.manual_seed(args.seed)
        classifier = create_model("small-cnn", num_classes=ds.num_classes)
        result = train_member(
            classifier, ds, epochs=args.clf_epochs, seed=args.seed, device=args.device
        )
        hash_ = None
        print(
            f"classifier: small-cnn, {args.clf_epochs} epochs in "
            f"{time.perf_counter() - t1:.1f} s, val accuracy {result.val_accuracy:.3f}"
        )
    train, val = ds.subset("train"), ds.subset("val")
    test = ds.subset("test")
    test_acc, _ = evaluate_accuracy(classifier, test.images, test.labels, device=args.device)
    print(f"classifier test accuracy {test_acc:.3f}")

    options = GanmexOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        lr_g=args.lr_g,
        lr_d=args.lr_d,
        l_cls=args.l_cls,
        l_sim=args.l_sim,
        l_rec=args.l_rec,
        checkpoint_every=args.checkpoint_every,
        output=args.output,
        seed=args.seed,
    )
    if args.model is None:  # keep the classifier next to the generator (for the experiment)
        card = MemberCard(
            member_id="m0",
            arch="small-cnn",
            num_classes=ds.num_classes,
            class_names=ds.class_names,
            image_size=ds.image_size,
            seed=args.seed,
            diversity="seed",
            val_accuracy=result.val_accuracy,
            epochs=args.clf_epochs,
            gradcam_layer=classifier.gradcam_layer,
            data_fingerprint=ds.fingerprint(),
        )
        save_member(classifier, card, out / "member")
        hash_ = card_hash(card)
    print("GANMEX options: " + ", ".join(f"{k}={v}" for k, v in options.model_dump().items()))
    generator_dir = out / "generator"
    print(
        f"{'step':>6} {'seconds':>8} {'success':>8} {'L1':>7} {'critic gap':>11} "
        f"{'feat dist':>10} {'(input)':>8}"
    )
    reached: list = []

    class _Stop(Exception):
        pass

    def on_validation(rec) -> None:
        print(
            f"{rec.step:>6} {rec.seconds:>8.1f} {rec.success_rate:>8.1%} {rec.l1:>7.4f} "
            f"{rec.critic_gap:>+11.3f} {rec.feature_distance:>10.4f} "
            f"{rec.feature_distance_input:>8.4f}",
            flush=True,
        )
        if rec.success_rate >= args.target and not reached:
            reached.append(rec)
        if rec.seconds >= max_seconds:
            raise _Stop

    history: list = []
    try:
        _, history = train_ganmex(
            classifier,
            train.images,
            train.labels,
            out_dir=generator_dir,
            class_names=ds.class_names,
            options=options,
            val_images=val.images,
            val_labels=val.labels,
            classifier_card_hash=hash_,
            device=args.device,
            resume=False,
            on_validation=on_validation,
            until_success=None if args.keep_training else args.target,
        )
    except _Stop:
        from concilium.ganmex import read_history

        history = read_history(generator_dir / "validation.csv")
    last = history[-1]
    per_step = last.seconds / last.step
    print(
        f"measured: {per_step:.3f} s per GANMEX step (batch {args.batch_size}, "
        f"{args.size} px), validation included"
    )
    if reached:
        rec = reached[0]
        verdict = "YES" if rec.seconds <= budget else "NO (reached, but over budget)"
        print(
            f"target success >= {args.target:.0%} reached at step {rec.step} after "
            f"{rec.seconds:.1f} s of GANMEX training (budget {budget:.0f} s): {verdict}"
        )
    else:
        budget_steps = int(budget / per_step)
        print(
            f"target success >= {args.target:.0%} NOT reached in {last.step} steps / "
            f"{last.seconds:.1f} s (best {max(r.success_rate for r in history):.1%}); "
            f"at {per_step:.3f} s/step the {budget:.0f} s budget allows about {budget_steps} "
            "steps (extrapolated, not measured)"
        )
    print(f"generator: {generator_dir}" + ("" if args.model else f", classifier: {out / 'member'}"))


if __name__ == "__main__":
    main()
