"""Relative stability metrics (Agarwal et al. 2022): how much the explanation changes, relative
to itself, per relative change of the input, of the logits or of an internal representation.

For each image, ``nr_samples`` noisy copies ``x' = x + U(lower_bound, upper_bound)`` are
explained (the copies of :func:`concilium.metrics.robustness.noisy_copies`, as for the
sensitivities: copy ``s`` of image ``i`` draws its noise from that image's stream, so a score
never depends on the other images; all copies of a chunk in one explainer call) and the score
is the largest quotient

    ``||(a - a') / a||_2 / max(||d(x, x')||_2, eps_min)``

over the copies, where ``d`` is the relative change of the input (``relative_input_stability``),
the change of the logits (``relative_output_stability``) or the relative change of a layer's
output (``relative_representation_stability``); a zero in a divisor is replaced by ``eps_min``
as Quantus does. With ``return_nan_when_prediction_changes`` (Quantus's default) an image scores
NaN when any of its copies changes the prediction, as in Quantus (the maximum over the copies
is not defined then).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from concilium.explain.layers import resolve_layer
from concilium.metrics._common import nan_where
from concilium.metrics._explainer import Explainer, check_explainer, explain_in_chunks
from concilium.metrics.perturb import check_batch_size, model_inputs
from concilium.metrics.registry import register_metric
from concilium.metrics.robustness import noisy_copies, uniform_noise

Against = Literal["input", "output", "representation"]


def _relative(new: Tensor, ref: Tensor, eps_min: float) -> Tensor:
    """``(ref - new) / ref`` with a zero of ``ref`` replaced by ``eps_min`` (Quantus)."""
    return (ref - new) / (ref + (ref == 0) * eps_min)


def _norm(x: Tensor, eps_min: float) -> Tensor:
    """Row-wise L2 norm of ``(B, ...)``; a zero norm becomes ``eps_min``."""
    n = torch.linalg.vector_norm(x.flatten(1), dim=1)
    return n + (n == 0) * eps_min


def _second_moment(maps: Tensor) -> Tensor:
    """Each map divided by the square root of its mean square (an all-zero map stays zero)."""
    scale = maps.flatten(1).pow(2).mean(1).sqrt()
    return maps / torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, 1, 1)


def _prepare(maps: Tensor, *, abs: bool, normalise: bool) -> Tensor:
    out = maps.double()
    if abs:
        out = out.abs()
    return _second_moment(out) if normalise else out


def _quantus_layers(model: nn.Module) -> list[nn.Module]:
    """Quantus's default representation: every module but the model and ``nn.Sequential``s."""
    return [
        m for _, m in model.named_modules() if not isinstance(m, (model.__class__, nn.Sequential))
    ]


def representation_layers(model: nn.Module, layer: str | None) -> list[nn.Module]:
    """The modules whose outputs form the representation: ``layer``, else the model's
    ``gradcam_layer``, else (a model that documents none) every module as Quantus does.

    Raises:
        ValueError: for a name that matches no module (the message lists candidates).
    """
    if layer is None and getattr(model, "gradcam_layer", None) is None:
        return _quantus_layers(model)
    return [resolve_layer(model, layer)]


@contextmanager
def _capture(modules: list[nn.Module], into: list[Tensor]):
    """Append each module's flattened output to ``into`` during forwards (hooks removed in
    ``finally``)."""

    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        into.append(output.detach().flatten(1).double())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield into
    finally:
        for h in handles:
            h.remove()


def _outputs(
    model: nn.Module, x: Tensor, modules: list[nn.Module] | None
) -> tuple[Tensor, Tensor | None]:
    """``(logits, representation or None)`` of ``x`` in one forward pass."""
    seen: list[Tensor] = []
    with torch.no_grad(), _capture(modules or [], seen):
        logits = model(x)
    return logits.double(), (torch.cat(seen, dim=1) if modules else None)



def relative_stability(
    metric: str,
    against: Against,
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None,
    nr_samples: int,
    lower_bound: float,
    upper_bound: float,
    abs: bool,
    normalise: bool,
    eps_min: float,
    return_nan_when_prediction_changes: bool,
    layer: str | None,
    batch_size: int | None,
) -> Tensor:
    """``(N,)``: the largest relative-stability quotient over ``nr_samples`` noisy copies (see
    the module docstring); NaN, with a warning, where a copy changed the prediction."""
    maps, images, labels, device = model_inputs(metric, maps, images, labels, model)
    maps = maps.detach()
    fn = check_explainer(metric, explainer)
    batch_size = check_batch_size(batch_size, device)
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1; got {nr_samples}")
    if not lower_bound < upper_bound:
        raise ValueError(f"lower_bound must be < upper_bound; got {lower_bound}, {upper_bound}")
    modules = representation_layers(model, layer) if against == "representation" else None
    forward = against != "input" or return_nan_when_prediction_changes
    a = _prepare(maps, abs=abs, normalise=normalise)
    n = images.shape[0]
    if forward:
        outs = [
            _outputs(model, images[s : s + batch_size], modules) for s in range(0, n, batch_size)
        ]
        logits0 = torch.cat([o[0] for o in outs])
        rep0 = torch.cat([o[1] for o in outs]) if modules else None  # type: ignore[misc]
    out = torch.empty(n, nr_samples, dtype=torch.float64, device=device)
    noise = uniform_noise(low=lower_bound, high=upper_bound)
    for i, s, x_noisy in noisy_copies(images, generator=generator, noise=noise,
                                      nr_samples=nr_samples, batch_size=batch_size):
        x = images[i]
        a_noisy = explain_in_chunks(fn, model, x_noisy, labels[i], batch_size=batch_size, shared=True)
        a_noisy = _prepare(a_noisy, abs=abs, normalise=normalise)
        num = _norm(_relative(a_noisy, a[i], eps_min), 0.0)
        if forward:
            logits, rep = _outputs(model, x_noisy, modules)
        if against == "input":
            den = _norm(_relative(x_noisy.double(), x.double(), eps_min), eps_min)
        elif against == "output":
            den = _norm(logits0[i] - logits, eps_min)
        else:
            den = _norm(_relative(rep, rep0[i], eps_min), eps_min)  # type: ignore[index,arg-type]
        value = num / den
        if return_nan_when_prediction_changes:
            changed = logits.argmax(1) != logits0[i].argmax(1)
            value = value.masked_fill(changed, float("nan"))
        out[i, s] = value
    changed_any = torch.isnan(out).any(1)
    score = torch.nan_to_num(out, nan=0.0).amax(1)
    return nan_where(score, changed_any, metric, "a noisy copy changed the prediction")


def _stability_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    samples = int(params["nr_samples"])
    return samples + (1 + samples if params["return_nan_when_prediction_changes"] else 0)


def _forward_passes(params: Mapping[str, Any], *, size: tuple[int, int], layers: int) -> int:
    return 2 * int(params["nr_samples"]) + 1


_ARGS = """

    Args:
        maps, images, labels, model: the explanation, the explained images, classes and model.
        explainer: ``explainer(model, images, targets) -> (N, H, W)``, the method of ``maps``.
        generator: random source of the noise.
        nr_samples: noisy copies per image (Quantus default 200).
        lower_bound, upper_bound: the noise is U(lower_bound, upper_bound) on every value
            (Quantus's default ``batch_uniform_noise`` with ``upper_bound=0.2``: U(0.02, 0.2)).
        abs: take ``|.|`` of both maps first (Quantus default False).
        normalise: divide each map by the square root of its mean square (Quantus default
            False; Quantus's ``normalise_by_average_second_moment_estimate``, here per map).
        eps_min: replaces a zero divisor (Quantus default 1e-6).
        return_nan_when_prediction_changes: NaN for an image when any copy changes its predicted
            class (Quantus default True).{layer}
        batch_size: noisy copies per explainer call (default: 64 on CPU, 512 on GPU).

    Returns:
        ``(N,)``, lower is better.
"""

_LAYER = """
        layer: dotted name of the module whose output is the representation; default the
            model's ``gradcam_layer``, or, for a model that documents none, the outputs of all
            its modules but ``nn.Sequential`` containers, concatenated (Quantus's default)."""


def _stability_metric(
    name: str, against: Against, *, passes: Callable[..., int], summary: str
) -> Callable[..., Tensor]:
    """Build and register the relative stability metric ``name``."""

    def metric(
        maps: Tensor,
        *,
        images: Tensor,
        labels: Tensor,
        model: nn.Module,
        explainer: Explainer,
        generator: torch.Generator | None = None,
        nr_samples: int = 200,
        lower_bound: float = 0.02,
        upper_bound: float = 0.2,
        abs: bool = False,
        normalise: bool = False,
        eps_min: float = 1e-6,
        return_nan_when_prediction_changes: bool = True,
        batch_size: int | None = None,
    ) -> Tensor:
        return relative_stability(
            name, against, maps, images=images, labels=labels, model=model,
            explainer=explainer, generator=generator, nr_samples=nr_samples,
            lower_bound=lower_bound, upper_bound=upper_bound, abs=abs, normalise=normalise,
            eps_min=eps_min,
            return_nan_when_prediction_changes=return_nan_when_prediction_changes,
            layer=None, batch_size=batch_size,
        )  # fmt: skip

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = summary + _ARGS.format(layer="")
    return register_metric(
        category="robustness",
        higher_is_better=False,
        needs_model=True,
        needs_explainer=True,
        stochastic=True,
        passes=passes,
    )(metric)


relative_input_stability = _stability_metric(
    "relative_input_stability",
    "input",
    passes=_stability_passes,
    summary="""Relative input stability (Agarwal et al. 2022): the largest
    ``||(a - a') / a|| / max(||(x - x') / x||, eps_min)`` over ``nr_samples`` noisy copies.""",
)
relative_output_stability = _stability_metric(
    "relative_output_stability",
    "output",
    passes=_forward_passes,
    summary="""Relative output stability (Agarwal et al. 2022): the largest
    ``||(a - a') / a|| / max(||h(x) - h(x')||, eps_min)`` over ``nr_samples`` noisy copies,
    ``h`` the logits.""",
)


@register_metric(
    category="robustness",
    higher_is_better=False,
    needs_model=True,
    needs_explainer=True,
    stochastic=True,
    passes=_forward_passes,
)
def relative_representation_stability(
    maps: Tensor,
    *,
    images: Tensor,
    labels: Tensor,
    model: nn.Module,
    explainer: Explainer,
    generator: torch.Generator | None = None,
    nr_samples: int = 200,
    lower_bound: float = 0.02,
    upper_bound: float = 0.2,
    abs: bool = False,
    normalise: bool = False,
    eps_min: float = 1e-6,
    return_nan_when_prediction_changes: bool = True,
    layer: str | None = None,
    batch_size: int | None = None,
) -> Tensor:
    return relative_stability(
        "relative_representation_stability", "representation", maps, images=images,
        labels=labels, model=model, explainer=explainer, generator=generator,
        nr_samples=nr_samples, lower_bound=lower_bound, upper_bound=upper_bound, abs=abs,
        normalise=normalise, eps_min=eps_min,
        return_nan_when_prediction_changes=return_nan_when_prediction_changes, layer=layer,
        batch_size=batch_size,
    )  # fmt: skip


relative_representation_stability.__doc__ = """Relative representation stability (Agarwal et al. 2022): the largest
    ``||(a - a') / a|| / max(||(L(x) - L(x')) / L(x)||, eps_min)`` over ``nr_samples`` noisy
    copies, ``L`` the output of ``layer``.""" + _ARGS.format(layer=_LAYER)
