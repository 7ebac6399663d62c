"""The shared perturbation engine: inside a :func:`shared_passes` scope, every distinct input a
metric sends through the model (or the explainer) is computed once, and every metric that needs
it again reads the stored output.

Deletion, AOPC, pixel flipping, monotonicity, region perturbation and IROF walk the same ordered
perturbation sequences: AOPC's copies are deletion's, monotonicity's insertion copies (least
relevant pixels first) are deletion's MoRF copies read backwards, the unperturbed image starts
every curve and is the ``f(x)`` of faithfulness correlation, sufficiency and the estimates, the
all-baseline copy ends every curve of that baseline. Per-metric libraries pay for each again; a
suite evaluated in one scope pays for the union of its passes.

A copy is identified by what it is made of, not by which metric asks for it: a perturbed copy
``where(replace, baseline, image)`` by the digests of its image row, its baseline row and its
replace mask (a copy that replaces nothing is its image, one that replaces everything is its
baseline), any other input by the digest of its values. Rows are digested with BLAKE2b over their
bytes on the CPU and, on a GPU, by exact float64 dot products of their 16-bit words with fixed
random weights (:func:`device_digests`, collision probability below ``2**-64``), so no input
is copied to the host; a replace mask by four exact float64 dot products with fixed random
weights in ``[0, 2**20)`` (two distinct masks collide with probability below ``2**-80``), so a
mask never leaves the device. The model's whole output row is stored (``classes`` float32 per
distinct copy), so a softmax and a logit metric, or two targets, share a copy.

Rules of the scope: the models and explainers used inside it are not modified while it is open
(the randomisation metrics work on their own copies and never use the scope for them), and a
cached output is returned for an input whose digest matches, so values equal those of the
metrics run one by one up to the floating-point differences of batching the same input with
different neighbours (a few ULPs on CPU).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ReplaceFn = Callable[[Tensor, Tensor], Tensor]
"""``replace(image_idx (B,), variant_idx (B,)) -> (B, H, W)`` bool: the pixels to replace."""

_HASH_ROWS = 4
_HASH_HIGH = 2**20
_HASH_SEED = 0x5EED


@dataclass
class PassStats:
    """What a scope computed and what it served from storage.

    Attributes:
        model_inputs: copies asked of the model by the metrics.
        model_forwards: copies actually sent through the model (distinct ones).
        explained: images asked of the explainer.
        explainer_calls: images actually explained (distinct ones).
    """

    model_inputs: int = 0
    model_forwards: int = 0
    explained: int = 0
    explainer_calls: int = 0


@dataclass
class SharedPasses:
    """The store of one :func:`shared_passes` scope (see the module docstring)."""

    stats: PassStats = field(default_factory=PassStats)
    _outputs: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    _maps: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    _alive: list[object] = field(default_factory=list)
    _weights: dict[tuple[int, str], Tensor] = field(default_factory=dict)

    def _hold(self, obj: object) -> int:
        """``id(obj)``, with ``obj`` kept alive for the scope so its id is never reused."""
        if not any(o is obj for o in self._alive):
            self._alive.append(obj)
        return id(obj)

    def _mask_digests(self, masks: Tensor) -> list[tuple[int, ...]]:
        """One exact integer digest per mask of ``masks (B, H, W)``."""
        flat = masks.flatten(1)
        p = flat.shape[1]
        key = (p, str(flat.device))
        if key not in self._weights:
            g = torch.Generator().manual_seed(_HASH_SEED + p)
            w = torch.randint(0, _HASH_HIGH, (p, _HASH_ROWS), generator=g, dtype=torch.float64)
            self._weights[key] = w.to(flat.device)
        sums = (flat.to(torch.float64) @ self._weights[key]).cpu()
        counts = flat.sum(1).cpu()
        return [(int(c), *(int(x) for x in row)) for c, row in zip(counts, sums, strict=True)]

    # ---- model outputs --------------------------------------------------------------------
    def _forward_missing(
        self,
        model: nn.Module,
        keys: list[tuple[Any, ...]],
        build: Callable[[Tensor], Tensor],
        batch_size: int,
        device: torch.device,
    ) -> None:
        """Send the rows of ``keys`` not stored yet (each once) through ``model``, ``batch_size``
        at a time; ``build(rows)`` makes the inputs of those rows."""
        missing: dict[tuple[Any, ...], int] = {}
        for r, k in enumerate(keys):
            if k not in self._outputs and k not in missing:
                missing[k] = r
        self.stats.model_inputs += len(keys)
        if not missing:
            return
        todo = list(missing.items())
        with torch.no_grad():
            for start in range(0, len(todo), batch_size):
                part = todo[start : start + batch_size]
                rows = torch.tensor([r for _, r in part], device=device)
                out = model(build(rows)).float()
                for (k, _), row in zip(part, out, strict=True):
                    self._outputs[k] = row
                self.stats.model_forwards += len(part)

    def _scores(self, keys: list[tuple[Any, ...]], labels: Tensor, *, softmax: bool) -> Tensor:
        logits = torch.stack([self._outputs[k] for k in keys])
        if softmax:
            logits = logits.softmax(dim=1)
        return logits.gather(1, labels[:, None]).squeeze(1).float()

    def outputs(self, model: nn.Module, images: Tensor, *, batch_size: int) -> Tensor:
        """The model's output rows ``(M, classes)`` for ``images``, each distinct image forwarded
        once in this scope."""
        keys = [(self._hold(model), "x", d) for d in row_digests(images)]
        self._forward_missing(model, keys, lambda rows: images[rows], batch_size, images.device)
        return torch.stack([self._outputs[k] for k in keys]) if keys else images.new_zeros(0, 0)

    def variant_scores(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        baselines: Tensor,
        replace: ReplaceFn,
        n_variants: int,
        *,
        softmax: bool,
        batch_size: int,
    ) -> Tensor:
        """:func:`~concilium.metrics.perturb.variant_scores` through the store: ``(N, V)``."""
        n = images.shape[0]
        total = n * n_variants
        mid = self._hold(model)
        img_d = row_digests(images)
        base_d = row_digests(baselines)
        p = images.shape[-2] * images.shape[-1]
        keys: list[tuple[Any, ...]] = []
        dev = images.device
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total), device=dev)
            i, v = flat // n_variants, flat % n_variants
            for ii, digest in zip(i.tolist(), self._mask_digests(replace(i, v)), strict=True):
                if digest[0] == 0:
                    keys.append((mid, "x", img_d[ii]))
                elif digest[0] == p:
                    keys.append((mid, "x", base_d[ii]))
                else:
                    keys.append((mid, "p", img_d[ii], base_d[ii], digest))

        def build(rows: Tensor) -> Tensor:
            i, v = rows // n_variants, rows % n_variants
            return torch.where(replace(i, v).unsqueeze(1), baselines[i], images[i])

        self._forward_missing(model, keys, build, batch_size, dev)
        idx = torch.arange(total, device=dev) // n_variants
        return self._scores(keys, labels[idx], softmax=softmax).to(dev).view(n, n_variants)

    # ---- explainer outputs ----------------------------------------------------------------
    def explain(
        self,
        explainer: Callable[[nn.Module, Tensor, Tensor], Tensor],
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        call: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """The explainer's maps ``(M, H, W)`` of ``images`` for ``targets``, each distinct
        (image, target) explained once in this scope; ``call(rows)`` explains those rows."""
        head = (self._hold(explainer), self._hold(model))
        keys = [
            (*head, d, int(t)) for d, t in zip(row_digests(images), targets.tolist(), strict=True)
        ]
        missing: dict[tuple[Any, ...], int] = {}
        for r, k in enumerate(keys):
            if k not in self._maps and k not in missing:
                missing[k] = r
        self.stats.explained += len(keys)
        if missing:
            rows = torch.tensor(list(missing.values()), device=images.device)
            maps = call(rows)
            for k, m in zip(missing, maps, strict=True):
                self._maps[k] = m
            self.stats.explainer_calls += len(missing)
        return torch.stack([self._maps[k] for k in keys])


_ACTIVE: ContextVar[SharedPasses | None] = ContextVar("concilium_shared_passes", default=None)


def active() -> SharedPasses | None:
    """The store of the innermost open :func:`shared_passes` scope, or ``None``."""
    return _ACTIVE.get()


@contextmanager
def shared_passes() -> Iterator[SharedPasses]:
    """Open a scope in which the metrics share their model and explainer passes (module
    docstring). Nested scopes share the outer store.

    Example:
        >>> with shared_passes() as store:  # doctest: +SKIP
        ...     d = evaluate("deletion", maps, images=x, labels=y, model=m)
        ...     a = evaluate("aopc", maps, images=x, labels=y, model=m)  # no new forward pass
        >>> store.stats.model_forwards  # doctest: +SKIP
    """
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    store = SharedPasses()
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def row_digests(x: Tensor) -> list[bytes]:
    """A digest of each row of ``x`` (its dtype, shape and bytes): BLAKE2b over the bytes on the
    CPU; on a GPU, :func:`device_digests` (no copy of the rows to the host)."""
    if x.device.type == "cuda":
        return device_digests(x)
    rows = x.detach().contiguous().cpu()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(rows.shape[0], -1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    arr = flat.numpy()
    return [hashlib.blake2b(head + r.tobytes(), digest_size=16).digest() for r in arr]


_ROW_WEIGHTS: dict[tuple[int, str], Tensor] = {}


def device_digests(x: Tensor) -> list[bytes]:
    """A digest of each row of ``x`` computed where ``x`` lives: the row's bytes as 16-bit words
    (values below 2**16), four exact float64 dot products with fixed random weights below
    2**16 (a sum below 2**53 for rows up to 2**21 words, so every product and sum is exact).
    Two different rows collide with probability below 2**-64."""
    rows = x.detach().contiguous()
    words = rows.reshape(rows.shape[0], -1).view(torch.int16).to(torch.int32) & 0xFFFF
    n_words = words.shape[1]
    if n_words >= 2**21:
        return [
            hashlib.blake2b(r.tobytes(), digest_size=16).digest()
            for r in rows.reshape(rows.shape[0], -1).view(torch.int16).cpu().numpy()
        ]
    key = (n_words, str(words.device))
    if key not in _ROW_WEIGHTS:
        g = torch.Generator().manual_seed(_HASH_SEED ^ n_words)
        w = torch.randint(0, 2**16, (n_words, _HASH_ROWS), generator=g, dtype=torch.float64)
        _ROW_WEIGHTS[key] = w.to(words.device)
    sums = (words.to(torch.float64) @ _ROW_WEIGHTS[key]).cpu().numpy().astype(np.int64)
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    return [head + r.tobytes() for r in sums]
