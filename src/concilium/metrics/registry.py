"""The metric registry: one :class:`MetricSpec` per metric, carrying the metadata that reports sort,
colour and draw arrows from (category, direction, what the metric needs, stochasticity), the
metric's cost in model passes, and the metric's valid parameters with their defaults, read from
the function's real signature.

A metric is registered under its Python name (timm style), so ``METRICS.get("deletion").fn`` is
``concilium.metrics.deletion``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from concilium._registry import Registry
from concilium.vocabulary import FAMILIES, Family

Category = Family
CATEGORIES: tuple[str, ...] = FAMILIES

#: Inputs of a metric function that are data, not parameters.
DATA_ARGS: tuple[str, ...] = ("images", "labels", "masks", "model", "explainer", "generator")


class PassCount(Protocol):
    """``passes(params, *, size, layers) -> int``: model passes per image of one metric call.

    ``params`` are the metric's resolved parameters (defaults merged with the caller's), ``size``
    the image size ``(H, W)`` and ``layers`` the number of modules of the model with a
    ``reset_parameters`` (the layers MPRT randomises). A pass is one image through the model;
    an image given to the explainer counts as one pass (the explanation method's own cost is
    not the metric's to know). A call may add at most one pass in all (e.g. ``random_logit``
    reading the number of classes), which is not counted.

    The count is exact (every image costs exactly that many passes) unless the metric's
    :attr:`MetricSpec.passes_exact` says otherwise for these ``params``: then it is an upper
    bound, because the cost depends on the image itself (``irof``, and the region metrics with
    ``features="slic..."``: one pass per superpixel, and the number of superpixels is the
    image's), and the count is the most any image of ``size`` can cost.
    """

    def __call__(
        self, params: Mapping[str, Any], *, size: tuple[int, int], layers: int
    ) -> int: ...


ExactPasses = bool | Callable[[Mapping[str, Any]], bool]
"""Whether a metric's :class:`PassCount` is exact: a constant, or a function of the resolved
parameters (``False``: the count is an upper bound)."""


def no_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    """The cost of a metric that never calls the model."""
    return 0


def param_names(fn: Callable[..., Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(params with defaults, data args)`` of a metric or curve function: its keyword-only
    arguments, split into data inputs (:data:`DATA_ARGS`) and parameters."""
    params: dict[str, Any] = {}
    data_args: list[str] = []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if pname in DATA_ARGS:
            data_args.append(pname)
        else:
            params[pname] = p.default
    return params, tuple(data_args)


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: registry name, equal to the function's ``__name__``.
        fn: the pure batched function ``fn(maps, *, <data args>, <params>) -> Tensor (N,)``.
        category: metric family.
        higher_is_better: score direction.
        needs_mask: needs ground-truth masks ``(N, H, W)`` bool.
        needs_model: needs the model (and images and labels).
        needs_explainer: needs ``explainer(model, images, targets) -> (N, H, W)``.
        stochastic: draws random numbers (takes ``generator``).
        batch_relative: an image's score depends on the other images of the batch it is
            computed with (``consistency``, ``focus``): evaluate a whole split in one call.
        passes: model passes per image as a function of the parameters (:class:`PassCount`).
        passes_exact: whether ``passes`` is the exact count (``True``) or an upper bound
            (``False``), a constant or a function of the resolved parameters; read it through
            :meth:`model_passes_exact`.
        params: the valid parameters and their defaults.
        data_args: the data inputs the function accepts.
        curve: optional function returning the metric's curve.
    """

    name: str
    fn: Callable[..., Tensor]
    category: str
    higher_is_better: bool
    needs_mask: bool
    needs_model: bool
    needs_explainer: bool
    stochastic: bool
    batch_relative: bool = False
    passes: PassCount = no_passes
    passes_exact: ExactPasses = True
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

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``params`` merged over the defaults.

        Raises:
            ValueError: for an unknown parameter.
        """
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for metric {self.name!r}; valid: "
                + ", ".join(self.params)
            )
        return {**self.params, **given}

    def model_passes(
        self, params: Mapping[str, Any] | None = None, *, size: tuple[int, int], layers: int = 0
    ) -> int:
        """Model passes per image with ``params`` (merged over the defaults) on ``size`` images.

        Raises:
            ValueError: for an unknown parameter.
        """
        return int(self.passes(self.resolve(params), size=size, layers=layers))

    def model_passes_exact(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether :meth:`model_passes` with ``params`` is the exact number of passes of every
        image (``True``) or an upper bound (``False``: the cost depends on the image).

        Raises:
            ValueError: for an unknown parameter.
        """
        if callable(self.passes_exact):
            return bool(self.passes_exact(self.resolve(params)))
        return bool(self.passes_exact)


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(
    *,
    category: Category,
    higher_is_better: bool,
    needs_mask: bool = False,
    needs_model: bool = False,
    needs_explainer: bool = False,
    stochastic: bool = False,
    batch_relative: bool = False,
    passes: PassCount | None = None,
    passes_exact: ExactPasses = True,
    curve: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a metric function in :data:`METRICS` under its ``__name__``.

    The parameters and defaults are read from the function's keyword-only arguments; data
    arguments (``images, labels, masks, model, explainer, generator``) are not parameters.

    Args:
        category: one of :data:`CATEGORIES`.
        higher_is_better: score direction.
        needs_mask, needs_model, needs_explainer: the inputs the metric needs.
        stochastic: the metric draws random numbers (it must take ``generator``).
        batch_relative: an image's score depends on the other images of its batch.
        passes: its cost (:class:`PassCount`); required when ``needs_model``.
        passes_exact: ``False`` (or a function of the parameters returning ``False``) when
            ``passes`` is only an upper bound, the cost depending on the image.
        curve: the function returning the metric's curve, if it has one.

    Raises:
        ValueError: for an unknown category, a stochastic metric without ``generator``, a
            metric bound to the model without ``passes``, or a name already taken.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}; got {category!r}")
    if needs_model and passes is None:
        raise ValueError("a metric that calls the model must say its cost: pass passes=...")
    if needs_explainer and not needs_model:
        raise ValueError("a metric that needs the explainer needs the model too (needs_model)")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        params, data_args = param_names(fn)
        if stochastic and "generator" not in data_args:
            raise ValueError(f"stochastic metric {fn.__name__!r} must take generator=")
        METRICS.add(
            fn.__name__,
            MetricSpec(
                name=fn.__name__,
                fn=fn,
                category=category,
                higher_is_better=higher_is_better,
                needs_mask=needs_mask,
                needs_model=needs_model,
                needs_explainer=needs_explainer,
                stochastic=stochastic,
                batch_relative=batch_relative,
                passes=passes if passes is not None else no_passes,
                passes_exact=passes_exact,
                params=params,
                data_args=data_args,
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
