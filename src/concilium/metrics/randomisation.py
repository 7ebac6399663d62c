"""Randomisation metrics: does the explanation depend on what the model learned?

Both call ``explainer(model, images, targets) -> (N, H, W)``. The user's model is never touched:
MPRT randomises layers of a deep copy, each layer re-initialised by its own ``reset_parameters``
under a forked, seeded global RNG (the global RNG state is restored afterwards).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import (
    nan_where,
    pearson,
    prepare_maps,
    rankdata,
    spearman,
    ssim2d,
)
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics._streams import draw_rows, image_streams
from concilium.metrics.perturb import check_batch_size, model_inputs
from concilium.metrics.registry import register_metric

Similarity = Literal["spearman", "ssim"]


def _similarity(kind: Similarity, a: Tensor, b: Tensor) -> Tensor:
    if kind == "spearman":
        return spearman(a.flatten(1), b.flatten(1))
    if kind == "ssim":
        return ssim2d(a, b)
    raise ValueError(f"similarity must be 'spearman' or 'ssim'; got {kind!r}")


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The layers MPRT randomises, bottom-up, each as ``(name, module names)``.

    A plain model: every module that owns a ``reset_parameters``, one per group, in module order
    (as Quantus enumerates them). A model that defines ``randomisation_groups()`` (an ensemble
    model, whose "layer k" is every member's layer k) gives its own groups.
    """
    groups = getattr(model, "randomisation_groups", None)
    if callable(groups):
        return [(str(name), list(names)) for name, names in groups()]
    return [(name, [name]) for name, m in model.named_modules() if hasattr(m, "reset_parameters")]


def randomisable_layers(model: nn.Module) -> list[str]:
    """The names of the layers MPRT randomises, bottom-up (see :func:`layer_groups`)."""
    return [name for name, _ in layer_groups(model)]


def mprt_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    order: Literal["top_down", "bottom_up", "independent"] = "top_down",
    similarity: Similarity = "spearman",
    seed: int = 42,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> tuple[list[str], Tensor]:
    """Similarity of ``maps`` to the maps of the model with layers randomised, per layer.

    ``"top_down"`` randomises the layers cumulatively from the output to the input (cascading),
    ``"bottom_up"`` cumulatively from the input, ``"independent"`` one layer at a time on a fresh
    copy. Each layer is re-initialised with ``torch.manual_seed(seed + 1)`` inside
    ``torch.random.fork_rng`` (so the randomised weights equal Quantus's for the same seed).

    Returns:
        ``(layer_names, scores (N, L))``.
    """
    maps, images, labels, device = model_inputs("mprt", maps, images, labels, model)
    fn = check_explainer("mprt", explainer)
    batch_size = check_batch_size(batch_size, device)
    if order not in ("top_down", "bottom_up", "independent"):
        raise ValueError(f"order must be 'top_down', 'bottom_up' or 'independent'; got {order!r}")
    if similarity not in ("spearman", "ssim"):
        raise ValueError(f"similarity must be 'spearman' or 'ssim'; got {similarity!r}")
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    # spearman(a, b) is pearson(ranks(a), ranks(b)): rank the reference maps once
    a_ranks = rankdata(a.flatten(1)) if similarity == "spearman" else None
    groups = layer_groups(model)
    if not groups:
        raise ValueError("the model has no layer with reset_parameters() to randomise")
    if order == "top_down":
        groups = groups[::-1]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    devices = [device] if device.type == "cuda" else []
    scores = []
    for _, names in groups:
        if order == "independent":
            work.load_state_dict(original)
        for i, name in enumerate(names):  # a plain model's group is one layer: seed + 1
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + 1 + i)
                modules[name].reset_parameters()
        b = explain_in_chunks(fn, work, images, labels, batch_size=batch_size)
        b = prepare_maps(b, abs=abs, normalise=normalise)
        if a_ranks is not None:
            scores.append(pearson(a_ranks, rankdata(b.flatten(1))))
        else:
            scores.append(_similarity(similarity, a, b))
    return [name for name, _ in groups], torch.stack(scores, dim=1)


def _mprt_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return layers  # one explanation per randomised layer


@register_metric(
    category="randomisation",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    passes=_mprt_passes,
    curve=mprt_curve,
)
def mprt(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    order: Literal["top_down", "bottom_up", "independent"] = "top_down",
    similarity: Similarity = "spearman",
    aggregate: Literal["mean", "last"] = "mean",
    seed: int = 42,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Model parameter randomisation test (Adebayo et al. 2018): similarity between the maps and
    the maps of the randomised model, averaged over the randomised layers (``"mean"``) or at the
    last layer (``"last"``, fully randomised when cascading). Lower is better.

    Quantus's average also includes the similarity of the original maps to themselves (about 1),
    which biases it upwards; it is excluded here.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        order: ``"top_down"`` (cascading, Quantus default), ``"bottom_up"`` or ``"independent"``.
        similarity: ``"spearman"`` (Quantus default) or ``"ssim"`` (2-D).
        aggregate: ``"mean"`` over layers or the ``"last"`` layer.
        seed: re-initialisation seed (Quantus default 42).
        abs: take ``|.|`` of the maps first (Quantus default True).
        normalise: divide each map by its max ``|.|``.
        batch_size: images per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where a map is constant.
    """
    if aggregate not in ("mean", "last"):
        raise ValueError(f"aggregate must be 'mean' or 'last'; got {aggregate!r}")
    _, scores = mprt_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=explainer,
        order=order,
        similarity=similarity,
        seed=seed,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
    )
    score = scores.mean(1) if aggregate == "mean" else scores[:, -1]
    reason = "a map (theirs or a randomised model's) is constant"
    return nan_where(score, torch.isnan(score), "mprt", reason)


def _random_logit_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 1  # one explanation for the other class (+ one image to read num_classes if None)


@register_metric(
    category="randomisation",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
    passes=_random_logit_passes,
)
def random_logit(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
    similarity: Similarity = "ssim",
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Random logit test (Sixt et al. 2020): similarity between the map of the label and the map
    of a uniformly drawn other class. Lower is better (the explanation is class-specific).

    Quantus computes SSIM on the flattened maps (a 1-D SSIM); here it is the 2-D SSIM of the two
    maps (7x7 window, as ``skimage.metrics.structural_similarity``).

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: seeds each image's stream, from which its other class is drawn.
        num_classes: number of classes (default: the model's output width).
        similarity: ``"ssim"`` (Quantus default) or ``"spearman"``.
        abs: take ``|.|`` of the maps first (Quantus default False).
        normalise: divide each map by its max ``|.|``.
        batch_size: images per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where both maps are constant.
    """
    maps, images, labels, device = model_inputs("random_logit", maps, images, labels, model)
    fn = check_explainer("random_logit", explainer)
    batch_size = check_batch_size(batch_size, device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(images[:1]).shape[1])
    if num_classes < 2:
        raise ValueError(f"random_logit needs at least 2 classes; got num_classes={num_classes}")
    draw = draw_rows(
        [derive_seed(s, "class") for s in image_streams(generator, images)],
        lambda g: torch.randint(0, num_classes - 1, (), generator=g, device=g.device),
        device,
    )
    other = draw + (draw >= labels).long()  # uniform over the classes != label
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    b = prepare_maps(
        explain_in_chunks(fn, model, images, other, batch_size=batch_size, shared=True),
        abs=abs,
        normalise=normalise,
    )
    score = _similarity(similarity, a, b)
    return nan_where(score, torch.isnan(score), "random_logit", "both of their maps are constant")
