"""Automatic batching: how many model-input rows to send per call.

Captum's speed depends on knobs most users never tune (``internal_batch_size``,
``perturbations_per_eval``, chunking of NoiseTunnel and GradientShap): too small wastes calls,
too large exhausts memory. concilium picks them itself from a **memory budget** only: the bytes
one row needs are measured on one and two rows of the real model (what autograd keeps for the
backward pass, plus the largest gradient buffer), and the rows per call are the most the
budget holds, capped per device type (:data:`ROW_CAP`). On ResNet-50 at 224 px that is ~135
MB per row, on ViT-B/16 ~175 MB (1.5 x what autograd keeps plus the largest gradient buffer).

The plan is a function of the architecture, the input shape, the device, the dtype and the
budget, never of timing: the same call on a loaded or an idle machine batches identically, so a
resumed or re-run job adds Captum's partial sums in the same order and gives the same bits
(issue 16; an earlier timing probe made a resumed occlusion run differ by up to 1.5e-3).

Every method receives a row budget (:class:`Plan`) and turns it into its own Captum knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from concilium.explain._context import no_inplace_activations

#: Most rows per forward+backward call, per device type: past ~64 rows a CPU gains nothing
#: (caches thrash), an accelerator keeps gaining until its memory budget binds.
ROW_CAP: dict[str, int] = {"cpu": 64, "cuda": 1024, "mps": 256}
#: The cap of a device type not listed.
DEFAULT_ROW_CAP = 64
#: The backward pass allocates gradient buffers beside what the forward kept: the measured bytes
#: per row are multiplied by this margin.
BACKWARD_MARGIN = 1.5


@dataclass(frozen=True)
class Plan:
    """Rows per model call for gradient (forward+backward) and perturbation (forward) work.

    Attributes:
        rows_grad: rows per forward+backward call.
        rows_fwd: rows per forward-only call.
        bytes_per_row: estimated memory of one forward+backward row (margin included).
        max_rows: rows the memory budget allows per forward+backward call.
    """

    rows_grad: int
    rows_fwd: int
    bytes_per_row: int
    max_rows: int


_CACHE: dict[tuple, Plan] = {}


def clear_cache() -> None:
    """Forget every plan."""
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
    )


def _row_bytes(module: nn.Module, image: Tensor, rows: int) -> tuple[int, int]:
    """``(saved, largest)`` of one forward on ``rows`` rows: the bytes autograd keeps for the
    backward pass (unique storages, what persists until the backward), and the largest output of
    any leaf module (the size of the largest transient gradient)."""
    x = image[:1].expand(rows, *image.shape[1:]).contiguous().requires_grad_(True)
    saved: dict[int, int] = {}
    largest = [x.numel() * x.element_size()]

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage: count their size
            saved[id(t)] = t.numel() * t.element_size()
        return t

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    modules = [m for m in module.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
    finally:
        for h in handles:
            h.remove()
    return sum(saved.values()), largest[0]


def bytes_per_row(module: nn.Module, image: Tensor) -> int:
    """Memory estimate of one forward+backward row (deterministic): what autograd saves per row
    (its growth from one row to two: weights saved for backward do not grow and cancel), plus
    twice the largest layer output (a gradient buffer and its input at the peak of the
    backward), times :data:`BACKWARD_MARGIN`."""
    with no_inplace_activations(module):  # the larger case, whatever the caller's state
        saved1, largest = _row_bytes(module, image, 1)
        saved2, _ = _row_bytes(module, image, 2)
    return max(1, int(BACKWARD_MARGIN * (max(saved2 - saved1, 0) + 2 * largest)))


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
        batch_size: rows per call chosen by the user (else the most the budget holds, capped
            by :data:`ROW_CAP`).

    Returns:
        The :class:`Plan` (cached per architecture, input shape, device, dtype and budget); a
        function of those alone, never of timing.

    Raises:
        ValueError: if the budget or ``batch_size`` is not positive.
    """
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0; got {memory_budget_mb}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive number of rows per call; got {batch_size}")
    key = _architecture_key(module, images, memory_budget_mb)
    if key not in _CACHE:
        per_row = bytes_per_row(module, images)
        max_rows = max(1, int(memory_budget_mb * 2**20 // per_row))
        cap = ROW_CAP.get(images.device.type, DEFAULT_ROW_CAP)
        # a forward keeps nothing for backward: twice the rows fit
        _CACHE[key] = Plan(min(cap, max_rows), min(2 * cap, 2 * max_rows), per_row, max_rows)
    plan = _CACHE[key]
    if batch_size is not None:
        return Plan(int(batch_size), int(batch_size), plan.bytes_per_row, plan.max_rows)
    return plan


def images_per_chunk(rows: int, rows_per_image: int, n: int) -> int:
    """How many images fit in one call of ``rows`` rows when each needs ``rows_per_image``."""
    return max(1, min(n, rows // max(1, rows_per_image)))
