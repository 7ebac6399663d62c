"""Shared by the metric benchmarks: a model wrapper that records every pass, the timers, and the
pass bound (the recorded passes priced at the per-image cost measured at the same input shapes).

A *pass* is one call of the model's forward on a batch, recorded with its input shape, whether
grad was enabled, and whether a backward later reached its output (a gradient explainer's pass).
The bound prices each pass at the per-image time of one batched pass of that shape measured in
the same run: a forward under ``no_grad``, or a forward plus a backward to the input. A deep copy
of the wrapped model (MPRT and its variants randomise a copy) is counted and priced at one
measured ``deepcopy`` plus re-initialising every layer.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Tally:
    """What a :class:`Counting` model saw. Deep copies of the model share it (MPRT's copy is
    counted as the metric's), and every copy made is counted in ``copies``."""

    #: one ``[shape, grad_enabled, backwarded, seconds in the model]`` per forward call
    calls: list[list] = field(default_factory=list)
    copies: int = 0
    #: the clock of the in-model seconds (:func:`clock`)
    now: Callable[[], float] = time.process_time

    def __deepcopy__(self, memo: dict) -> Tally:
        self.copies += 1
        return self

    def reset(self) -> None:
        self.calls.clear()
        self.copies = 0

    def summary(self) -> tuple[Counter, Counter]:
        """``(forwards, backwards)``: images per input shape, pushed forward only (no backward
        reached them) and forward plus backward."""
        fwd: Counter = Counter()
        bwd: Counter = Counter()
        for shape, _grad, backwarded, _s in self.calls:
            (bwd if backwarded else fwd)[shape[1:]] += shape[0]
        return fwd, bwd

    def in_model(self) -> float:
        """Seconds spent inside the model's forwards and the backwards through it."""
        return sum(c[3] for c in self.calls)


class Counting(nn.Module):
    """Wraps a model; records every forward call in ``self.tally``, with the seconds spent in the
    forward and in a backward from its output to its input (timed by hooks on both)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.tally = Tally(now=clock(device))
        layer = getattr(model, "gradcam_layer", None)
        if layer is not None:  # metrics that read it (a representation) see the same layer
            self.gradcam_layer = f"model.{layer}"

    def forward(self, x: Tensor) -> Tensor:
        now = self.tally.now
        t = now()
        out = self.model(x)
        record = [tuple(x.shape), torch.is_grad_enabled(), False, now() - t]
        self.tally.calls.append(record)
        if out.requires_grad:
            start = [0.0]

            def backward_starts(grad: Tensor) -> None:
                record[2] = True
                start[0] = now()

            def backward_ends(grad: Tensor) -> None:
                record[3] += now() - start[0]

            out.register_hook(backward_starts)
            if x.requires_grad:
                x.register_hook(backward_ends)
        return out


def input_x_gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """The explainer of the benchmarks: input x gradient summed over channels, one forward and
    one backward per image."""
    x = images.detach().clone().requires_grad_(True)
    out = model(x).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(out, x)
    return (grad * x).sum(1).detach()


def clock(device: torch.device) -> Callable[[], float]:
    """Process CPU time on CPU (a shared machine's waiting for a core is not ours), wall time
    after a synchronise on CUDA."""
    if device.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return wall
    return time.process_time


def median_time(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[float, object]:
    """Median seconds over ``reps`` calls (after none: the caller warms up), and the last output."""
    now = clock(device)
    times, out = [], None
    for _ in range(max(1, reps)):
        t = now()
        out = fn()
        times.append(now() - t)
    return statistics.median(times), out


class PassCosts:
    """Per-image cost of one batched pass of ``net``, measured (and cached) per input shape."""

    def __init__(self, net: nn.Module, device: torch.device, *, reps: int = 5) -> None:
        self.net, self.device, self.reps = net, device, reps
        self._cache: dict[tuple[tuple[int, ...], bool], float] = {}
        self._copy: float | None = None

    def per_image(self, shape: tuple[int, ...], backward: bool) -> float:
        """Seconds per image of a ``shape`` batch: forward under ``no_grad`` or, with
        ``backward``, forward plus backward to the input (as :func:`input_x_gradient`)."""
        key = (tuple(shape), backward)
        if key not in self._cache:
            g = torch.Generator().manual_seed(1)
            x = torch.rand(*shape, generator=g).to(self.device)
            y = torch.zeros(shape[0], dtype=torch.long, device=self.device)
            if backward:
                fn = lambda: input_x_gradient(self.net, x, y)  # noqa: E731
            else:

                def fn() -> Tensor:
                    with torch.no_grad():
                        return self.net(x)

            fn()
            self._cache[key] = median_time(fn, self.device, self.reps)[0] / shape[0]
        return self._cache[key]

    def forget(self) -> None:
        """Drop the measured prices (to measure them again, e.g. beside the next timing)."""
        self._cache.clear()
        self._copy = None

    def per_copy(self) -> float:
        """Seconds of one ``deepcopy`` of the model plus re-initialising all its layers."""
        if self._copy is None:

            def fn() -> None:
                work = copy.deepcopy(self.net)
                with torch.random.fork_rng(devices=[]):
                    for m in work.modules():
                        if hasattr(m, "reset_parameters"):
                            m.reset_parameters()

            fn()
            self._copy = median_time(fn, self.device, self.reps)[0]
        return self._copy

    def bound(self, tally: Tally) -> float:
        """Seconds the recorded passes and copies cost at the measured per-image prices."""
        total = tally.copies * self.per_copy() if tally.copies else 0.0
        for shape, _grad, backwarded, _s in tally.calls:
            total += shape[0] * self.per_image(shape, bool(backwarded))
        return total
