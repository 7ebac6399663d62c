"""The repaired model parameter randomisation tests of Hedström et al. 2023 ("Sanity Checks
Revisited"): ``smooth_mprt`` (sMPRT: MPRT on explanations denoised by averaging over noisy
inputs) and ``efficient_mprt`` (eMPRT: the rise of the explanation's entropy when the model is
fully randomised).

Both randomise layers of a deep copy of the model, each re-initialised by its own
``reset_parameters`` under ``torch.manual_seed(seed + 1)`` inside a forked RNG, as
:func:`concilium.metrics.randomisation.mprt_curve` (Quantus's randomised weights; the global RNG
state is restored afterwards).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import nan_where, prepare_maps
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics._streams import base_seed, draw_rows, image_streams
from concilium.metrics.perturb import check_batch_size, model_inputs
from concilium.metrics.randomisation import Similarity, layer_groups, mprt_curve
from concilium.metrics.registry import register_metric


def smoothed(
    explainer: Explainer,
    *,
    nr_samples: int,
    noise_magnitude: float,
    generator: torch.Generator | None,
) -> Explainer:
    """``explainer`` denoised: the mean of its maps over ``nr_samples`` copies of the images
    with Gaussian noise of std ``noise_magnitude * (max - min)`` of each image, the last copy
    noise-free (so one sample is the plain explanation), as Quantus's ``SmoothMPRT``.

    Raises:
        ValueError: for noisy copies without ``generator`` (the global RNG is never used).
    """
    if generator is None and nr_samples > 1 and noise_magnitude > 0:
        raise ValueError(
            "smooth_mprt draws noise: pass generator=torch.Generator().manual_seed(0) "
            "(evaluate() passes a seeded one by default)"
        )
    base = base_seed(generator) if generator is not None else 0

    def explain(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        # copy k of image i draws from image i's stream (the same noise at every layer), so a
        # score never depends on the image's position in the batch
        streams = image_streams(torch.Generator().manual_seed(base), images)
        shape = tuple(images.shape[1:])
        flat = images.flatten(1)
        std = noise_magnitude * (flat.amax(1) - flat.amin(1)).view(-1, *[1] * (images.dim() - 1))
        total = torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)
        for k in range(nr_samples):
            x = images
            if k < nr_samples - 1:
                noise = draw_rows([derive_seed(t, "smooth", k) for t in streams],
                                  partial(_normal, shape), images.device)
                x = images + noise * std
            total += explain_in_chunks(explainer, model, x, targets, batch_size=x.shape[0])
        return total / nr_samples

    return explain


def _normal(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device)


def _check_smoothing(nr_samples: int, noise_magnitude: float) -> None:
    if isinstance(nr_samples, bool) or not isinstance(nr_samples, int) or nr_samples < 1:
        raise ValueError(f"nr_samples must be a positive int; got {nr_samples!r}")
    if noise_magnitude < 0:
        raise ValueError(f"noise_magnitude must be >= 0; got {noise_magnitude}")


def smooth_mprt_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    order: Literal["top_down", "bottom_up", "independent"] = "bottom_up",
    similarity: Similarity = "spearman",
    nr_samples: int = 50,
    noise_magnitude: float = 0.1,
    seed: int = 42,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> tuple[list[str], Tensor]:
    """Similarity of ``maps`` to the denoised maps (:func:`smoothed`) of the model with layers
    randomised, per layer (:func:`~concilium.metrics.randomisation.mprt_curve`).

    Returns:
        ``(layer_names, scores (N, L))``.
    """
    _check_smoothing(nr_samples, noise_magnitude)
    fn = check_explainer("smooth_mprt", explainer)
    return mprt_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=smoothed(
            fn, nr_samples=nr_samples, noise_magnitude=noise_magnitude, generator=generator
        ),
        order=order,
        similarity=similarity,
        seed=seed,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
    )


def _smooth_mprt_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return layers * int(params["nr_samples"])  # nr_samples explanations per randomised layer


@register_metric(
    category="randomisation",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
    passes=_smooth_mprt_passes,
    curve=smooth_mprt_curve,
)
def smooth_mprt(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    order: Literal["top_down", "bottom_up", "independent"] = "bottom_up",
    similarity: Similarity = "spearman",
    aggregate: Literal["mean", "last"] = "mean",
    nr_samples: int = 50,
    noise_magnitude: float = 0.1,
    seed: int = 42,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Smooth MPRT (Hedström et al. 2023): :func:`~concilium.metrics.randomisation.mprt` with
    the randomised model's explanations denoised by averaging over ``nr_samples`` noisy copies
    of each image. Lower is better.

    ``maps`` are the original model's explanation, compared as given (as Quantus does when it
    is given ``a_batch``; the paper denoises them too: pass denoised maps for that). As in
    ``mprt``, the similarity of the original maps to themselves is left out of the mean
    (Quantus includes it). Quantus explains the noisy copies with ``quantus.explain`` whatever
    ``explain_func`` it is given; here the ``explainer`` is used.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: random source of the noise.
        order: ``"bottom_up"`` (cascading from the input, Quantus default), ``"top_down"`` or
            ``"independent"``.
        similarity: ``"spearman"`` (Quantus default) or ``"ssim"`` (2-D).
        aggregate: ``"mean"`` over layers or the ``"last"`` layer.
        nr_samples: noisy copies per explanation (Quantus default 50).
        noise_magnitude: noise std as a fraction of each image's value range (default 0.1).
        seed: re-initialisation seed (Quantus default 42).
        abs: take ``|.|`` of the maps first (Quantus default True).
        normalise: divide each map by its max ``|.|`` (Quantus divides by the root of the mean
            second moment: no effect on ``"spearman"``).
        batch_size: images per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where a map is constant.
    """
    if aggregate not in ("mean", "last"):
        raise ValueError(f"aggregate must be 'mean' or 'last'; got {aggregate!r}")
    _, scores = smooth_mprt_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        explainer=explainer,
        generator=generator,
        order=order,
        similarity=similarity,
        nr_samples=nr_samples,
        noise_magnitude=noise_magnitude,
        seed=seed,
        abs=abs,
        normalise=normalise,
        batch_size=batch_size,
    )
    score = scores.mean(1) if aggregate == "mean" else scores[:, -1]
    reason = "a map (theirs or a randomised model's) is constant"
    return nan_where(score, torch.isnan(score), "smooth_mprt", reason)


def fully_randomised(model: nn.Module, *, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every layer of
    :func:`~concilium.metrics.randomisation.layer_groups` re-initialised, bottom-up, the ``i``-th
    module of a group under ``torch.manual_seed(seed + 1 + i)`` in a forked RNG (a plain model's
    group is one layer: Quantus's cascade after its last layer), as MPRT does. The global RNG
    state is left as it was.

    Raises:
        ValueError: if the model has no layer with ``reset_parameters``.
    """
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    groups = layer_groups(work)
    if not groups:
        raise ValueError("the model has no layer with reset_parameters() to randomise")
    devices = [p.device for p in work.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        for _, names in groups:
            for i, name in enumerate(names):
                torch.manual_seed(seed + 1 + i)
                modules[name].reset_parameters()
    return work


def histogram_entropy(maps: Tensor, *, n_bins: int) -> Tensor:
    """Shannon entropy (nats) of the histogram of each map's values in ``n_bins`` equal bins
    from its minimum to its maximum (``scipy.stats.entropy(np.histogram(a, n_bins)[0])``);
    0 for a constant map. ``(N,)`` float64."""
    values = maps.detach().double().flatten(1).cpu().numpy()
    out = []
    for row in values:
        counts = np.histogram(row, bins=n_bins)[0]
        p = counts[counts > 0] / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return torch.tensor(out, dtype=torch.float64, device=maps.device)


def _efficient_mprt_passes(
    params: Mapping[str, Any], *, size: tuple[int, int], layers: int
) -> int:
    return 1  # one explanation by the fully randomised model


@register_metric(
    category="randomisation",
    higher_is_better=True,
    needs_model=True,
    needs_explainer=True,
    passes=_efficient_mprt_passes,
)
def efficient_mprt(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    n_bins: int = 100,
    seed: int = 42,
    abs: bool = False,
    normalise: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Efficient MPRT (Hedström et al. 2023): the relative rise of the explanation's complexity
    when every layer of the model is randomised, ``(H(b) - H(a)) / H(a)`` with ``H`` the
    entropy of the histogram of a map's values (:func:`histogram_entropy`), ``a = maps`` and
    ``b`` the explanation by the fully randomised model (:func:`fully_randomised`). Higher is
    better (a good explanation degrades into noise).

    Quantus re-explains the original model for ``H(a)`` instead of scoring the ``a_batch`` it
    is given; here ``maps`` are scored (the same when they are the explainer's). Only the
    fully randomised model is explained (Quantus's ``skip_layers=True`` default; its layer
    order does not change that model). Quantus's ``n_bins`` default is 100 when no bin rule is
    given, as here.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        n_bins: histogram bins (Quantus default 100).
        seed: re-initialisation seed (Quantus default 42).
        abs: take ``|.|`` of the maps first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (Quantus default False; no effect on the
            entropy).
        batch_size: images per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``; NaN where ``maps`` is constant (zero entropy).
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}")
    maps, images, labels, device = model_inputs("efficient_mprt", maps, images, labels, model)
    fn = check_explainer("efficient_mprt", explainer)
    batch_size = check_batch_size(batch_size, device)
    random_model = fully_randomised(model, seed=seed)
    b = explain_in_chunks(fn, random_model, images, labels, batch_size=batch_size)
    h_a = histogram_entropy(prepare_maps(maps, abs=abs, normalise=normalise), n_bins=n_bins)
    h_b = histogram_entropy(prepare_maps(b, abs=abs, normalise=normalise), n_bins=n_bins)
    bad = h_a == 0
    score = (h_b - h_a) / torch.where(bad, torch.ones_like(h_a), h_a)
    return nan_where(score, bad, "efficient_mprt", "the map is constant (zero entropy)")
