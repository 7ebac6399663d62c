"""Robustness metrics: how much the explanation changes under small input noise.

They call ``explainer(model, images, targets) -> (N, H, W)`` on perturbed copies of the images;
all the noisy copies of a chunk go to the explainer in one call (``batch_size`` copies at most),
not one call per sample as in Quantus. One core, :func:`noisy_quotients`, draws the copies and
returns the per-copy quotients; each metric only chooses the noise and how to reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import nan_where, prepare_maps
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics._streams import draw_rows, image_streams
from concilium.metrics.perturb import check_batch_size, model_inputs, predicted_classes
from concilium.metrics.registry import register_metric

NoiseFn = Callable[[torch.Size, torch.Generator], Tensor]
"""``noise(shape, generator) -> Tensor``: additive input noise of one image's ``shape``, drawn
from ``generator`` (the copy's own, seeded from its image's stream)."""


def uniform_noise(*, low: float, high: float) -> NoiseFn:
    """U(low, high) noise."""

    def draw(shape: torch.Size, generator: torch.Generator) -> Tensor:
        return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low

    return draw


def gaussian_noise(*, mean: float, std: float) -> NoiseFn:
    """N(mean, std^2) noise."""

    def draw(shape: torch.Size, generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device) * std + mean

    return draw


def noisy_copies(
    images: Tensor, *, generator: torch.Generator | None, noise: NoiseFn, nr_samples: int,
    batch_size: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The noisy copies ``x' = x + noise`` of every image, ``batch_size`` rows at a time, as
    ``(image index i, copy index s, x')``. Copy ``s`` of an image draws its noise from the
    image's stream (key ``("noise", s)``), so it is the same whatever the batch and chunking."""
    streams = image_streams(generator, images)
    shape = images.shape[1:]
    total = images.shape[0] * nr_samples
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total), device=images.device)
        i, s = flat // nr_samples, flat % nr_samples
        seeds = [
            derive_seed(streams[ii], "noise", ss)
            for ii, ss in zip(i.tolist(), s.tolist(), strict=True)
        ]
        drawn = draw_rows(seeds, lambda g: noise(shape, g), images.device)
        yield i, s, images[i] + drawn.to(dtype=images.dtype)


def noisy_quotients(
    metric: str,
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None,
    noise: NoiseFn,
    nr_samples: int,
    per: Literal["map", "input"],
    abs: bool,
    normalise: bool,
    return_nan_when_prediction_changes: bool,
    batch_size: int | None,
) -> Tensor:
    """``(N, nr_samples)``: ``||a - a'|| / ||a||`` (``per="map"``, sensitivity) or
    ``||a - a'|| / (||x - x'|| + 1e-10)`` (``per="input"``, Lipschitz) for each noisy copy
    ``x' = x + noise``, ``a'`` its explanation; NaN for a copy whose prediction changed when
    ``return_nan_when_prediction_changes``. Copy ``s`` of an image draws its noise from the
    image's stream (key ``("noise", s)``), so it is the same whatever the batch and chunking."""
    maps, images, labels, device = model_inputs(metric, maps, images, labels, model)
    fn = check_explainer(metric, explainer)
    batch_size = check_batch_size(batch_size, device)
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1; got {nr_samples}")
    a = prepare_maps(maps, abs=abs, normalise=normalise).flatten(1).double()
    n = images.shape[0]
    pred0 = (
        predicted_classes(model, images, batch_size=batch_size)
        if return_nan_when_prediction_changes
        else None
    )
    out = torch.empty(n, nr_samples, dtype=torch.float64, device=device)
    for i, s, x_noisy in noisy_copies(images, generator=generator, noise=noise,
                                      nr_samples=nr_samples, batch_size=batch_size):
        x = images[i]
        a_noisy = explain_in_chunks(fn, model, x_noisy, labels[i], batch_size=batch_size, shared=True)
        a_noisy = prepare_maps(a_noisy, abs=abs, normalise=normalise).flatten(1).double()
        diff = torch.linalg.vector_norm(a[i] - a_noisy, dim=1)
        if per == "input":
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


def _noisy_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    samples = int(params["nr_samples"])
    return samples + (1 + samples if params["return_nan_when_prediction_changes"] else 0)


def _over_copies(metric: str, how: Literal["max", "mean"], values: Tensor) -> Tensor:
    """``(N,)``: the largest or the mean value of each row of ``values (N, copies)``. A NaN copy
    (its prediction changed, with ``return_nan_when_prediction_changes``) makes the image NaN,
    with a warning, as in Quantus (``np.max`` / ``np.mean``, not their NaN-ignoring forms)."""
    score = values.amax(1) if how == "max" else values.mean(1)
    return nan_where(
        score,
        torch.isnan(values).any(1),
        metric,
        "a noisy copy changed the prediction (return_nan_when_prediction_changes=True)",
    )


def _sensitivity(
    metric: str, how: Literal["max", "mean"], values: Tensor, maps: Tensor
) -> Tensor:
    score = _over_copies(metric, how, values)
    zero = (maps.flatten(1) == 0).all(1).to(score.device)
    return nan_where(score, zero, metric, "their map is all zeros (relative change undefined)")


_SENSITIVITY_ARGS = """

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: seeds each image's stream, from which every noisy copy draws its noise.
        nr_samples: noisy copies per image (Quantus default 200).
        lower_bound: noise half-width (Quantus default 0.2).
        abs: take ``|.|`` of both maps first (Quantus default False).
        normalise: divide each map (and each noisy map) by its own max ``|.|`` first (Quantus
            default False; True hides changes of magnitude).
        return_nan_when_prediction_changes: NaN for an image (with a ``MetricWarning``) when
            any of its noisy copies changes the model's prediction (Quantus default False).
        batch_size: noisy copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better; NaN for an all-zero map, or (with
        ``return_nan_when_prediction_changes``) when a copy changed the prediction.
"""


def _sensitivity_metric(
    name: str, *, how: Literal["max", "mean"], summary: str
) -> Callable[..., Tensor]:
    """Build and register the sensitivity metric ``name`` (reduce the copies by ``how``)."""

    def metric(
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
        normalise: bool = False,
        return_nan_when_prediction_changes: bool = False,
        batch_size: int | None = None,
    ) -> Tensor:
        values = noisy_quotients(
            name,
            maps,
            images=images,
            labels=labels,
            model=model,
            explainer=explainer,
            generator=generator,
            noise=uniform_noise(low=-lower_bound, high=lower_bound),
            nr_samples=nr_samples,
            per="map",
            abs=abs,
            normalise=normalise,
            return_nan_when_prediction_changes=return_nan_when_prediction_changes,
            batch_size=batch_size,
        )
        return _sensitivity(name, how, values, maps)

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = summary + _SENSITIVITY_ARGS
    return register_metric(
        category="robustness",
        higher_is_better=False,
        needs_model=True,
        needs_explainer=True,
        stochastic=True,
        passes=_noisy_passes,
    )(metric)


max_sensitivity = _sensitivity_metric(
    "max_sensitivity",
    how="max",
    summary="""Max-sensitivity (Yeh et al. 2019): the largest ``||a - a'||_F / ||a||_F`` over
    ``nr_samples`` copies with U(-lower_bound, lower_bound) noise on every value.""",
)
avg_sensitivity = _sensitivity_metric(
    "avg_sensitivity",
    how="mean",
    summary="""Average sensitivity (Yeh et al. 2019): the mean of ``||a - a'||_F / ||a||_F`` over
    ``nr_samples`` copies with U(-lower_bound, lower_bound) noise on every value.""",
)


@register_metric(
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
    passes=_noisy_passes,
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
        generator: seeds each image's stream, from which every noisy copy draws its noise.
        nr_samples: noisy copies per image (Quantus default 200).
        perturb_mean: noise mean (Quantus default 0).
        perturb_std: noise std (Quantus default 0.1).
        abs: take ``|.|`` of both maps first (Quantus default False).
        normalise: divide each map by its own max ``|.|`` (Quantus default True, but by the
            batch's max there).
        return_nan_when_prediction_changes: NaN for an image (with a ``MetricWarning``) when
            any of its noisy copies changes the model's prediction (Quantus default False).
        batch_size: noisy copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better; NaN (with
        ``return_nan_when_prediction_changes``) when a copy changed the prediction.
    """
    values = noisy_quotients(
        "local_lipschitz",
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=explainer,
        generator=generator,
        noise=gaussian_noise(mean=perturb_mean, std=perturb_std),
        nr_samples=nr_samples,
        per="input",
        abs=abs,
        normalise=normalise,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
        batch_size=batch_size,
    )
    return _over_copies("local_lipschitz", "max", values)
