"""Attention rollout for ViTs (Abnar & Zuidema, 2020), registered as ``attention_rollout``.

Each block's attention probabilities ``softmax(q k^T / sqrt(d))`` are recomputed from the
queries and keys its projections produce (forward hooks on timm's ``qkv`` or transformers'
``q_proj``/``k_proj``, so the fused attention kernels stay in use), fused over the heads
(``mean``, ``max`` or ``min``), the identity added for the residual path and the rows
normalised; the product over the blocks, read on the class token's row, at the patch tokens
(class and register tokens dropped), is the patch map, upsampled to the image. The map does not
depend on the target class.

Supported: timm ``Attention`` modules (``qkv``, ``num_heads``, ``q_norm``/``k_norm``) and
transformers ViT-style attention (``q_proj``/``k_proj`` or ``query``/``key``, with
``num_attention_heads``); any other model raises a ``ValueError`` saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from concilium.explain import params as P
from concilium.explain.layers import patch_grid
from concilium.explain.methods import Chunk, register_method, upsample


def _heads(t: Tensor, n_heads: int) -> Tensor:
    """``(B, N, H*d)`` -> ``(B, H, N, d)``."""
    b, n, _ = t.shape
    return t.reshape(b, n, n_heads, -1).transpose(1, 2)


def _probabilities(q: Tensor, k: Tensor) -> Tensor:
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, m in model.named_modules():
        timm_style = isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads")
        hf_style = (
            any(isinstance(getattr(m, q, None), nn.Linear) for q in ("q_proj", "query"))
            and (hasattr(m, "num_attention_heads") or hasattr(getattr(m, "config", None),
                                                              "num_attention_heads"))
        )
        if timm_style or hf_style:
            found.append((name, m))
    return found


@contextmanager
def attention_probabilities(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each block's ``(B, heads, N, N)`` attention probabilities during forwards inside
    the block (in block order); the hooks are removed on exit.

    Raises:
        ValueError: the model has no supported attention module.
    """
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            "attention_rollout needs a ViT with timm Attention (qkv) or transformers ViT "
            "attention (q_proj/k_proj) modules; this model has none: use a CNN method instead"
        )
    probs: list[Tensor] = []
    handles = []
    for _name, m in modules:
        if isinstance(getattr(m, "qkv", None), nn.Linear):
            def on_qkv(_l: nn.Module, _i: object, out: Tensor, m: nn.Module = m) -> None:
                b, n, _ = out.shape
                qkv = out.reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
                q, k = m.q_norm(qkv[0]), m.k_norm(qkv[1])
                probs.append(_probabilities(q, k))
            handles.append(m.qkv.register_forward_hook(on_qkv))
        else:
            heads = getattr(m, "num_attention_heads", None) or m.config.num_attention_heads
            q_layer = getattr(m, "q_proj", None) or m.query
            k_layer = getattr(m, "k_proj", None) or m.key
            seen: dict[str, Tensor] = {}

            def on_q(_l: nn.Module, _i: object, out: Tensor, seen: dict = seen) -> None:
                seen["q"] = out

            def on_k(_l: nn.Module, _i: object, out: Tensor, seen: dict = seen,
                     heads: int = heads) -> None:
                probs.append(_probabilities(_heads(seen.pop("q"), heads), _heads(out, heads)))
            handles += [q_layer.register_forward_hook(on_q), k_layer.register_forward_hook(on_k)]
    try:
        yield probs
    finally:
        for h in handles:
            h.remove()


def rollout(probs: list[Tensor], head_fusion: str = "mean") -> Tensor:
    """``(B, N, N)`` rollout of the per-block ``(B, heads, N, N)`` attention probabilities."""
    result = None
    for a in probs:
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = fused / fused.sum(-1, keepdim=True)
        result = fused if result is None else fused @ result
    if result is None:
        raise ValueError("no attention was recorded; is the model a ViT?")
    return result


@register_method(
    name="attention_rollout", captum_class="concilium.explain.rollout (Abnar & Zuidema 2020)",
    params=P.RolloutParams, kind="perturbation", needs_baseline=False, needs_layer=False,
    stochastic=False, per_channel=False, passes=lambda p, hw: 1, architectures="vit",
    description="attention rollout of a ViT: the class token's attention flow to the patches",
)
def _attention_rollout(c: Chunk, p: P.RolloutParams) -> Tensor:
    with torch.no_grad(), attention_probabilities(c.module) as probs:
        c.module(c.images, *(c.forward_args or ()))
    flow = rollout(probs, p.head_fusion)
    hw = tuple(c.images.shape[-2:])
    prefix, gh, gw = patch_grid(c.module, flow.shape[-1], hw)
    cls_row = flow[:, 0, prefix:].reshape(-1, 1, gh, gw)
    return upsample(cls_row, hw, p.interpolation)
