"""Explanation store I/O: what writing and reading maps through the store costs.

Measured in one run, against references measured in the same run:

- write: ``entry.write`` chunk by chunk (data + done marker per chunk), as ``concilium explain``
  does, vs one ``np.save`` of the whole array (no chunking, no resumability);
- full read: ``entry.read()`` vs ``np.load`` of that file;
- lazy read: ``entry.read(rows)`` of a few random rows vs the full read;
- float16: disk bytes vs float32;
- end to end (``--explain``): ``explain_to_store`` (compute + background writes + markers) vs
  the same ``explain_many`` calls on the same chunks without a store, for the cheapest methods
  (saliency, input x gradient, GradCAM from one shared pass on a ~100k-parameter CNN), where the
  store's share is largest.

Usage::

    .venv/bin/python benchmarks/store_io.py [--n 2048] [--size 64] [--chunk 64] [--rows 16]
        [--explain 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from concilium.store import ExplanationStore


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="maps (samples)")
    parser.add_argument("--size", type=int, default=64, help="map height and width")
    parser.add_argument("--chunk", type=int, default=64, help="samples per chunk")
    parser.add_argument("--rows", type=int, default=16, help="rows read by the lazy read")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument(
        "--explain", type=int, default=0, help="images for the end-to-end comparison (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    # smooth-ish maps (like real saliency) so compression is not trivially perfect or useless
    maps = torch.nn.functional.avg_pool2d(
        torch.randn(args.n, 1, args.size, args.size, generator=g), 5, 1, 2
    )[:, 0].contiguous()
    ids = [f"s{i}" for i in range(args.n)]
    mb = maps.numel() * 4 / 2**20
    rows = torch.randperm(args.n, generator=g)[: args.rows].tolist()
    tmp = Path(tempfile.mkdtemp())

    def write_store(dtype: str, k: list[int]) -> None:
        store = ExplanationStore(tmp / f"run-{dtype}-{k[0]}")
        k[0] += 1
        entry = store.entry(
            "m0", "bench", {}, ids, shape=(args.size, args.size), dtype=dtype, chunk_size=args.chunk
        )
        for start, stop in entry.missing_chunks():
            entry.write(start, maps[start:stop])

    counter = [0]
    t_write = _best(lambda: write_store("float32", counter), args.repeats)
    t_npsave = _best(lambda: np.save(tmp / "ref.npy", maps.numpy()), args.repeats)
    entry = ExplanationStore(tmp / "run-float32-0").get("m0", "bench")
    t_read = _best(lambda: entry.read(), args.repeats)
    t_npload = _best(lambda: np.load(tmp / "ref.npy"), args.repeats)
    t_lazy = _best(lambda: entry.read(rows), args.repeats)
    counter16 = [0]
    write_store("float16", counter16)
    size32 = _disk_bytes(tmp / "run-float32-0" / "explanations.zarr")
    size16 = _disk_bytes(tmp / "run-float16-0" / "explanations.zarr")

    print(
        f"store I/O: {args.n} maps of {args.size}x{args.size} float32 ({mb:.1f} MB), "
        f"chunks of {args.chunk}, best of {args.repeats}"
    )
    print(
        f"  write (chunked + markers) {t_write * 1e3:8.1f} ms  {mb / t_write:7.1f} MB/s  "
        f"{t_write / t_npsave:5.2f}x np.save ({t_npsave * 1e3:.1f} ms)"
    )
    print(
        f"  full read                 {t_read * 1e3:8.1f} ms  {mb / t_read:7.1f} MB/s  "
        f"{t_read / t_npload:5.2f}x np.load ({t_npload * 1e3:.1f} ms)"
    )
    print(
        f"  lazy read of {args.rows:3d} rows      {t_lazy * 1e3:8.1f} ms  "
        f"{t_lazy / t_read:5.3f}x the full read"
    )
    print(
        f"  disk: float32 {size32 / 2**20:.2f} MB, float16 {size16 / 2**20:.2f} MB "
        f"({size16 / size32:.2f}x); raw {mb:.2f} MB"
    )
    if args.explain:
        end_to_end(args, tmp)


def end_to_end(args: argparse.Namespace, tmp: Path) -> None:
    from concilium.data.dataset import ImageDataset
    from concilium.explain import explain_many
    from concilium.jobs.explain import explain_to_store
    from concilium.models.architectures import create_model
    from concilium.models.members import MemberCard

    n, hw = args.explain, args.size
    g = torch.Generator().manual_seed(1)
    data = ImageDataset(
        images=torch.rand(n, 3, hw, hw, generator=g),
        labels=torch.arange(n) % 4,
        masks=torch.zeros(n, hw, hw, dtype=torch.bool),
        ids=[f"s{i}" for i in range(n)],
        splits=["test"] * n,
        class_names=list("abcd"),
    )
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4).eval()
    card = MemberCard(
        member_id="m0",
        arch="small-cnn",
        num_classes=4,
        class_names=list("abcd"),
        image_size=(hw, hw),
        seed=0,
        diversity="seed",
        epochs=0,
        gradcam_layer=model.gradcam_layer,
        data_fingerprint="bench",
    )
    methods = ["saliency", "input_x_gradient", "gradcam"]

    def compute_only() -> None:
        for start in range(0, n, args.chunk):
            stop = min(n, start + args.chunk)
            explain_many(
                model,
                data.images[start:stop],
                "label",
                {m: {} for m in methods},
                labels=data.labels[start:stop],
                batch_size=args.chunk,
            )

    runs = [0]

    def with_store() -> None:
        runs[0] += 1
        explain_to_store(
            ExplanationStore(tmp / f"e2e-{runs[0]}"),
            data,
            [(model, card)],
            methods,
            chunk_size=args.chunk,
            batch_size=args.chunk,
        )

    compute_only()  # warm-up
    t_ref = _best(compute_only, args.repeats)
    t_store = _best(with_store, args.repeats)
    maps = n * len(methods)
    print(f"end to end, {n} images x {', '.join(methods)} (one shared pass), batch {args.chunk}:")
    print(f"  explain_many only        {t_ref * 1e3:8.1f} ms  {maps / t_ref:8.0f} maps/s")
    print(
        f"  explain_to_store         {t_store * 1e3:8.1f} ms  {maps / t_store:8.0f} maps/s  "
        f"{t_store / t_ref:5.2f}x"
    )


if __name__ == "__main__":
    main()
