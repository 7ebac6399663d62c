"""The uniform entry point: ``evaluate(name, maps, ...)`` for any registered metric."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from concilium._checks import check_maps, check_masks
from concilium.metrics._explainer import Explainer
from concilium.metrics.perturb import check_model_inputs
from concilium.metrics.registry import METRICS, MetricSpec, metrics_in, param_names
from concilium.metrics.shared import shared_passes

#: Seed of the generator used when a stochastic metric is evaluated without one.
DEFAULT_SEED = 0


def check_params(spec: MetricSpec, params: dict[str, Any], *, curve: bool = False) -> None:
    """Raise ``ValueError`` naming every unknown parameter of the metric (or of its curve) and
    listing the valid ones with their defaults."""
    valid = spec.params if not curve else param_names(spec.curve)[0]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        what = f"the curve of {spec.name!r}" if curve else f"metric {spec.name!r}"
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for {what}; "
            f"valid parameters (with defaults): {listed}"
        )


def _check_inputs(
    spec: MetricSpec,
    maps: Tensor,
    images: Tensor | None,
    labels: Tensor | None,
    masks: Tensor | None,
    model: nn.Module | None,
    explainer: Explainer | None,
) -> None:
    check_maps(maps)
    if spec.needs_mask:
        if masks is None:
            raise ValueError(f"metric {spec.name!r} needs masks (N, H, W) bool; pass masks=...")
        check_masks(masks, like=maps)
    if spec.needs_model:
        check_model_inputs(f"metric {spec.name!r}", maps, images, labels, model)
    if spec.needs_explainer and explainer is None:
        raise ValueError(
            f"metric {spec.name!r} needs explainer(model, images, targets) -> (N, H, W); "
            "pass explainer=..."
        )


def _bind(
    spec: MetricSpec,
    fn: Callable[..., Any],
    maps: Tensor,
    *,
    images: Tensor | None,
    labels: Tensor | None,
    masks: Tensor | None,
    model: nn.Module | None,
    explainer: Explainer | None,
    generator: torch.Generator | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Check the parameters and inputs of ``fn`` (the metric or its curve) and return its
    keyword arguments: the data inputs it accepts, then ``params``.

    A function that takes ``generator`` and gets none is given
    ``torch.Generator().manual_seed(DEFAULT_SEED)``, so every draw (the metric's own, or a
    ``"uniform"`` baseline's) is seeded and the global RNG is never used.
    """
    check_params(spec, params, curve=fn is not spec.fn)
    _check_inputs(spec, maps, images, labels, masks, model, explainer)
    data_args = param_names(fn)[1]
    if generator is None and "generator" in data_args:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    data = {
        "images": images,
        "labels": labels,
        "masks": masks,
        "model": model,
        "explainer": explainer,
        "generator": generator,
    }
    return {**{k: data[k] for k in data_args}, **params}


def evaluate(
    name: str,
    maps: Tensor,
    *,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    masks: Tensor | None = None,
    model: nn.Module | None = None,
    explainer: Explainer | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> Tensor:
    """Score every map with the metric ``name``: one value per image.

    Inputs a metric does not need are ignored, so one call shape serves every metric.
    ``params`` are checked against the metric's real signature (``METRICS.get(name).params``).
    A metric that takes a ``generator`` and is called without one uses
    ``torch.Generator().manual_seed(0)``, so results are reproducible by default.

    Args:
        name: a registered metric (``METRICS.names()``).
        maps: explanations ``(N, H, W)``.
        images: ``(N, C, H, W)`` in [0, 1] (model-bound metrics).
        labels: ``(N,)`` target classes (model-bound metrics).
        masks: ``(N, H, W)`` bool ground truth (localisation metrics).
        model: the classifier (model-bound metrics); never modified.
        explainer: ``explainer(model, images, targets) -> (N, H, W)`` (robustness,
            randomisation).
        generator: random source of stochastic metrics and random baselines.
        **params: the metric's parameters.

    Returns:
        ``(N,)`` float64 scores on the device of ``maps``; NaN (with a warning) where an image's
        score is undefined.

    Raises:
        ValueError: unknown metric or parameter, missing or mis-shaped input.
        TypeError: an input of the wrong type.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 4, 4); maps[0, 1, 1] = 1.0
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True
        >>> evaluate("pointing_game", maps, masks=masks)
        tensor([1.], dtype=torch.float64)
    """
    spec = METRICS.get(name)
    kwargs = _bind(
        spec,
        spec.fn,
        maps,
        images=images,
        labels=labels,
        masks=masks,
        model=model,
        explainer=explainer,
        generator=generator,
        params=params,
    )
    scores = spec.fn(maps, **kwargs)
    return scores.double().to(maps.device).reshape(maps.shape[0])


def evaluate_curve(
    name: str,
    maps: Tensor,
    *,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    masks: Tensor | None = None,
    model: nn.Module | None = None,
    explainer: Explainer | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> Any:
    """The curve behind a curve metric (``deletion``, ``insertion``, ``pixel_flipping``, ``road``,
    ``mprt``...): whatever its curve function returns (see ``METRICS.get(name).curve``), with
    the same defaults as the metric.

    Inputs, ``params`` and the default generator are handled as in :func:`evaluate`; ``params``
    are checked against the curve function's signature.

    Raises:
        ValueError: if the metric has no curve, or for an unknown parameter.
    """
    spec = METRICS.get(name)
    if spec.curve is None:
        with_curve = [n for n, s in METRICS.items() if s.curve is not None]
        raise ValueError(f"metric {name!r} has no curve; metrics with one: {', '.join(with_curve)}")
    kwargs = _bind(
        spec,
        spec.curve,
        maps,
        images=images,
        labels=labels,
        masks=masks,
        model=model,
        explainer=explainer,
        generator=generator,
        params=params,
    )
    return spec.curve(maps, **kwargs)


def evaluate_suite(
    names: Sequence[str],
    maps: Tensor,
    *,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    masks: Tensor | None = None,
    model: nn.Module | None = None,
    explainer: Explainer | None = None,
    seed: int = DEFAULT_SEED,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """Score ``maps`` with several metrics at once, sharing their passes: inside one
    :func:`~concilium.metrics.shared.shared_passes` scope, every distinct perturbed copy is sent
    through the model once and every distinct input through the explainer once, whichever
    metrics ask for it (deletion, AOPC and monotonicity read the same copies; the sensitivities
    the same noisy explanations).

    Every metric that takes a generator gets a fresh ``torch.Generator().manual_seed(seed)``,
    so each value equals ``evaluate(name, ..., generator=torch.Generator().manual_seed(seed))``
    run alone (up to the float rounding of batching a copy with other neighbours).

    Args:
        names: metric names and/or families (``"faithfulness,deletion"``-style tokens, resolved
            by :func:`~concilium.metrics.registry.metrics_in`).
        maps, images, labels, masks, model, explainer: as :func:`evaluate`.
        seed: the seed of every metric's generator.
        params: per-metric parameters, ``{"deletion": {"step": 10}}``.

    Returns:
        ``{name: (N,) float64}``, in the order of :func:`~concilium.metrics.registry.metrics_in`.

    Raises:
        ValueError: an unknown metric or parameter, or a missing input.
    """
    resolved = metrics_in(",".join(names))
    params = {k: dict(v) for k, v in (params or {}).items()}
    unknown = sorted(set(params) - set(resolved))
    if unknown:
        raise ValueError(f"parameters given for metric(s) not selected: {', '.join(unknown)}")
    for name in resolved:
        check_params(METRICS.get(name), params.get(name, {}))
    out: dict[str, Tensor] = {}
    with shared_passes():
        for name in resolved:
            out[name] = evaluate(
                name,
                maps,
                images=images,
                labels=labels,
                masks=masks,
                model=model,
                explainer=explainer,
                generator=torch.Generator().manual_seed(seed),
                **params.get(name, {}),
            )
    return out
