"""Robustness metrics: how much the explanation changes under small input noise.

They call ``explainer(model, images, targets) -> (N, H, W)`` on perturbed copies of the images;
all the noisy copies of a chunk go to the explainer in one call (``batch_size`` copies at most),
not one call per sample as in Quantus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from concilium.metrics._common import nan_where, prepare_maps
from concilium.metrics.perturb import check_batch_size, model_inputs, predicted_classes
from concilium.metrics.registry import register_metric

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_explainer(metric: str, explainer: object) -> Explainer:
    if explainer is None:
        raise ValueError(
            f"{metric} needs explainer(model, images, targets) -> (N, H, W); pass explainer=..."
        )
    if not callable(explainer):
        raise TypeError(f"explainer must be callable; got {type(explainer).__name__}")
    return explainer  # type: ignore[return-value]


def explain_in_chunks(
    explainer: Explainer, model: nn.Module, images: Tensor, targets: Tensor, *, batch_size: int
) -> Tensor:
    """Call ``explainer`` on ``batch_size`` images at a time; check and concatenate the maps."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        m = explainer(model, x, targets[start : start + batch_size])
        if not isinstance(m, Tensor) or tuple(m.shape) != (x.shape[0], *x.shape[-2:]):
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"explainer must return maps (N, H, W) = {(x.shape[0], *x.shape[-2:])}; got {got} "
                "(reduce the channel axis, e.g. attributions.sum(1))"
            )
        out.append(m.detach().to(images.device).float())
    return torch.cat(out)


def _noisy_scores(
    metric: str,
    maps: Tensor,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: object,
    generator: torch.Generator | None,
    *,
    nr_samples: int,
    noise: Literal["uniform", "gaussian"],
    low: float,
    high: float,
    std: float,
    mean: float,
    abs: bool,
    normalise: bool,
    batch_size: int | None,
    return_nan_when_prediction_changes: bool,
    lipschitz: bool,
) -> Tensor:
    """``(N, nr_samples)`` per-sample sensitivities (or Lipschitz quotients)."""
    maps, images, labels, device = model_inputs(metric, maps, images, labels, model)
    fn = _check_explainer(metric, explainer)
    batch_size = check_batch_size(batch_size, device)
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1; got {nr_samples}")
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1).double()
    n = images.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    pred0 = (
        predicted_classes(model, images, batch_size=batch_size)
        if return_nan_when_prediction_changes
        else None
    )
    out = torch.empty(n, nr_samples, dtype=torch.float64, device=device)
    total = n * nr_samples
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total), device=device)
        i, s = flat // nr_samples, flat % nr_samples
        x = images[i]
        if noise == "uniform":
            eps = torch.rand(x.shape, generator=generator, device=gen_device) * (high - low) + low
        else:
            eps = torch.randn(x.shape, generator=generator, device=gen_device) * std + mean
        x_noisy = x + eps.to(device=device, dtype=x.dtype)
        a_noisy = explain_in_chunks(fn, model, x_noisy, labels[i], batch_size=batch_size)
        a_noisy = prepare_maps(a_noisy, abs=abs, normalise=normalise).flatten(1).double()
        diff = torch.linalg.vector_norm(a[i] - a_noisy, dim=1)
        if lipschitz:
            value = diff / (
                torch.linalg.vector_norm((x - x_noisy).flatten(1).double(), dim=1) + 1e-10
            )
        else:
            value = diff / torch.linalg.vector_norm(a[i], dim=1)
        if pred0 is not None:
            changed = predicted_classes(model, x_noisy, batch_size=batch_size) != pred0[i]
            value = value.masked_fill(changed, float("nan"))
        out[i, s] = value
    return out


def _reduce(metric: str, values: Tensor, maps: Tensor, how: Literal["max", "mean"]) -> Tensor:
    all_nan = torch.isnan(values).all(1)
    filled = torch.where(torch.isnan(values), torch.full_like(values, -torch.inf), values)
    if how == "max":
        score = filled.amax(1)
    else:
        score = torch.nanmean(values, dim=1)
    score = nan_where(score, all_nan, metric, "every noisy copy changed the prediction")
    zero = (maps.flatten(1) == 0).all(1).to(score.device)
    return nan_where(score, zero, metric, "their map is all zeros (relative change undefined)")


def _sensitivity(metric: str, how: Literal["max", "mean"], maps: Tensor, **kw) -> Tensor:
    values = _noisy_scores(metric, maps, noise="uniform", std=0.0, mean=0.0, lipschitz=False, **kw)
    return _reduce(metric, values, maps, how)


@register_metric(
    "max_sensitivity",
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
)
def max_sensitivity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    abs: bool = False,
    normalise: bool = True,
    return_nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019): the largest ``||a - a'||_F / ||a||_F`` over
    ``nr_samples`` copies with U(-lower_bound, lower_bound) noise on every value.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: random source of the noise.
        nr_samples: noisy copies per image (Quantus default 200).
        lower_bound: noise half-width (Quantus default 0.2).
        abs: take ``|.|`` of both maps first (Quantus default False).
        normalise: divide each map by its own max ``|.|`` (Quantus default True, per batch).
        return_nan_when_prediction_changes: ignore copies whose prediction changed (NaN if all).
        batch_size: noisy copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better; NaN for an all-zero map.
    """
    return _sensitivity(
        "max_sensitivity",
        "max",
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=explainer,
        generator=generator,
        nr_samples=nr_samples,
        low=-lower_bound,
        high=lower_bound,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
    )


@register_metric(
    "avg_sensitivity",
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
)
def avg_sensitivity(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    nr_samples: int = 200,
    lower_bound: float = 0.2,
    abs: bool = False,
    normalise: bool = True,
    return_nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Average sensitivity (Yeh et al. 2019): the mean of ``||a - a'||_F / ||a||_F`` over
    ``nr_samples`` copies with U(-lower_bound, lower_bound) noise. Arguments as
    :func:`max_sensitivity`.

    Returns:
        ``(N,)``, lower is better; NaN for an all-zero map.
    """
    return _sensitivity(
        "avg_sensitivity",
        "mean",
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=explainer,
        generator=generator,
        nr_samples=nr_samples,
        low=-lower_bound,
        high=lower_bound,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
    )


@register_metric(
    "local_lipschitz",
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
)
def local_lipschitz(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    nr_samples: int = 200,
    perturb_mean: float = 0.0,
    perturb_std: float = 0.1,
    abs: bool = False,
    normalise: bool = True,
    return_nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018): the largest
    ``||a - a'||_2 / (||x - x'||_2 + 1e-10)`` over ``nr_samples`` copies with Gaussian noise.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: random source of the noise.
        nr_samples: noisy copies per image (Quantus default 200).
        perturb_mean: noise mean (Quantus default 0).
        perturb_std: noise std (Quantus default 0.1).
        abs: take ``|.|`` of both maps first (Quantus default False).
        normalise: divide each map by its own max ``|.|`` (Quantus default True, per batch).
        return_nan_when_prediction_changes: ignore copies whose prediction changed (NaN if all).
        batch_size: noisy copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better.
    """
    values = _noisy_scores(
        "local_lipschitz",
        maps,
        images,
        labels,
        model,
        explainer,
        generator,
        nr_samples=nr_samples,
        noise="gaussian",
        low=0.0,
        high=0.0,
        std=perturb_std,
        mean=perturb_mean,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
        lipschitz=True,
    )
    all_nan = torch.isnan(values).all(1)
    score = torch.where(torch.isnan(values), torch.full_like(values, -torch.inf), values).amax(1)
    return nan_where(score, all_nan, "local_lipschitz", "every noisy copy changed the prediction")
