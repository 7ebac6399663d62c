"""Automatic batching: how many model-input rows to send per call.

Captum's speed depends on knobs most users never tune (``internal_batch_size``,
``perturbations_per_eval``, chunking of NoiseTunnel and GradientShap): too small wastes calls,
too large thrashes caches or memory. concilium picks them itself from

* a **memory budget**: bytes one row needs, from the activation sizes of one forward pass
  (deterministic), give the most rows a call may hold; and
* a **one-off timing probe**: forward+backward (and forward-only) time per row at doubling batch
  sizes up to that limit; the largest batch within 5% of the best time per row wins. On the CPU
  the probe reads the process's CPU time, so other processes on the machine do not skew it.

The probe is cached per architecture (module type, parameter shapes), input shape, device and
dtype, so the members of an ensemble share one probe. Every method then receives a row budget
(:class:`Plan`) and turns it into its own Captum knobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Smallest and largest rows per call the probe tries.
MIN_ROWS = 8
MAX_ROWS = 2048
#: A batch whose time per row is within this factor of the best is as good as the best.
TOLERANCE = 1.05
#: Stop doubling once the time per row is this much worse than the best.
STOP = 1.3


@dataclass(frozen=True)
class Plan:
    """Rows per model call for gradient (forward+backward) and perturbation (forward) work.

    Attributes:
        rows_grad: rows per forward+backward call.
        rows_fwd: rows per forward-only call.
        bytes_per_row: estimated memory of one forward+backward row.
        max_rows: rows the memory budget allows per forward+backward call.
        sec_per_row_grad: probed forward+backward seconds per row at ``rows_grad`` (0 if given).
        sec_per_row_fwd: probed forward seconds per row at ``rows_fwd`` (0 if given).
        probe_seconds: time the probe took (0 when cached or not probed).
    """

    rows_grad: int
    rows_fwd: int
    bytes_per_row: int
    max_rows: int
    sec_per_row_grad: float = 0.0
    sec_per_row_fwd: float = 0.0
    probe_seconds: float = 0.0


_CACHE: dict[tuple, Plan] = {}


def clear_cache() -> None:
    """Forget every probe (e.g. after changing the number of threads)."""
    _CACHE.clear()


def _architecture_key(module: nn.Module, images: Tensor, budget_mb: float) -> tuple:
    params = tuple((n, tuple(p.shape)) for n, p in module.named_parameters())
    return (
        type(module).__qualname__,
        params,
        tuple(images.shape[1:]),
        str(images.device),
        images.dtype,
        float(budget_mb),
        torch.get_num_threads(),
    )


def bytes_per_row(module: nn.Module, image: Tensor) -> int:
    """Memory estimate of one forward+backward row: every leaf module's output, kept for
    backward, plus its gradient, plus the input (deterministic)."""
    total = [image[:1].numel() * image.element_size() * 2]

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, Tensor):
            total[0] += out.numel() * out.element_size() * 2

    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(image[:1])
    finally:
        for h in handles:
            h.remove()
    return max(1, total[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> float:
    # On the CPU the process's CPU time: robust to other processes sharing the cores.
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def _time_rows(module: nn.Module, image: Tensor, rows: int, *, backward: bool) -> float:
    """Best of two timings of one call on ``rows`` copies of ``image``, seconds per row."""
    x = image[:1].expand(rows, *image.shape[1:]).contiguous()
    best = float("inf")
    for _ in range(2):
        _sync(x.device)
        t0 = _clock(x.device)
        if backward:
            xr = x.detach().requires_grad_(True)
            out = module(xr)
            torch.autograd.grad(out[:, 0].sum(), xr)
        else:
            with torch.no_grad():
                module(x)
        _sync(x.device)
        best = min(best, _clock(x.device) - t0)
    return best / rows


def _best_rows(module: nn.Module, image: Tensor, max_rows: int, *, backward: bool) -> tuple[int, float]:
    timings: dict[int, float] = {}
    rows = MIN_ROWS
    _time_rows(module, image, MIN_ROWS, backward=backward)  # warm-up
    while rows <= max_rows:
        timings[rows] = _time_rows(module, image, rows, backward=backward)
        if timings[rows] > STOP * min(timings.values()):
            break
        rows *= 2
    best = min(timings.values())
    chosen = max(r for r, t in timings.items() if t <= TOLERANCE * best)
    return chosen, timings[chosen]


def probe(
    module: nn.Module,
    images: Tensor,
    *,
    memory_budget_mb: float = 1024.0,
    batch_size: int | None = None,
) -> Plan:
    """The batching plan for ``module`` on images shaped like ``images``.

    Args:
        module: the module to be attributed (in eval mode).
        images: a batch shaped like the inputs (only the first image is used).
        memory_budget_mb: memory the activations of one call may take (default 1024 MB).
        batch_size: rows per call chosen by the user; skips the timing probe.

    Returns:
        The :class:`Plan` (cached per architecture, input shape, device, dtype and budget).

    Raises:
        ValueError: if the budget or ``batch_size`` is not positive.
    """
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0; got {memory_budget_mb}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive number of rows per call; got {batch_size}")
    key = _architecture_key(module, images, memory_budget_mb)
    if batch_size is not None:
        per_row = _CACHE[key].bytes_per_row if key in _CACHE else bytes_per_row(module, images)
        max_rows = max(1, int(memory_budget_mb * 2**20 // per_row))
        return Plan(int(batch_size), int(batch_size), per_row, max_rows)
    if key in _CACHE:
        return _CACHE[key]
    t0 = time.perf_counter()
    per_row = bytes_per_row(module, images)
    max_rows = max(1, int(memory_budget_mb * 2**20 // per_row))
    limit = min(MAX_ROWS, max_rows)
    if limit <= MIN_ROWS:
        plan = Plan(limit, limit, per_row, max_rows)
    else:
        rows_grad, t_grad = _best_rows(module, images, limit, backward=True)
        # A forward keeps no activations for backward: allow up to twice the rows.
        rows_fwd, t_fwd = _best_rows(module, images, min(MAX_ROWS, 2 * max_rows), backward=False)
        plan = Plan(rows_grad, rows_fwd, per_row, max_rows, t_grad, t_fwd, 0.0)
    plan = Plan(**{**plan.__dict__, "probe_seconds": time.perf_counter() - t0})
    _CACHE[key] = plan
    return plan


def images_per_chunk(rows: int, rows_per_image: int, n: int) -> int:
    """How many images fit in one call of ``rows`` rows when each needs ``rows_per_image``."""
    return max(1, min(n, rows // max(1, rows_per_image)))
