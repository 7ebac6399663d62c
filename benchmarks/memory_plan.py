"""Does the memory plan hold at real size? ResNet-50 and ViT-B/16 (random weights, 224 px): the
rows the planner picks from the default 1024 MB budget, its estimate for them, and the measured
peak memory of one forward+backward call at those rows (CUDA: ``max_memory_allocated``; CPU:
the growth of the process's peak resident set over a warm one-row call, each model in its own
process so the peaks do not mix).

    python benchmarks/memory_plan.py              # both models, CPU
    python benchmarks/memory_plan.py --device cuda
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import torch


def measure(name: str, device: torch.device, budget: float) -> None:
    from concilium.explain.batching import probe

    torch.set_num_threads(1)
    if name == "resnet50":
        from torchvision.models import resnet50

        net = resnet50(weights=None).eval().to(device)
    else:
        import timm

        net = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(device)
    one = torch.rand(1, 3, 224, 224, device=device)
    plan = probe(net, one, memory_budget_mb=budget)

    def step(rows: int) -> None:
        x = one.expand(rows, 3, 224, 224).contiguous().requires_grad_(True)
        torch.autograd.grad(net(x)[:, 0].sum(), x)

    if device.type == "cuda":
        step(1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(plan.rows_grad)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        what = "peak allocated above the model"
    else:
        step(1)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        step(plan.rows_grad)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        what = "peak RSS growth over a one-row call"
    planned = plan.rows_grad * plan.bytes_per_row / 2**20
    verdict = "holds" if peak <= budget else "EXCEEDED"
    print(f"{name:9s} rows {plan.rows_grad:3d}  {plan.bytes_per_row / 2**20:6.1f} MB/row  "
          f"planned {planned:7.1f} MB  measured {peak:7.1f} MB ({what})  budget {budget:.0f} MB: "
          f"{verdict}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=1024.0, help="memory budget, MB")
    ap.add_argument("--model", default="", help="(internal) measure one model in this process")
    args = ap.parse_args()
    if args.model:
        measure(args.model, torch.device(args.device), args.budget)
        return
    for name in ("resnet50", "vit_b16"):
        subprocess.run([sys.executable, __file__, "--model", name, "--device", args.device,
                        "--budget", str(args.budget)], check=True)


if __name__ == "__main__":
    main()
