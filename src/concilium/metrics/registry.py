"""The metric registry: one :class:`MetricSpec` per metric, carrying the metadata that reports sort,
colour and draw arrows from (category, direction, what the metric needs, stochasticity) and the
metric's valid parameters with their defaults, read from the function's real signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from concilium._registry import Registry
from concilium.vocabulary import FAMILIES, Family

Category = Family
CATEGORIES: tuple[str, ...] = FAMILIES

#: Inputs of a metric function that are data, not parameters.
DATA_ARGS: tuple[str, ...] = ("images", "labels", "masks", "model", "explainer", "generator")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: registry name.
        fn: the pure batched function ``fn(maps, *, <data args>, <params>) -> Tensor (N,)``.
        category: metric family.
        higher_is_better: score direction.
        needs_mask: needs ground-truth masks ``(N, H, W)`` bool.
        needs_model: needs the model (and images and labels).
        needs_explainer: needs ``explainer(model, images, targets) -> (N, H, W)``.
        stochastic: draws random numbers (takes ``generator``).
        params: the valid parameters and their defaults.
        data_args: the data inputs the function accepts.
        curve: optional function returning the metric's curve ``(N, steps)``.
    """

    name: str
    fn: Callable[..., Tensor]
    category: str
    higher_is_better: bool
    needs_mask: bool
    needs_model: bool
    needs_explainer: bool
    stochastic: bool
    params: dict[str, Any] = field(default_factory=dict)
    data_args: tuple[str, ...] = ()
    curve: Callable[..., Any] | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """What the metric needs besides the maps: a subset of ``mask, model, explainer``."""
        out = []
        if self.needs_mask:
            out.append("mask")
        if self.needs_model:
            out.append("model")
        if self.needs_explainer:
            out.append("explainer")
        return tuple(out)


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(
    name: str,
    *,
    category: Category,
    higher_is_better: bool,
    needs_mask: bool = False,
    needs_model: bool = False,
    needs_explainer: bool = False,
    stochastic: bool = False,
    curve: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a metric function in :data:`METRICS` with its metadata.

    The parameters and defaults are read from the function's keyword-only arguments; data
    arguments (``images, labels, masks, model, explainer, generator``) are not parameters.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}; got {category!r}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        params: dict[str, Any] = {}
        data_args: list[str] = []
        for pname, p in inspect.signature(fn).parameters.items():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if pname in DATA_ARGS:
                data_args.append(pname)
            else:
                params[pname] = p.default
        METRICS.add(
            name,
            MetricSpec(
                name=name,
                fn=fn,
                category=category,
                higher_is_better=higher_is_better,
                needs_mask=needs_mask,
                needs_model=needs_model,
                needs_explainer=needs_explainer,
                stochastic=stochastic,
                params=params,
                data_args=tuple(data_args),
                curve=curve,
            ),
        )
        return fn

    return decorator


def metrics_in(selection: str) -> list[str]:
    """Resolve ``"localisation,faithfulness"`` or ``"auc,iou"`` (categories and names mixed, or
    ``"all"``) to metric names, in registry order, without duplicates.

    Raises:
        ValueError: for a token that is neither a category nor a metric name.
    """
    names: list[str] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        if token == "all":
            picked = METRICS.names()
        elif token in CATEGORIES:
            picked = [n for n, s in METRICS.items() if s.category == token]
        elif token in METRICS:
            picked = [token]
        else:
            raise ValueError(
                f"unknown metric or category {token!r}; categories: {', '.join(CATEGORIES)}, all; "
                f"metrics: {', '.join(METRICS.names())}"
            )
        names.extend(n for n in picked if n not in names)
    if not names:
        raise ValueError("no metric selected; pass e.g. 'localisation,complexity' or 'auc,iou'")
    return names
