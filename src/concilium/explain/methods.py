"""The attribution methods: Captum wrappers registered in :data:`METHODS` with their metadata.

Each entry is a :class:`MethodSpec`: the Captum class it wraps, its parameter model, how many
model passes it needs per image, whether it needs a baseline or a layer, whether it is
stochastic, and a ``run`` function that attributes one chunk of images and returns the
channel-signed map ``(n, C, H, W)`` (``(n, 1, H, W)`` for methods whose attribution is the same
for every channel: GradCAM, occlusion, superpixel and patch methods, the random map).

The engine (:mod:`concilium.explain.engine`) validates inputs, has
:mod:`concilium.explain.prepare` resolve targets, baselines, the layer and the batching plan,
splits the images into chunks and calls ``run`` inside a context that puts the model in eval mode
and removes every hook afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import (
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerAttribution,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from concilium._registry import Registry
from concilium.explain import params as P
from concilium.explain.layers import LayerReader
from concilium.explain.segments import patches, pixels, superpixels

Kind = Literal["gradient", "perturbation", "control"]


@dataclass
class Chunk:
    """One chunk of images to attribute, everything resolved.

    Attributes:
        module: the module whose output is attributed.
        images: ``(n, C, H, W)`` on the module's device.
        classes: ``(n,)`` output column per image.
        forward_args: extra forward arguments (contrast classes) or ``None``.
        baselines: ``(n, C, H, W)`` baselines, or ``None`` for methods without one.
        layer: the GradCAM layer, or ``None``.
        layout: reads the layer's output as ``(n, C, h, w)`` (a
            :class:`~concilium.explain.layers.LayerReader`), or ``None``.
        rows: model-input rows per call chosen by the batching plan (memory budget).
        max_rows: the most rows the memory budget allows; knobs that change random draws
            (NoiseTunnel's sample batches) use only this, so seeded results never depend on
            timing.
    """

    module: nn.Module
    images: Tensor
    classes: Tensor
    forward_args: tuple[Tensor, ...] | None
    baselines: Tensor | None
    layer: nn.Module | None
    layout: LayerReader | None
    rows: int
    max_rows: int


@dataclass(frozen=True)
class MethodSpec:
    """Metadata and implementation of one attribution method.

    Attributes:
        name: registry name.
        captum_class: the Captum class wrapped (``""`` for the random control).
        params: the parameter model (defaults documented there).
        kind: ``"gradient"`` (forward+backward passes), ``"perturbation"`` (forward passes) or
            ``"control"`` (no model).
        needs_baseline: uses a baseline (reference input).
        needs_layer: attributes through a layer (GradCAM family).
        stochastic: draws random numbers; seeded per image (or per fixed group of images, see
            ``groupable``) from the ``generator``.
        groupable: a stochastic gradient method that may attribute a fixed-size group of images
            in one call (one random stream per group), when their baselines are identical.
        per_channel: the signed map has the image's channels (else one channel).
        passes: model passes per image ``(params, (H, W)) -> int``, the lower-bound unit.
        run: attributes one :class:`Chunk`.
        description: one line for listings.
        per_layer_channel: ``passes`` counts per channel of the method's layer (ScoreCAM and
            AblationCAM: one forward per channel, on top of one plain forward).
        architectures: ``"any"`` model, or ``"vit"`` only (attention rollout).
        activation_hooks: hooks the backward of activation modules (DeepLIFT, guided
            backpropagation, LRP), so in-place activations are switched off while it runs.
    """

    name: str
    captum_class: str
    params: type[P.MethodParams]
    kind: Kind
    needs_baseline: bool
    needs_layer: bool
    stochastic: bool
    per_channel: bool
    passes: Callable[[P.MethodParams, tuple[int, int]], int]
    run: Callable[[Chunk, P.MethodParams], Tensor]
    description: str
    groupable: bool = False
    per_layer_channel: bool = False
    architectures: Literal["any", "vit"] = "any"
    activation_hooks: bool = False

    def defaults(self) -> dict[str, object]:
        """The default parameters."""
        return self.params().model_dump()


#: name -> :class:`MethodSpec`.
METHODS: Registry[MethodSpec] = Registry("explanation method")


def method_params(method: str, **params: Any) -> dict[str, Any]:
    """The fully resolved parameters (defaults included) of ``method``: what the store hashes.

    Raises:
        ValueError: on an unknown method (listing the valid ones) or an unknown parameter
            (listing the valid ones) or an invalid value.

    Example:
        >>> method_params("integrated_gradients", n_steps=64)
        {'n_steps': 64, 'integration': 'gausslegendre'}
    """
    spec = METHODS.get(method)
    return P.validate_params(method, spec.params, params).model_dump()


def _one(_p: P.MethodParams, _hw: tuple[int, int]) -> int:
    return 1


def _n_samples(p: Any, _hw: tuple[int, int]) -> int:
    """One pass per sample of a sampling method (its ``n_samples`` parameter)."""
    return p.n_samples


def register_method(
    *,
    name: str,
    captum_class: str,
    params: type[P.MethodParams],
    kind: Kind,
    needs_baseline: bool,
    needs_layer: bool,
    stochastic: bool,
    per_channel: bool,
    passes: Callable[[P.MethodParams, tuple[int, int]], int],
    description: str,
    groupable: bool = False,
    per_layer_channel: bool = False,
    architectures: Literal["any", "vit"] = "any",
    activation_hooks: bool = False,
) -> Callable[[Callable], Callable]:
    """Register the decorated ``run`` function as method ``name`` (fields: :class:`MethodSpec`)."""

    def decorator(run: Callable) -> Callable:
        METHODS.add(name, MethodSpec(
            name=name, captum_class=captum_class, params=params, kind=kind,
            needs_baseline=needs_baseline, needs_layer=needs_layer, stochastic=stochastic,
            per_channel=per_channel, passes=passes, run=run, description=description,
            groupable=groupable, per_layer_channel=per_layer_channel,
            architectures=architectures, activation_hooks=activation_hooks,
        ))
        return run

    return decorator


@contextmanager
def _deeplift_errors(method: str) -> Iterator[None]:
    """Captum's DeepLIFT refuses a ReLU module called more than once (torchvision's ResNet
    blocks call one ReLU three times) with a deep RuntimeError: say what it means instead."""
    try:
        yield
    except RuntimeError as err:
        if "used more than once" not in str(err):
            raise
        raise ValueError(
            f"{method}: the model calls one activation module more than once (as torchvision's "
            "ResNet blocks do), which Captum's DeepLIFT cannot follow; use lrp (zennit, with the "
            "ResNet canonizer), integrated_gradients or another method"
        ) from None


def _plain_captum(
    captum: type[InputXGradient | GuidedBackprop | DeepLift], *, with_baselines: bool
) -> Callable[[Chunk, P.NoParams], Tensor]:
    """The ``run`` of a parameter-free Captum method: ``captum(module).attribute`` of the
    chunk's images for its classes (against its baselines ``with_baselines``)."""

    def run(c: Chunk, p: P.NoParams) -> Tensor:
        method = captum(c.module)
        if with_baselines:
            with _deeplift_errors(captum.__name__):
                return method.attribute(
                    c.images, baselines=c.baselines, target=c.classes,
                    additional_forward_args=c.forward_args,
                )
        return method.attribute(c.images, target=c.classes, additional_forward_args=c.forward_args)

    return run


@register_method(
    name="saliency", captum_class="captum.attr.Saliency", params=P.SaliencyParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=False, per_channel=True,
    passes=_one, description="gradient of the target logit (absolute by default)",
)
def _saliency(c: Chunk, p: P.SaliencyParams) -> Tensor:
    return Saliency(c.module).attribute(
        c.images, target=c.classes, abs=p.abs, additional_forward_args=c.forward_args
    )


register_method(
    name="input_x_gradient", captum_class="captum.attr.InputXGradient", params=P.NoParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=False, per_channel=True,
    passes=_one, description="input times gradient",
)(_plain_captum(InputXGradient, with_baselines=False))


@register_method(
    name="integrated_gradients", captum_class="captum.attr.IntegratedGradients",
    params=P.IntegratedGradientsParams, kind="gradient", needs_baseline=True, needs_layer=False,
    stochastic=False, per_channel=True, passes=lambda p, hw: p.n_steps,
    description="path integral of gradients from the baseline to the image",
)
def _integrated_gradients(c: Chunk, p: P.IntegratedGradientsParams) -> Tensor:
    n = c.images.shape[0]
    return IntegratedGradients(c.module).attribute(
        c.images, baselines=c.baselines, target=c.classes, additional_forward_args=c.forward_args,
        n_steps=p.n_steps, method=p.integration, internal_batch_size=max(n, c.rows),
    )


@register_method(
    name="gradient_shap", captum_class="captum.attr.GradientShap", params=P.GradientShapParams,
    kind="gradient", needs_baseline=True, needs_layer=False, stochastic=True, per_channel=True,
    passes=_n_samples,
    groupable=True, description="expected gradients over random points between baseline and noisy image",
)
def _gradient_shap(c: Chunk, p: P.GradientShapParams) -> Tensor:
    return GradientShap(c.module).attribute(
        c.images, baselines=c.baselines, n_samples=p.n_samples, stdevs=p.stdevs,
        target=c.classes, additional_forward_args=c.forward_args,
    )


def _noise_tunnel(c: Chunk, p: P.NoiseTunnelParams, nt_type: str, abs_: bool) -> Tensor:
    batch = None if c.images.shape[0] * p.n_samples <= c.max_rows else max(1, c.max_rows)
    return NoiseTunnel(Saliency(c.module)).attribute(
        c.images, nt_type=nt_type, nt_samples=p.n_samples, nt_samples_batch_size=batch,
        stdevs=float(p.sigma), target=c.classes, additional_forward_args=c.forward_args, abs=abs_,
    )


@register_method(
    name="smoothgrad", captum_class="captum.attr.NoiseTunnel", params=P.SmoothGradParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=True, per_channel=True,
    passes=_n_samples, groupable=True, description="gradient averaged over noisy copies",
)
def _smoothgrad(c: Chunk, p: P.SmoothGradParams) -> Tensor:
    return _noise_tunnel(c, p, "smoothgrad", p.abs)


@register_method(
    name="vargrad", captum_class="captum.attr.NoiseTunnel", params=P.NoiseTunnelParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=True, per_channel=True,
    passes=_n_samples, groupable=True, description="variance of the gradient over noisy copies",
)
def _vargrad(c: Chunk, p: P.NoiseTunnelParams) -> Tensor:
    return _noise_tunnel(c, p, "vargrad", False)


register_method(
    name="deeplift", captum_class="captum.attr.DeepLift", params=P.NoParams, kind="gradient",
    needs_baseline=True, needs_layer=False, stochastic=False, per_channel=True,
    passes=lambda p, hw: 2, activation_hooks=True,
    description="DeepLIFT (rescale rule) against the baseline",
)(_plain_captum(DeepLift, with_baselines=True))


@register_method(
    name="deeplift_shap", captum_class="captum.attr.DeepLiftShap", params=P.DeepLiftShapParams,
    kind="gradient", needs_baseline=True, needs_layer=False, stochastic=True, per_channel=True,
    passes=lambda p, hw: 2 * p.n_samples,
    activation_hooks=True,
    description="DeepLIFT averaged over a noisy baseline distribution",
)
def _deeplift_shap(c: Chunk, p: P.DeepLiftShapParams) -> Tensor:
    if c.baselines is None:
        raise ValueError("deeplift_shap needs baselines; pass baseline=")
    noise = torch.randn(
        (p.n_samples, *c.baselines.shape[1:]), dtype=c.baselines.dtype
    ).to(c.baselines.device)
    dist = c.baselines[:1] + p.stdevs * noise
    dist[0] = c.baselines[0]
    with _deeplift_errors("deeplift_shap"):
        return DeepLiftShap(c.module).attribute(
            c.images, baselines=dist, target=c.classes, additional_forward_args=c.forward_args
        )


register_method(
    name="guided_backprop", captum_class="captum.attr.GuidedBackprop", params=P.NoParams,
    kind="gradient", needs_baseline=False, needs_layer=False, stochastic=False, per_channel=True,
    passes=_one, activation_hooks=True,
    description="guided backpropagation (positive gradients through ReLUs)",
)(_plain_captum(GuidedBackprop, with_baselines=False))


def upsample(attr: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Captum's layer-attribution upsampling to the input size."""
    return LayerAttribution.interpolate(attr, size, interpolate_mode=mode)


def _windows(p: P.OcclusionParams, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    wh, ww = pixels(p.window, hw[0]), pixels(p.window, hw[1])
    sh, sw = pixels(p.stride, hw[0]), pixels(p.stride, hw[1])
    return wh, ww, sh, sw


def _occlusion_passes(p: P.OcclusionParams, hw: tuple[int, int]) -> int:
    wh, ww, sh, sw = _windows(p, hw)
    return ((hw[0] - wh) // sh + 1) * ((hw[1] - ww) // sw + 1) + 1


@register_method(
    name="occlusion", captum_class="captum.attr.Occlusion", params=P.OcclusionParams,
    kind="perturbation", needs_baseline=True, needs_layer=False, stochastic=False,
    per_channel=False, passes=_occlusion_passes,
    description="output drop when a sliding square is replaced by the baseline",
)
def _occlusion(c: Chunk, p: P.OcclusionParams) -> Tensor:
    ch = c.images.shape[1]
    wh, ww, sh, sw = _windows(p, tuple(c.images.shape[-2:]))
    attr = Occlusion(c.module).attribute(
        c.images, sliding_window_shapes=(ch, wh, ww), strides=(ch, sh, sw),
        baselines=c.baselines, target=c.classes, additional_forward_args=c.forward_args,
        perturbations_per_eval=max(1, c.rows // c.images.shape[0]),
    )
    return attr[:, :1]


def _superpixel_run(explainer: Lime | KernelShap, c: Chunk, p: P.SuperpixelParams) -> Tensor:
    mask = superpixels(c.images, n_segments=p.n_segments, compactness=p.compactness)
    attr = explainer.attribute(
        c.images, baselines=c.baselines, target=c.classes,
        additional_forward_args=c.forward_args, feature_mask=mask, n_samples=p.n_samples,
        perturbations_per_eval=max(1, min(p.n_samples, c.rows)),
    )
    return attr[:, :1]


@register_method(
    name="lime", captum_class="captum.attr.Lime", params=P.LimeParams,
    kind="perturbation", needs_baseline=True, needs_layer=False, stochastic=True,
    per_channel=False, passes=_n_samples,
    description="LIME: a local linear (ridge) model of the output over SLIC superpixels",
)
def _lime(c: Chunk, p: P.LimeParams) -> Tensor:
    lime = Lime(c.module, interpretable_model=SkLearnRidge(alpha=p.alpha),
                similarity_func=_lime_similarity(p.kernel_width))
    return _superpixel_run(lime, c, p)


def _lime_similarity(kernel_width: float) -> Callable[..., float]:
    """The ``lime`` package's image kernel: cosine distance of the on/off vector of superpixels
    to the all-on vector (computed in that small space, not on the images)."""

    def similarity(_original: Tensor, _perturbed: Tensor, interpretable: Tensor, **_: object) -> float:
        z = interpretable.double().flatten()
        norm = float(z.norm())
        cosine = float(z.sum()) / (norm * z.numel() ** 0.5) if norm > 0 else 0.0
        return math.sqrt(math.exp(-((1.0 - cosine) ** 2) / kernel_width**2))

    return similarity


@register_method(
    name="kernel_shap", captum_class="captum.attr.KernelShap", params=P.SuperpixelParams,
    kind="perturbation", needs_baseline=True, needs_layer=False, stochastic=True,
    per_channel=False, passes=_n_samples,
    description="KernelSHAP over SLIC superpixels",
)
def _kernel_shap(c: Chunk, p: P.SuperpixelParams) -> Tensor:
    return _superpixel_run(KernelShap(c.module), c, p)


def _ablation_passes(p: P.FeatureAblationParams, hw: tuple[int, int]) -> int:
    if p.features == "superpixels":
        return p.n_segments + 1
    size = pixels(p.patch, min(hw))
    return -(-hw[0] // size) * -(-hw[1] // size) + 1


@register_method(
    name="feature_ablation", captum_class="captum.attr.FeatureAblation",
    params=P.FeatureAblationParams, kind="perturbation", needs_baseline=True, needs_layer=False,
    stochastic=False, per_channel=False, passes=_ablation_passes,
    description="output drop when one patch or superpixel is replaced by the baseline",
)
def _feature_ablation(c: Chunk, p: P.FeatureAblationParams) -> Tensor:
    if p.features == "superpixels":
        mask = superpixels(c.images, n_segments=p.n_segments, compactness=p.compactness)
    else:
        mask = patches(c.images, size=pixels(p.patch, min(c.images.shape[-2:])))
    attr = FeatureAblation(c.module).attribute(
        c.images, baselines=c.baselines, target=c.classes,
        additional_forward_args=c.forward_args, feature_mask=mask,
        perturbations_per_eval=max(1, c.rows // c.images.shape[0]),
    )
    return attr[:, :1]


@register_method(
    name="random", captum_class="", params=P.RandomParams, kind="control", needs_baseline=False,
    needs_layer=False, stochastic=True, per_channel=False, passes=lambda p, hw: 0,
    description="a seeded random map: the control every method should beat",
)
def _random(c: Chunk, p: P.RandomParams) -> Tensor:
    shape = (c.images.shape[0], 1, *c.images.shape[-2:])
    draw = torch.rand if p.distribution == "uniform" else torch.randn
    return draw(shape, dtype=torch.float32).to(c.images.device)
