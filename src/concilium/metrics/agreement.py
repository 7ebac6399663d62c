"""Consistency (Dasgupta et al. 2022): do images that get the same explanation get the same
prediction?

Each map is discretised into a key; an image's score is the share of the *other* images of the
batch with the same key whose predicted class equals its own. The score is relative to the
batch by definition (an estimate of ``P(f(x') = f(x) | e(x') = e(x))`` over the batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium.metrics._common import nan_where, prepare_maps
from concilium.metrics.perturb import check_batch_size, model_inputs, predicted_classes
from concilium.metrics.registry import register_metric

Discretise = Literal["top_n_sign", "first_n_sign", "rank"]
DISCRETISE: tuple[str, ...] = ("top_n_sign", "first_n_sign", "rank")


def discretise_maps(maps: Tensor, *, how: Discretise, n: int) -> Tensor:
    """``(N, K)`` integer keys of ``maps (N, H, W)``: two maps are "the same explanation" when
    their keys are equal.

    - ``"top_n_sign"``: the positions of the ``n`` largest values (ties in pixel order) and
      their signs;
    - ``"first_n_sign"``: the signs of the first ``n`` values in raster order (what Quantus's
      ``top_n_sign`` computes);
    - ``"rank"``: the whole order of the pixels, largest first (Quantus's ``rank``).

    Raises:
        ValueError: for an unknown ``how`` or ``n < 1``.
    """
    if how not in DISCRETISE:
        raise ValueError(f"discretise must be one of {DISCRETISE}; got {how!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    flat = maps.flatten(1)
    if how == "first_n_sign":
        return torch.sign(flat[:, :n]).long()
    if how == "rank":
        return torch.sort(flat, dim=1, descending=True, stable=True).indices
    top = _top_n_positions(flat, n)
    return torch.cat([top, torch.sign(flat.gather(1, top)).long()], dim=1)


def _top_n_positions(flat: Tensor, n: int) -> Tensor:
    """``(N, n)``: the first ``n`` positions of a stable descending sort of each row (the ``n``
    largest values, ties in pixel order), without sorting the whole row."""
    n = min(n, flat.shape[1])
    nth = torch.topk(flat, n, dim=1).values[:, -1:]  # the n-th largest value (exact)
    above = flat > nth
    tied = flat == nth
    places = n - above.sum(1, keepdim=True)  # the first `places` ties in pixel order go in
    chosen = above | (tied & (tied.cumsum(1) <= places))
    idx = chosen.nonzero()[:, 1].view(flat.shape[0], n)  # ascending pixel order
    order = torch.sort(flat.gather(1, idx), dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def _one_pass(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 1


@register_metric(
    category="robustness",
    higher_is_better=True,
    needs_model=True,
    batch_relative=True,
    passes=_one_pass,
)
def consistency(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    discretise: Discretise = "top_n_sign",
    n: int = 5,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Consistency (Dasgupta et al. 2022, Quantus's ``Consistency``): the share of the other
    images of the batch with the same discretised explanation that get the same predicted
    class.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model
            (the predicted classes are compared; ``labels`` are only checked).
        discretise: how a map becomes a key (:func:`discretise_maps`); the default is the signs
            of the ``n`` largest values with their positions (Quantus's default takes the first
            ``n`` values in raster order instead, ``"first_n_sign"``: see docs/metrics.md).
        n: values in the key (Quantus default 5).
        abs: take ``|.|`` first (Quantus default True).
        normalise: divide each map by its own max ``|.|`` (Quantus default True; no effect on
            the keys).
        batch_size: images per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in [0, 1], higher is better; NaN where no other image of the batch has the
        same key.
    """
    maps, images, labels, device = model_inputs("consistency", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    keys = discretise_maps(prepare_maps(maps, abs=abs, normalise=normalise), how=discretise, n=n)
    pred = predicted_classes(model, images, batch_size=batch_size)
    others = ~torch.eye(len(keys), dtype=torch.bool, device=device)
    same_key = (keys.unsqueeze(1) == keys.unsqueeze(0)).all(-1) & others
    same_pred = pred.view(-1, 1) == pred.view(1, -1)
    count = same_key.sum(1)
    score = (same_key & same_pred).sum(1).double() / count.clamp_min(1).double()
    return nan_where(
        score, count == 0, "consistency", "no other image of the batch has the same explanation"
    )
