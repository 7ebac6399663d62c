"""Continuity (Montavon et al. 2018): how much the explanation changes per change of the input
when the image slides sideways.

Each image is translated along its width by ``nr_steps`` shifts from ``-W`` to ``W`` (the
uncovered columns filled with the image's minimum, Quantus's ``"black"``); every translated copy
is explained (all copies of a chunk in one explainer call) and the score is the largest
``||a - a'||_1 / (||x - x'||_2 + 1e-9)`` over the shifts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from concilium.metrics._common import nan_where, prepare_maps
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics.perturb import check_batch_size, model_inputs, predicted_classes
from concilium.metrics.registry import register_metric


def translation_shifts(width: int, nr_steps: int) -> Tensor:
    """The horizontal shifts, in pixels, Quantus's ``Continuity`` walks: ``-W + k * dx`` for
    ``k = 1..nr_steps``, ``dx = (2W + 1) // nr_steps``, without the shift 0 (the image itself,
    no perturbation). For an image narrower than the steps (``dx = 0``, where Quantus repeats
    the shift ``-W``), every shift from ``-W + 1`` to ``W`` but 0 is used once.

    Raises:
        ValueError: for ``nr_steps < 1``.
    """
    if nr_steps < 1:
        raise ValueError(f"nr_steps must be >= 1; got {nr_steps}")
    dx = (2 * width + 1) // nr_steps
    if dx == 0:
        shifts = torch.arange(-width + 1, width + 1)
    else:
        shifts = -width + dx * torch.arange(1, nr_steps + 1)
    return shifts[shifts != 0]


def translate(images: Tensor, shifts: Tensor) -> Tensor:
    """``images (B, C, H, W)`` moved right by ``shifts (B,)`` pixels (left when negative); the
    uncovered columns take each image's minimum."""
    b, _, _, w = images.shape
    source = torch.arange(w, device=images.device) - shifts.to(images.device).view(-1, 1)
    inside = (source >= 0) & (source < w)
    index = source.clamp(0, w - 1).view(b, 1, 1, w).expand_as(images)
    fill = images.flatten(1).amin(1).view(b, 1, 1, 1)
    return torch.where(inside.view(b, 1, 1, w), images.gather(3, index), fill)


def _continuity_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    steps = len(translation_shifts(size[1], int(params["nr_steps"])))
    return steps * (2 if params["return_nan_when_prediction_changes"] else 1)


@register_metric(
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    passes=_continuity_passes,
)
def continuity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    nr_steps: int = 28,
    abs: bool = True,
    normalise: bool = True,
    return_nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Continuity (Montavon et al. 2018, Quantus's ``Continuity``): the largest
    ``||a - a'||_1 / (||x - x'||_2 + 1e-9)`` over horizontal translations of the image.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        nr_steps: translations from ``-W`` to ``W`` (Quantus default 28; see
            :func:`translation_shifts`).
        abs: take ``|.|`` of both maps (Quantus default True).
        normalise: divide each map by its own max ``|.|`` (Quantus default True, per batch).
        return_nan_when_prediction_changes: NaN for an image when the model does not predict
            its label on some translated copy (Quantus default False).
        batch_size: translated copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better.
    """
    maps, images, labels, device = model_inputs("continuity", maps, images, labels, model)
    fn = check_explainer("continuity", explainer)
    batch_size = check_batch_size(batch_size, device)
    shifts = translation_shifts(images.shape[-1], nr_steps).to(device)
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1).double()
    n, steps = images.shape[0], len(shifts)
    out = torch.empty(n, steps, dtype=torch.float64, device=device)
    total = n * steps
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total), device=device)
        i, k = flat // steps, flat % steps
        x = images[i]
        moved = translate(x, shifts[k])
        a_moved = explain_in_chunks(fn, model, moved, labels[i], batch_size=batch_size, shared=True)
        a_moved = prepare_maps(a_moved, abs=abs, normalise=normalise).flatten(1).double()
        l1 = (a[i] - a_moved).abs().sum(1)
        l2 = torch.linalg.vector_norm((x - moved).flatten(1).double(), dim=1)
        value = l1 / (l2 + 1e-9)
        if return_nan_when_prediction_changes:
            changed = predicted_classes(model, moved, batch_size=batch_size) != labels[i]
            value = value.masked_fill(changed, float("nan"))
        out[i, k] = value
    changed_any = torch.isnan(out).any(1)
    score = torch.nan_to_num(out, nan=0.0).amax(1)
    return nan_where(
        score, changed_any, "continuity", "a translated copy is not predicted as its label"
    )
