"""IROF, iterative removal of features (Rieger and Hansen 2020), as Quantus 0.6.0's ``IROF``.

Each image is cut into superpixels (SLIC, :mod:`concilium.metrics.features`), the superpixels
are ranked by the *mean* of the map over them, most relevant first, and removed one more per step
(replaced by the baseline, by default each image's mean value) until none is left. The model's
score of the target after each step, divided by its score of the unperturbed image, gives the
curve ``p_1 .. p_n`` (``n`` the image's number of superpixels), and the score is the area over
it, Quantus's ``n - trapezoid(p_1 .. p_n)`` (``dx = 1``; the unperturbed point ``p_0 = 1`` is
not on the curve). A faithful map removes the evidence first, so the score falls fast and the
area over the curve is large: higher is better.

The number of superpixels depends on the image, so the score's range does too (about ``1`` to
``n``), and so does its cost: ``n + 1`` model passes per image, at most
:meth:`~concilium.metrics.features.Features.count_bound` ``+ 1`` (the registry's pass count is
that bound). Images with the same ``n`` are evaluated together, in chunks of ``batch_size``
copies through :func:`~concilium.metrics.perturb.variant_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from concilium.metrics._common import constant_rows, nan_where, prepare_maps
from concilium.metrics._streams import image_streams
from concilium.metrics.features import feature_labels, parse_features
from concilium.metrics.perturb import Baseline, check_batch_size, model_inputs, target_scores
from concilium.metrics.regions import ranked_features, region_scores, row_trapezoid
from concilium.metrics.registry import register_metric


def _irof_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 1 + parse_features(params["features"]).count_bound(size)


def _irof_passes_exact(params: Mapping[str, Any]) -> bool:
    return parse_features(params["features"]).fixed


@register_metric(
    category="faithfulness",
    higher_is_better=True,
    needs_model=True,
    passes=_irof_passes,
    passes_exact=_irof_passes_exact,
)
def irof(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    features: str = "slic",
    baseline: Baseline = "image_mean",
    softmax: bool = True,
    abs: bool = False,
    normalise: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """IROF (Rieger and Hansen 2020): the area over the curve of ``f(x_k) / f(x)`` while the
    superpixels are removed, one more per step, in the order of their mean relevance (module
    docstring). Higher is better.

    Quantus 0.6.0's defaults: SLIC with scikit-image's defaults (``segmentation_method="slic"``),
    its ``"mean"`` baseline (here ``"image_mean"``: each image's mean over all its values, taken
    from the original image; Quantus recomputes it from the perturbed batch at every step,
    ``docs/metrics.md``), softmax probabilities, ``abs=False``, ``normalise=True``. Quantus
    returns the mean over the images by default (``return_aggregate=True``); the score of each
    image is returned here.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: random source of a ``"uniform"`` baseline (one draw per image) and of the
            order of tied features (each image's ``"ties"`` stream).
        features: the features removed (:mod:`concilium.metrics.features`): ``"slic"``
            (Quantus's default), ``"felzenszwalb"`` (Quantus's other segmentation),
            ``"slic:n_segments=50"``, ``"patch:16"``, ...
        baseline: replacement values (:func:`~concilium.metrics.perturb.make_baseline`).
        softmax: score probabilities instead of logits.
        abs: take ``|maps|`` first.
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        batch_size: perturbed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` float64; NaN with a :class:`~concilium.metrics.MetricWarning` for a constant
        map (its order is arbitrary) and for an image with a single feature (Quantus raises).

    Raises:
        ValueError: for a bad feature spec.
    """
    spec = parse_features(features)
    maps, images, labels, device = model_inputs("irof", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    feats, counts = feature_labels(spec, images)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    streams = image_streams(generator, images)
    _, ranks = ranked_features(a, feats, counts, reduce="mean", streams=streams)
    y0 = target_scores(model, images, labels, softmax=softmax, batch_size=batch_size)
    ys = region_scores(
        model, images, labels, features=feats, ranks=ranks, n_variants=counts, cumulative=True,
        baseline=baseline, softmax=softmax, batch_size=batch_size, generator=generator,
        streams=streams,
    )  # fmt: skip
    curve = ys.double() / y0.double().unsqueeze(1)
    scores = counts.double() - row_trapezoid(curve, counts)
    scores = nan_where(scores, counts < 2, "irof", "have a single feature (pass more segments)")
    constant = constant_rows(a.flatten(1)).to(scores.device)
    return nan_where(scores, constant, "irof", "their map is constant")
