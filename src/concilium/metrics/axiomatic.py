"""Axiomatic metrics: does the explanation obey a property every attribution should have?

``completeness`` (the attributions sum to the change of the output), ``non_sensitivity`` (zero
attribution exactly where the model does not care) and ``input_invariance`` (a constant input
shift that the model absorbs leaves the explanation unchanged). Quantus 0.6.0's "axiomatic"
category; each returns 1/0 (or a count) per image, as Quantus does.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import prepare_maps
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics._streams import image_streams
from concilium.metrics.features import feature_labels, parse_features
from concilium.metrics.perturb import (
    Baseline,
    check_batch_size,
    model_inputs,
    row_baselines,
    target_scores,
    variant_scores,
)
from concilium.metrics.regions import by_length, feature_relevance
from concilium.metrics.registry import register_metric


def _completeness_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 2  # the image and its baseline


@register_metric(
    category="axiomatic",
    higher_is_better=True,
    needs_model=True,
    passes=_completeness_passes,
)
def completeness(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    baseline: Baseline = "black",
    abs: bool = False,
    normalise: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    batch_size: int | None = None,
) -> Tensor:
    """Completeness (Sundararajan et al. 2017; summation to delta, conservation): 1 where the
    map sums to the change of the target logit from the baseline to the image,
    ``|sum(a) - (f(x) - f(b))| <= atol + rtol * |f(x) - f(b)|``, else 0. Higher is better.

    Quantus tests exact float equality ``sum(a) == f(x) - f(b)``, which rounding alone breaks;
    here it is a tolerance. Quantus's default ``normalise=True`` (each map divided by its max)
    discards the scale the test is about, so at the defaults almost every map fails; pass
    ``normalise=False`` for the test of the paper.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline.
        baseline: the reference input (Quantus default ``"black"``, each image's minimum; an
            integrated-gradients map from a zero baseline needs ``"zero"``).
        abs: sum ``|maps|`` (Quantus default False).
        normalise: divide each map by its max ``|.|`` first (Quantus default True).
        rtol, atol: the tolerance of the equality.
        batch_size: images per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` of 0.0 and 1.0 (logits, as Quantus).
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0; got rtol={rtol}, atol={atol}")
    maps, images, labels, device = model_inputs("completeness", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    a = prepare_maps(maps, abs=abs, normalise=normalise).double().flatten(1).sum(1)
    streams = image_streams(generator, images)  # a draw depends on its image, not its position
    base = row_baselines(images, labels, baseline, [derive_seed(t, "baseline") for t in streams])
    both = target_scores(
        model, torch.cat([images, base]), torch.cat([labels, labels]), softmax=False,
        batch_size=batch_size,
    ).double()
    delta = both[: images.shape[0]] - both[images.shape[0] :]
    return ((a - delta).abs() <= atol + rtol * delta.abs()).double()


def _non_sensitivity_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    n_features = parse_features(params["features"]).count_bound(size)
    return 1 + math.ceil(n_features / int(params["step"]))  # the image + one per group


def _non_sensitivity_passes_exact(params: Mapping[str, Any]) -> bool:
    return parse_features(params["features"]).fixed  # superpixels: one group per segment


@register_metric(
    category="axiomatic",
    higher_is_better=False,
    needs_model=True,
    passes=_non_sensitivity_passes,
    passes_exact=_non_sensitivity_passes_exact,
)
def non_sensitivity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
    step: int = 1,
    baseline: Baseline = "black",
    softmax: bool = True,
    abs: bool = True,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """Non-sensitivity (Nguyen & Martinez 2020): the number of features (pixels by default)
    where zero attribution and the model's indifference disagree. Each group of ``step``
    features (in the order of their numbers: raster order for pixels and patches) is set to the
    baseline alone; a feature is a violation when its attribution (the sum of the map over it)
    is below ``eps`` but its group changes the target score by ``eps`` or more, or the other way
    round. Lower is better.

    A pixel is all its channels: Quantus replaces one channel value at a time and counts
    ``C * H * W`` features; with one channel the two agree. Quantus's ``features_in_step > 1``
    fails on a shape mismatch; here every pixel of a group takes the group's verdict.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline.
        eps: the threshold of "zero" for both the attribution and the change of the score
            (Quantus default 1e-5).
        step: features per perturbation (Quantus's ``features_in_step``, default 1): the cost
            is ``1 + F / step`` model passes per image with ``F`` features.
        baseline: replacement values (Quantus default ``"black"``, each image's minimum).
        softmax: score the softmax probability, not the logit (Quantus default True).
        abs: take ``|maps|`` (Quantus default True).
        normalise: divide each map by its max ``|.|`` (Quantus default True).
        features: what one perturbation replaces (:mod:`concilium.metrics.features`):
            ``"pixels"``, ``"patch:8"``, ``"slic"``...; superpixels make the cost depend on
            the image (``passes`` is then a bound).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` violation counts in ``[0, F]`` (``[0, H * W]`` for pixels).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int (features per perturbation); got {step!r}")
    feats = parse_features(features)
    maps, images, labels, device = model_inputs("non_sensitivity", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    n, _, h, w = images.shape
    seg, n_features = feature_labels(feats, images)
    if step > int(n_features.min()):
        raise ValueError(
            f"step ({step} features) is larger than an image's {int(n_features.min())} "
            f"features ({feats.spec}); pass a smaller step"
        )
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    f_max = int(n_features.max())
    relevance = feature_relevance(a, seg, f_max)  # (N, F) float64; pixels: the map itself
    group = seg.flatten(1) // step  # (N, H*W): each pixel's group
    n_groups = (n_features + step - 1) // step

    streams = image_streams(generator, images)  # a draw depends on its image, not its position
    base = row_baselines(images, labels, baseline, [derive_seed(t, "baseline") for t in streams])
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = torch.full((n, int(n_groups.max())), float("nan"), device=device)
    for count, rows in by_length(n_groups):  # superpixels: as many copies as groups, per image

        def replace(i: Tensor, v: Tensor, rows: Tensor = rows) -> Tensor:
            return (group[rows[i]] == v.unsqueeze(1)).view(-1, h, w)

        ys[rows] = variant_scores(
            model, images[rows], labels[rows], base[rows], replace, count, softmax=softmax,
            batch_size=batch_size,
        )  # fmt: skip
    feature_group = torch.arange(f_max, device=device) // step
    indifferent = ((ys - y0.unsqueeze(1)).abs() < eps)[:, feature_group]  # (N, F), per feature
    present = torch.arange(f_max, device=device) < n_features.unsqueeze(1)
    zero = relevance.to(a.dtype) < eps  # in the map's dtype, as the pixel test always was
    return ((indifferent ^ zero) & present).sum(1).double()


def first_layer(model: nn.Module, images: Tensor) -> tuple[str, Tensor]:
    """The first module ``model`` calls on ``images`` and the input it receives (one pass).

    Raises:
        ValueError: if that module is not a ``Conv1d/2d/3d`` or ``Linear`` receiving the images
            themselves (a shift of the input cannot then be absorbed by its bias).
    """
    seen: list[tuple[str, nn.Module, Tensor]] = []

    def record(name: str, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if not seen and args and isinstance(args[0], Tensor):
                seen.append((name, mod, args[0]))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(record(n, m)) for n, m in leaves]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("input_invariance found no layer the model calls on its input")
    name, module, received = seen[0]
    affine = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    if not isinstance(module, affine) or received is not images:
        raise ValueError(
            f"input_invariance shifts the bias of the model's first layer, which must be a "
            f"Conv or Linear receiving the images unchanged; the first module called is "
            f"{name!r} ({type(module).__name__})"
            + ("" if received is images else ", on a transformed input")
        )
    return name, received


@contextlib.contextmanager
def shifted_first_layer(
    model: nn.Module, name: str, input_shape: torch.Size, shift: float
) -> Iterator[nn.Module]:
    """``model`` with its layer ``name`` absorbing an input shift of ``shift`` (Kindermans et al.
    2019): its output is reduced by ``layer(shift) - layer(0)``, so the model maps ``x + shift``
    to exactly what it mapped ``x`` to. For a layer without padding this is the bias change
    ``b - W shift`` of the paper; with zero padding it differs at the border, which a per-channel
    bias cannot express. The hook is removed on exit."""
    layer = dict(model.named_modules())[name]
    with torch.no_grad():
        probe = torch.zeros((1, *input_shape[1:]), device=next(layer.parameters()).device)
        offset = (layer(probe + shift) - layer(probe)).detach()

    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return output - offset

    handle = layer.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def _input_invariance_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1  # one explanation of the shifted input (+ one image to find the first layer)


@register_metric(
    category="axiomatic",
    higher_is_better=True,
    needs_model=True,
    needs_explainer=True,
    passes=_input_invariance_passes,
)
def input_invariance(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    input_shift: float = -1.0,
    abs: bool = False,
    normalise: bool = False,
    atol: float = 1e-4,
    batch_size: int | None = None,
) -> Tensor:
    """Input invariance (Kindermans et al. 2019): 1 where the explanation of ``x + input_shift``
    by the model whose first layer absorbs the shift equals ``maps`` (``isclose`` with
    ``atol``, as Quantus), else 0. Higher is better. The two models compute the same function
    of the unshifted input, so a method that depends only on that function is invariant
    (gradients are; input x gradient is not).

    The shifted model is a deep copy (the user's model is untouched). Quantus changes the first
    conv's bias by the minimum over positions of ``W shift``, which is wrong at the border of a
    padded convolution and fails on a layer without bias (every concilium architecture); here
    the exact offset is subtracted (:func:`shifted_first_layer`).

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        input_shift: the constant added to every input value (Quantus default -1).
        abs: compare ``|maps|`` (Quantus default False).
        normalise: divide each map by its max ``|.|`` first (Quantus default False).
        atol: absolute tolerance of the comparison (Quantus's 1e-4; ``rtol`` 1e-5 as NumPy).
        batch_size: images per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` of 0.0 and 1.0.
    """
    maps, images, labels, device = model_inputs("input_invariance", maps, images, labels, model)
    fn = check_explainer("input_invariance", explainer)
    batch_size = check_batch_size(batch_size, device)
    work = copy.deepcopy(model)
    name, received = first_layer(work, images[:1])
    with shifted_first_layer(work, name, received.shape, float(input_shift)) as shifted:
        b = explain_in_chunks(fn, shifted, images + input_shift, labels, batch_size=batch_size)
    a = prepare_maps(maps, abs=abs, normalise=normalise).double()
    b = prepare_maps(b, abs=abs, normalise=normalise).double()
    close = (a - b).abs() <= atol + 1e-5 * b.abs()
    return close.flatten(1).all(1).double()
