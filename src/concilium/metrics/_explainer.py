"""The explainer that robustness and randomisation metrics call again on changed inputs or
models: ``explainer(model, images, targets) -> (N, H, W)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from concilium.metrics.shared import active

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


def check_explainer(metric: str, explainer: object) -> Explainer:
    """Return ``explainer`` if it is callable.

    Raises:
        ValueError: if it is missing.
        TypeError: if it is not callable.
    """
    if explainer is None:
        raise ValueError(
            f"{metric} needs explainer(model, images, targets) -> (N, H, W); pass explainer=..."
        )
    if not callable(explainer):
        raise TypeError(f"explainer must be callable; got {type(explainer).__name__}")
    return explainer  # type: ignore[return-value]


def explain_in_chunks(
    explainer: Explainer,
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    batch_size: int,
    shared: bool = False,
) -> Tensor:
    """Call ``explainer`` on ``batch_size`` images at a time; check and concatenate the maps.

    Args:
        explainer, model, images, targets: what to explain.
        batch_size: images per explainer call.
        shared: ``model`` is the caller's unmodified model, so inside a
            :func:`~concilium.metrics.shared.shared_passes` scope each distinct (image, target)
            is explained once for every metric of the scope. Never for a randomised copy.

    Raises:
        ValueError: if the explainer returns anything but maps ``(N, H, W)``.
    """
    store = active() if shared else None
    if store is not None:
        return store.explain(
            explainer, model, images, targets,
            lambda rows: explain_in_chunks(
                explainer, model, images[rows], targets[rows], batch_size=batch_size
            ),
        )
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
