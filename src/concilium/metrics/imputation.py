"""ROAD: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

The removed pixels are not set to a constant (which leaks the removed shape to the model) but
imputed as the weighted mean of their 8 neighbours (weights 1/6 on the axes, 1/12 on the
diagonals), a sparse linear system per image and removal level, solved with SciPy's sparse LU for
all channels at once; Gaussian noise (std ``noise``) is then added to the imputed values. The
system is assembled with vectorised NumPy (Quantus builds a ``lil_matrix`` element by element).

The module is not called ``road`` because the metric :func:`road` is exported from
:mod:`concilium.metrics` under its registered name and would shadow it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor, nn

from concilium._util import derive_seed
from concilium.metrics._common import constant_rows, nan_where, prepare_maps
from concilium.metrics._streams import image_streams
from concilium.metrics.curves import feature_ranks
from concilium.metrics.features import parse_features
from concilium.metrics.perturb import check_batch_size, model_inputs, pixel_ranks, predicted_classes
from concilium.metrics.registry import register_metric

_NEIGHBOURS = (
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, *, noise: float, rng: np.random.Generator | None
) -> np.ndarray:
    """Impute the ``removed`` pixels of one image.

    Args:
        image: ``(C, H, W)`` float array.
        removed: ``(H, W)`` bool, the pixels to impute (all channels).
        noise: std of the Gaussian noise added to the imputed values (0 for none).
        rng: NumPy generator for the noise (required when ``noise`` is not 0).

    Returns:
        The imputed copy ``(C, H, W)``.
    """
    c, h, w = image.shape
    flat = image.reshape(c, h * w).astype(np.float64)
    unknown = np.flatnonzero(removed.reshape(-1))
    out = image.reshape(c, h * w).copy()
    if unknown.size == 0:
        return out.reshape(c, h, w)
    var_id = np.full(h * w, -1, dtype=np.int64)
    var_id[unknown] = np.arange(unknown.size)
    ys, xs = np.divmod(unknown, w)
    diag = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, c))
    rows, cols, vals = [], [], []
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        eq = np.flatnonzero(valid)
        nb = ny[valid] * w + nx[valid]
        diag[eq] -= weight
        is_var = var_id[nb] >= 0
        rows.append(eq[is_var])
        cols.append(var_id[nb[is_var]])
        vals.append(np.full(int(is_var.sum()), weight))
        known = ~is_var
        np.subtract.at(rhs, eq[known], weight * flat[:, nb[known]].T)
    rows.append(np.arange(unknown.size))
    cols.append(np.arange(unknown.size))
    vals.append(diag)
    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(unknown.size, unknown.size),
    ).tocsc()
    solution = np.asarray(spsolve(a, rhs)).reshape(unknown.size, c).T
    if noise:
        if rng is None:
            raise ValueError(
                "noisy imputation needs rng=np.random.default_rng(seed) (or noise=0): the noise "
                "is never drawn from an unseeded source"
            )
        solution = solution + noise * rng.standard_normal(solution.shape)
    out[:, unknown] = solution
    return out.reshape(c, h, w)


def road_curve(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    percentages: Sequence[float] = tuple(range(1, 100, 2)),
    noise: float = 0.01,
    order: Literal["morf", "lerf"] = "morf",
    abs: bool = False,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """Whether the model still predicts ``labels`` after imputing the top ``p`` percent of pixels
    (``int(H*W*p/100)`` of them, as Quantus), for each ``p``: ``(N, len(percentages))`` in {0,1}.

    With ``features`` other than pixels the top ``int(F*p/100)`` of an image's ``F`` features
    are removed (a feature's relevance is the sum of the map over it); the imputation still
    fills every pixel of them from its neighbours.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds each image's stream: the order of tied pixels and the imputation
            noise (a NumPy generator per image is derived from it).
        percentages: removal levels in percent (Quantus default 1, 3, ..., 99).
        noise: std of the imputation noise (Quantus default 0.01).
        order: ``"morf"`` removes the most relevant pixels first, ``"lerf"`` the least.
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        features: what is removed (:mod:`concilium.metrics.features`): ``"pixels"``,
            ``"patch:8"``, ``"slic"``...; the percentages are of each image's features.
        batch_size: imputed copies per forward pass (default: 64 on CPU, 512 on GPU).
    """
    maps, images, labels, device = model_inputs("road", maps, images, labels, model)
    batch_size = check_batch_size(batch_size, device)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf'; got {order!r}")
    pct = [float(p) for p in percentages]
    if not pct or any(not 0 <= p <= 100 for p in pct):
        raise ValueError(f"percentages must be a non-empty list of values in [0, 100]; got {pct}")
    feats = parse_features(features)
    a = prepare_maps(maps, abs=abs, normalise=normalise)
    n, c, h, w = images.shape
    streams = image_streams(generator, images)
    if feats.kind == "pixels":
        ranks = pixel_ranks(a, descending=order == "morf", streams=streams)
        n_features = [h * w] * n
    else:
        ranks, f = feature_ranks(a, images, feats, order=order, streams=streams)
        n_features = f.tolist()
    ranks = ranks.cpu().numpy()
    x_np = images.detach().cpu().double().numpy()
    pending: list[np.ndarray] = []
    preds: list[Tensor] = []

    def flush() -> None:
        if pending:
            batch = torch.from_numpy(np.stack(pending)).to(device=device, dtype=images.dtype)
            preds.append(predicted_classes(model, batch, batch_size=batch_size))
            pending.clear()

    for i in range(n):
        rng = np.random.default_rng(derive_seed(streams[i], "imputation"))
        for p in pct:
            removed = ranks[i] < int(n_features[i] * p / 100)
            pending.append(
                noisy_linear_imputation(x_np[i], removed.reshape(h, w), noise=noise, rng=rng)
            )
            if len(pending) >= batch_size:
                flush()
    flush()
    predicted = torch.cat(preds).view(n, len(pct))
    return (predicted == labels[:, None]).double()


def _road_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return len(params["percentages"])  # one imputed copy per removal level


@register_metric(
    category="faithfulness",
    higher_is_better=False,
    needs_model=True,
    stochastic=True,
    passes=_road_passes,
    curve=road_curve,
)
def road(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    generator: torch.Generator | None = None,
    percentages: Sequence[float] = tuple(range(1, 100, 2)),
    noise: float = 0.01,
    abs: bool = False,
    normalise: bool = True,
    features: str = "pixels",
    batch_size: int | None = None,
) -> Tensor:
    """ROAD, MoRF order: the share of removal levels at which the model still predicts the label
    (the mean of :func:`road_curve`). Lower is better: removing the pixels the map calls
    important should break the prediction early.

    Quantus returns one accuracy per percentage averaged over the first batch only, and indexes
    out of range on RGB images; this returns one score per image and handles any channel count.

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        generator: seeds the imputation noise.
        percentages: removal levels in percent (Quantus default 1, 3, ..., 99).
        noise: std of the imputation noise (Quantus default 0.01).
        abs: take ``|maps|`` first (Quantus default False).
        normalise: divide each map by its max ``|.|`` (no effect on the order).
        features: what is removed (:func:`road_curve`); the percentages are of the features.
        batch_size: imputed copies per forward pass (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)`` in ``[0, 1]``; NaN for a constant map.
    """
    curve = road_curve(
        maps,
        images=images,
        labels=labels,
        model=model,
        generator=generator,
        percentages=percentages,
        noise=noise,
        order="morf",
        abs=abs,
        normalise=normalise,
        features=features,
        batch_size=batch_size,
    )
    return nan_where(
        curve.mean(1),
        constant_rows(prepare_maps(maps, abs=abs, normalise=False).flatten(1)).to(curve.device),
        "road",
        "their map is constant",
    )
