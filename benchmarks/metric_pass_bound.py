"""Every model-bound metric of the registry against its pass bound.

For each metric that calls the model (``METRICS`` entries with ``needs_model``), one call through
a wrapper that records every forward with its input shape and whether a backward reached it (the
explainer's passes included: robustness and randomisation metrics explain perturbed images or a
randomised model), and every deep copy of the model (MPRT and its variants randomise a copy).
The bound prices those passes at the per-image time of one batched forward (``no_grad``) or
forward plus backward, measured in this run at the same input shapes, plus one measured
``deepcopy`` and re-initialisation per copy. The metric's own time is the median of ``--reps``
calls (the first included: the median discards a cold one). Goal (issue 11): ours/bound <= 1.2 for every metric.

    python benchmarks/metric_pass_bound.py                 # 64 images 3x64x64, small-cnn
    python benchmarks/metric_pass_bound.py --quick         # 16 images
    python benchmarks/metric_pass_bound.py --n 8 --size 224 --quick --skip road
    python benchmarks/metric_pass_bound.py --only deletion,max_sensitivity

Parameters that set a metric's number of passes (samples, steps) are reduced from the defaults
to keep the run short (the ``params`` column shows them); the ratio is per pass, so it does not
depend on how many there are, except that fewer passes weigh the per-call overhead more.
On CPU the times are process CPU time (``--threads`` torch threads, default 1).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from typing import Any

import torch
from _passes import Counting, PassCosts, input_x_gradient, median_time
from torch import nn

from concilium.metrics import METRICS, evaluate

warnings.filterwarnings("ignore")

#: reduced pass counts (per image) for the benchmark; a metric not listed runs at its defaults
PARAMS: dict[str, dict[str, Any]] = {
    "avg_sensitivity": {"nr_samples": 10},
    "max_sensitivity": {"nr_samples": 10},
    "local_lipschitz": {"nr_samples": 10},
    "relative_input_stability": {"nr_samples": 5},
    "relative_output_stability": {"nr_samples": 5},
    "relative_representation_stability": {"nr_samples": 5},
    "continuity": {"nr_steps": 10},
    "smooth_mprt": {"nr_samples": 2},
    "faithfulness_correlation": {"nr_runs": 20},
    "faithfulness_estimate": {"features_in_step": 128},
    "sensitivity_n": {"features_in_step": 128},
    "non_sensitivity": {"step": 128},
    "pixel_flipping": {"step": 128},
    "monotonicity": {"step": 128},
    "monotonicity_correlation": {"step": 256, "nr_samples": 5},
    "infidelity": {"n_perturb_samples": 1},
    "road": {"percentages": (10, 30, 50, 70, 90)},
}
#: with --quick, fewer passes still
QUICK: dict[str, dict[str, Any]] = {
    "avg_sensitivity": {"nr_samples": 3},
    "max_sensitivity": {"nr_samples": 3},
    "local_lipschitz": {"nr_samples": 3},
    "relative_input_stability": {"nr_samples": 2},
    "relative_output_stability": {"nr_samples": 2},
    "relative_representation_stability": {"nr_samples": 2},
    "continuity": {"nr_steps": 5},
    "faithfulness_correlation": {"nr_runs": 10},
    "monotonicity_correlation": {"nr_samples": 2},
}
#: metrics whose cost is not only model passes (report only: their time includes that work)
NOT_PASS_BOUND = {"road": "noisy linear imputation (a sparse solve per image and step)"}


def scaled(name: str, params: dict[str, Any], size: int) -> dict[str, Any]:
    """Step and patch sizes set for 64x64 images, scaled to keep the passes per image."""
    if size == 64:
        return dict(params)
    out = dict(params)
    for key in ("step", "features_in_step"):
        if key in out:
            out[key] = max(1, out[key] * size * size // (64 * 64))
    defaults = METRICS.get(name).params
    if "patch_size" in defaults and defaults["patch_size"] > 1:
        out["patch_size"] = max(1, out.get("patch_size", defaults["patch_size"]) * size // 64)
    if "perturb_patch_sizes" in defaults:
        sizes = out.get("perturb_patch_sizes", defaults["perturb_patch_sizes"])
        out["perturb_patch_sizes"] = tuple(max(1, p * size // 64) for p in sizes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="images (default 64)")
    ap.add_argument("--size", type=int, default=64, help="image side (default 64)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 512 on GPU")
    ap.add_argument("--quick", action="store_true", help="16 images (unless --n), fewer samples")
    ap.add_argument("--only", default="", help="comma-separated metrics (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated metrics to leave out")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per metric, median")
    ap.add_argument("--limit", type=float, default=1.2, help="flag ratios above (default 1.2)")
    args = ap.parse_args()
    if args.quick and args.n == 64:
        args.n = 16
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bs = args.batch_size or (64 if device.type == "cpu" else 512)
    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    names = [
        n
        for n, spec in METRICS.items()
        if spec.needs_model and (not only or n in only) and n not in skip
    ]

    from concilium.models import create_model

    torch.manual_seed(0)
    net: nn.Module = create_model("small-cnn", num_classes=10).to(device).eval()
    model = Counting(net, device).eval()
    n, s = args.n, args.size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, s, s, generator=g).to(device)
    with torch.no_grad():
        labels = net(images).argmax(1)
    maps = input_x_gradient(net, images, labels)
    costs = PassCosts(net, device, reps=args.reps + 2)

    rows = []
    for name in names:
        params = dict(PARAMS.get(name, {}))
        if args.quick:
            params.update(QUICK.get(name, {}))
        params = scaled(name, params, s)
        if "batch_size" in METRICS.get(name).params:
            params["batch_size"] = bs

        def call(name: str = name, params: dict[str, Any] = params) -> object:
            return evaluate(
                name,
                maps,
                images=images,
                labels=labels,
                model=model,
                explainer=input_x_gradient,
                **params,
            )

        times, inside = [], []  # the median of the calls discards a cold first one
        for _ in range(args.reps):
            model.tally.reset()
            times.append(median_time(call, device, 1)[0])
            inside.append(model.tally.in_model())
        ours, in_model = statistics.median(times), statistics.median(inside)
        fwd, bwd = model.tally.summary()
        costs.forget()  # price this metric's passes now, beside its own timing
        bound = costs.bound(model.tally)
        shown = {k: v for k, v in params.items() if k != "batch_size"}
        rows.append(
            (
                name,
                shown,
                sum(fwd.values()),
                sum(bwd.values()),
                model.tally.copies,
                bound,
                in_model,
                ours,
            )
        )
        print(
            f"  done {name}: ours {ours:.3f}s bound {bound:.3f}s in model {in_model:.3f}s",
            flush=True,
        )

    print()
    fwd64 = costs.per_image((bs, 3, s, s), False) * 1e3
    fb64 = costs.per_image((bs, 3, s, s), True) * 1e3
    print(
        f"device {device}; {n} images 3x{s}x{s}; small-cnn "
        f"({sum(p.numel() for p in net.parameters())} params); batch {bs}; torch threads "
        f"{torch.get_num_threads()}; per image at batch {bs}: forward {fwd64:.3f} ms, "
        f"forward+backward {fb64:.3f} ms; copy+reset {costs.per_copy() * 1e3:.2f} ms"
    )
    head = (
        f"{'metric':34s} {'forwards':>9s} {'backwards':>9s} {'copies':>6s} {'bound s':>8s} "
        f"{'ours s':>8s} {'ours/bound':>10s} {'ours/in-model':>13s}  params"
    )
    print(head)
    print("-" * len(head))
    over = []
    for name, shown, f, b, c, bound, in_model, ours in rows:
        ratio = ours / bound if bound > 0 else float("inf")
        flag = ""
        if ratio > args.limit:
            flag = f"  > {args.limit}x" + (
                f" ({NOT_PASS_BOUND[name]})" if name in NOT_PASS_BOUND else ""
            )
            over.append(name)
        p = ", ".join(f"{k}={v}" for k, v in shown.items())
        print(
            f"{name:34s} {f:9d} {b:9d} {c:6d} {bound:8.3f} {ours:8.3f} {ratio:10.2f} "
            f"{ours / in_model if in_model > 0 else float('inf'):13.2f}  {p}{flag}"
        )
    print(
        "\nforwards: images pushed forward only; backwards: images pushed forward and backward "
        "(explainer calls);\nbound: those priced per image at the same batch shapes, plus "
        "copies x (deepcopy + re-initialise every layer);\nin-model: our time over the seconds "
        "spent inside those forwards and backwards in the same calls (the metric's own overhead,\n"
        "free of the machine's load and of input-dependent pass times)."
    )
    print(f"above {args.limit}x: {', '.join(over) if over else 'none'}")


if __name__ == "__main__":
    main()
