"""Per-image similarity between two batches of maps (registry :data:`SIMILARITIES`).

Each similarity takes ``a, b`` of shape ``(..., H, W)`` and returns ``(...)``: one value per image,
computed over that image's pixels. A constant map has no direction or correlation; its similarity
with anything is defined as 0 (not NaN), except that two identical constant maps score 1. Every
other value, identical maps included, is computed (nothing else is hard-coded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from concilium._registry import Registry
from concilium.ensemble.normalise import rank

Similarity = Callable[[Tensor, Tensor], Tensor]
SimilarityName = Literal["cosine", "pearson", "spearman"]

SIMILARITIES: Registry[Similarity] = Registry("similarity")


def _cosine_flat(a: Tensor, b: Tensor) -> Tensor:
    a64, b64 = a.double(), b.double()
    num = (a64 * b64).sum(-1)
    den = a64.norm(dim=-1) * b64.norm(dim=-1)
    # only where the value is undefined (a zero vector): identical -> 1, else 0
    same = (a == b).all(-1).double()
    out = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), same)
    return out.to(a.dtype)


@SIMILARITIES.register("cosine")
def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the flattened maps."""
    return _cosine_flat(a.flatten(-2), b.flatten(-2))


@SIMILARITIES.register("pearson")
def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the pixels (cosine similarity of the centred maps)."""
    fa, fb = a.flatten(-2), b.flatten(-2)
    ca, cb = fa - fa.mean(-1, keepdim=True), fb - fb.mean(-1, keepdim=True)
    return _cosine_flat(ca, cb)


@SIMILARITIES.register("spearman")
def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the pixels (Pearson of mean-tie ranks)."""
    return pearson(rank(a), rank(b))


def similarity(a: Tensor, b: Tensor, kind: SimilarityName | str = "cosine") -> Tensor:
    """Similarity of ``a`` and ``b`` (both ``(..., H, W)``, same shape) per map.

    Raises:
        ValueError: unknown ``kind`` or shapes that differ.
    """
    fn = SIMILARITIES.get(kind)
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have the same shape; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return fn(a.float(), b.float())


def mean_pairwise_similarity(stack: Tensor, kind: SimilarityName | str = "spearman") -> float:
    """Mean similarity over all pairs of the ``K`` stacked maps ``(K, N, H, W)`` and all images.

    With ``kind="spearman"`` this is the explanation-diversity measure of the claims experiment
    (lower means more diverse members). ``K = 1`` gives 1.0.
    """
    k = stack.shape[0]
    if k < 2:
        return 1.0
    values = [similarity(stack[i], stack[j], kind).double().mean()
              for i in range(k) for j in range(i + 1, k)]
    return float(torch.stack(values).mean())
