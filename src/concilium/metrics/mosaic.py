"""Focus (Arias-Duart et al. 2022): the share of positive relevance that an explanation of a
mosaic puts on the tiles of the target class.

The mosaics are built from the batch itself, one per image ``i``, with a seeded generator:

- its four tiles are image ``i``, another image of the class ``labels[i]`` (drawn uniformly
  among the batch's others of that class; image ``i`` again when it is its class's only image)
  and two images of other classes (two distinct ones drawn uniformly when the batch has two or
  more, the one twice when it has one);
- the tiles are placed in the four quadrants in a random order; with ``tile="half"`` each tile
  is the image resized (bilinear, antialiased) to its quadrant so the mosaic keeps the images'
  size ``(H, W)`` and any model takes it; with ``tile="full"`` the tiles keep their size and
  the mosaic is ``(2H, 2W)`` (models that accept any size);
- the explainer explains the mosaic for the target ``labels[i]``.

An image whose batch has no image of another class scores NaN (with a warning); its mosaic is
still explained, so a call always costs one explanation per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from concilium.metrics._common import nan_where
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics.perturb import check_batch_size, generator_device, model_inputs
from concilium.metrics.registry import register_metric

Tile = Literal["half", "full"]


def _pick(allowed: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``(picks (N, k), found (N,))``: ``k`` distinct columns of each row of ``allowed (N, N)``
    drawn uniformly (repeating the first when a row allows fewer than ``k``); ``found`` is
    False for a row that allows none."""
    n = allowed.shape[0]
    scores = torch.rand(n, n, generator=generator, device=generator_device(generator))
    scores = scores.to(allowed.device).masked_fill(~allowed, -1.0)
    top = scores.topk(min(k, n), dim=1)
    picks = torch.where(top.values >= 0, top.indices, top.indices[:, :1])
    if picks.shape[1] < k:
        picks = torch.cat([picks, picks[:, :1].expand(n, k - picks.shape[1])], dim=1)
    return picks, allowed.any(1)


def build_mosaics(
    images: Tensor, labels: Tensor, *, generator: torch.Generator | None, tile: Tile = "half"
) -> tuple[Tensor, Tensor, Tensor]:
    """One mosaic per image of the batch (see the module docstring).

    Returns:
        ``(mosaics (N, C, H', W'), target (N, 4) bool, valid (N,) bool)``: ``target`` says
        which quadrants (top-left, top-right, bottom-left, bottom-right, Quantus's order)
        hold an image of the class ``labels[i]``; ``valid`` is False where the batch has no
        image of another class.

    Raises:
        ValueError: for an unknown ``tile``, or ``"half"`` tiles of images under 2x2 pixels.
    """
    if tile not in ("half", "full"):
        raise ValueError(f"tile must be 'half' or 'full'; got {tile!r}")
    n, _, h, w = images.shape
    if tile == "half" and min(h, w) < 2:
        raise ValueError(
            f"focus with tile='half' needs images of at least 2x2 pixels; got {h}x{w} "
            "(pass tile='full')"
        )
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(n, dtype=torch.bool, device=images.device)
    partner, has_partner = _pick(same & ~eye, 1, generator)
    partner = torch.where(
        has_partner.view(-1, 1), partner, torch.arange(n, device=images.device).view(-1, 1)
    )
    others, valid = _pick(~same, 2, generator)
    order = torch.rand(n, 4, generator=generator, device=generator_device(generator))
    order = order.argsort(1).to(images.device)  # order[:, q]: which tile goes in quadrant q
    tiles = torch.cat([torch.arange(n, device=images.device).view(-1, 1), partner, others], 1)
    placed = tiles.gather(1, order)  # (N, 4) image index per quadrant
    target = order < 2  # tiles 0 and 1 are of the target class
    if tile == "full":
        rows, cols = (h, h), (w, w)
    else:
        rows, cols = (h // 2, h - h // 2), (w // 2, w - w // 2)
    quadrants = []
    for q in range(4):
        size = (rows[q // 2], cols[q % 2])
        x = images[placed[:, q]]
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        quadrants.append(x)
    top = torch.cat([quadrants[0], quadrants[1]], dim=3)
    bottom = torch.cat([quadrants[2], quadrants[3]], dim=3)
    return torch.cat([top, bottom], dim=2), target, valid


def quadrant_masks(target: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, H, W)`` bool: the pixels of the quadrants flagged in ``target (N, 4)``, the
    quadrants split at ``H // 2``, ``W // 2`` (as Quantus)."""
    h, w = size
    top = torch.arange(h, device=target.device).view(h, 1) < h // 2
    left = torch.arange(w, device=target.device).view(1, w) < w // 2
    parts = torch.stack([top & left, top & ~left, ~top & left, ~top & ~left])  # (4, H, W)
    return (target.view(-1, 4, 1, 1) & parts).any(1)


def _focus_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 1


@register_metric(
    category="localisation",
    higher_is_better=True,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
    batch_relative=True,
    passes=_focus_passes,
)
def focus(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    abs: bool = False,
    tile: Tile = "half",
    batch_size: int | None = None,
) -> Tensor:
    """Focus (Arias-Duart et al. 2022, Quantus's ``Focus``): the share of the positive relevance
    of a mosaic's explanation that lies on its two tiles of the target class.

    Focus rates the explanation method on mosaics built from the batch (see the module
    docstring), not the given ``maps``, whose shape alone is checked.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: random source of the mosaics' composition.
        abs: score ``|a|`` instead of the positive part of ``a`` (Quantus default False).
        tile: ``"half"`` (mosaic of the images' size) or ``"full"`` (``(2H, 2W)``).
        batch_size: mosaics per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in [0, 1], higher is better; 0.5 for relevance spread evenly; NaN where the
        batch has no image of another class or the mosaic's map has no positive relevance.
    """
    maps, images, labels, device = model_inputs("focus", maps, images, labels, model)
    fn = check_explainer("focus", explainer)
    batch_size = check_batch_size(batch_size, device)
    mosaics, target, valid = build_mosaics(images, labels, generator=generator, tile=tile)
    a = explain_in_chunks(fn, model, mosaics, labels, batch_size=batch_size, shared=True).double()
    a = a.abs() if abs else a.clamp_min(0)
    inside = quadrant_masks(target, tuple(a.shape[-2:]))
    total = a.flatten(1).sum(1)
    score = (a * inside).flatten(1).sum(1) / torch.where(total > 0, total, torch.ones_like(total))
    score = nan_where(score, ~valid, "focus", "the batch has no image of another class")
    return nan_where(score, ~(total > 0), "focus", "the mosaic's map has no positive relevance")
