"""Throughput of every attribution method against its lower bound, with no tuning by the user.

For each method: seconds per image, model passes per image, the measured batched forward+backward
(gradient methods) or forward (perturbation methods) time per image at the same batch size, and
the ratio to the bound ``passes x that time``. Then the five methods of the ensembles paper
(saliency, input x gradient, integrated gradients, GradientSHAP, GradCAM) through
``explain_many`` against ``bound(IG) + bound(GradientSHAP) + one pass``, and ``M`` ensemble
members against ``M x`` one member.

Goals (issue 3): gradient methods <= 1.15x, perturbation methods <= 1.3x, five methods <= 1.1x,
M members <= M x one member. The one-off batching probe is timed separately (it is cached per
architecture and input shape, so the members of an ensemble share it).

Both wall-clock and process CPU time are measured; on a shared machine the wall time includes
waiting for a core, so the ratios use CPU time on CPU (wall time on CUDA).

Usage:
    .venv/bin/python benchmarks/explain_throughput.py            # 64 images of 64x64, 11 members
    .venv/bin/python benchmarks/explain_throughput.py --quick    # 16 images, 3 members, fewer methods
    .venv/bin/python benchmarks/explain_throughput.py --methods saliency,integrated_gradients
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from concilium.explain import METHODS, explain, explain_many, method_params, probe

PAPER_FIVE = ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "gradcam")
QUICK_METHODS = (
    "saliency",
    "integrated_gradients",
    "gradient_shap",
    "gradcam",
    "occlusion",
    "lime",
)


def make_model(seed: int, num_classes: int) -> nn.Module:
    """The ~98k-parameter ``small-cnn`` of concilium.models (a local copy if it is missing)."""
    torch.manual_seed(seed)
    try:
        from concilium.models import create_model

        return create_model("small-cnn", num_classes=num_classes).eval()
    except (ImportError, AttributeError, ValueError):
        from concilium.models.base import ConciliumNet

        layers: list[nn.Module] = []
        ch = 3
        for i, out in enumerate((16, 32, 64, 128)):
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            ch = out
        backbone = nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return ConciliumNet(
            backbone, feature_dim=128, num_classes=num_classes, gradcam_layer="backbone.0.12"
        ).eval()


class Clock:
    """Wall and CPU seconds of a block (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], object], repeats: int = 1) -> tuple[float, float]:
        """Median wall and CPU seconds over ``repeats`` runs."""
        walls, cpus = [], []
        for _ in range(repeats):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images explained per call")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--members", type=int, default=11, help="ensemble members")
    parser.add_argument("--methods", default=None, help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method (median)")
    parser.add_argument("--quick", action="store_true", help="16 images, 3 members, 6 methods")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.members = 16, 3
        args.methods = args.methods or ",".join(QUICK_METHODS)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = Clock(device)
    use = 0 if device.type == "cuda" else 1  # index into (wall, cpu) used for ratios
    methods = args.methods.split(",") if args.methods else METHODS.names()
    for m in methods:
        METHODS.get(m)

    model = make_model(0, 10).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    n, hw = args.batch, (args.size, args.size)
    with torch.no_grad():
        # The predicted classes, resolved once as a store run does; target="pred" would add one
        # batched forward per call.
        targets = model(images).argmax(1)
    print(
        f"small-cnn ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{n} images of {args.size}x{args.size}, {args.threads} thread(s), {device}"
    )

    # One-off probe (cached per architecture and shape; shared by every method and member).
    t_probe = clock(lambda: probe(model, images))
    plan = probe(model, images)
    print(
        f"batching probe: {t_probe[0]:.2f} s wall once; rows/call fwd+bwd {plan.rows_grad}, "
        f"fwd {plan.rows_fwd}, memory cap {plan.max_rows} rows"
    )

    # Bounds: one batched forward+backward / forward at the same batch size.
    x = images.clone()

    def fwd_bwd() -> None:
        xr = x.detach().requires_grad_(True)
        out = model(xr)
        torch.autograd.grad(out[:, 0].sum(), xr)

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def unit_costs() -> tuple[list[float], list[float]]:
        """Batched fwd+bwd and fwd seconds per image (median of 3), measured now."""
        return ([t / n for t in clock(fwd_bwd, repeats=3)], [t / n for t in clock(fwd, repeats=3)])

    fwd_bwd()
    t_fb, t_f = unit_costs()
    print(
        f"batched fwd+bwd {t_fb[use] * 1e3:.3f} ms/image, fwd {t_f[use] * 1e3:.3f} ms/image "
        f"({'cpu' if use else 'wall'} time; wall {t_fb[0] * 1e3:.3f} / {t_f[0] * 1e3:.3f}); "
        "re-measured before every method"
    )

    print(
        f"\n{'method':22s} {'passes':>6s} {'ms/image':>9s} {'bound ms':>9s} {'ratio':>6s} "
        f"{'goal':>5s}  wall ms/image"
    )
    for m in methods:
        spec = METHODS.get(m)
        p = spec.params(**method_params(m))
        passes = spec.passes(p, hw)
        t_fb, t_f = unit_costs()
        unit = t_fb if spec.kind == "gradient" else t_f
        gen = torch.Generator().manual_seed(1)
        # warm-up on 2 images: lazy imports (scikit-learn for LIME/KernelSHAP), allocator
        explain(model, images[:2], targets[:2], method=m, generator=gen)
        t = clock(
            lambda m=m, gen=gen: explain(model, images, targets, method=m, generator=gen),
            repeats=args.repeats,
        )
        per = [v / n for v in t]
        bound = passes * unit[use]
        goal = {"gradient": 1.15, "perturbation": 1.3}.get(spec.kind)
        ratio = per[use] / bound if bound else float("nan")
        print(
            f"{m:22s} {passes:6d} {per[use] * 1e3:9.2f} {bound * 1e3:9.2f} {ratio:6.2f} "
            f"{goal or '-':>5}  {per[0] * 1e3:.2f}",
            flush=True,
        )

    five = {name: {} for name in PAPER_FIVE}
    t_fb, t_f = unit_costs()
    ig = METHODS.get("integrated_gradients").passes(
        METHODS.get("integrated_gradients").params(), hw
    )
    gs = METHODS.get("gradient_shap").passes(METHODS.get("gradient_shap").params(), hw)
    bound5 = (ig + gs + 1) * t_fb[use]
    t5 = clock(
        lambda: explain_many(
            model, images, targets, five, generator=torch.Generator().manual_seed(2)
        )
    )
    print(
        f"\nfive paper methods, one member: {t5[use] / n * 1e3:.2f} ms/image, bound "
        f"(IG {ig} + GradientSHAP {gs} + 1 pass) {bound5 * 1e3:.2f} ms/image, ratio "
        f"{t5[use] / n / bound5:.2f} (goal 1.10)"
    )

    members = [make_model(seed, 10).to(device) for seed in range(args.members)]
    times = []
    for member in members:
        t = clock(
            lambda member=member: explain_many(
                member, images, targets, five, generator=torch.Generator().manual_seed(2)
            )
        )
        times.append(t[use])
    total = sum(times)
    print(
        f"{args.members} members: {total:.2f} s, {args.members} x one member (the first) "
        f"{args.members * times[0]:.2f} s, ratio {total / (args.members * times[0]):.2f} "
        f"(goal <= 1.00; members differ only in weights and share the probe)"
    )


if __name__ == "__main__":
    main()
