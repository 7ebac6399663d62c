"""Parameter models of the attribution methods: documented defaults, validated values, and
unknown names rejected with the list of valid ones.

``method_params("integrated_gradients", n_steps=64)`` gives the fully resolved parameters
(defaults included) that the store hashes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class MethodParams(BaseModel):
    """Base of every parameter model: frozen, strict about unknown names."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(MethodParams):
    """A method without parameters."""


class SaliencyParams(MethodParams):
    """Saliency (Simonyan et al.).

    Attributes:
        abs: return the absolute gradient (Captum's default, True) or the signed gradient.
    """

    abs: bool = True


class IntegratedGradientsParams(MethodParams):
    """Integrated gradients (Sundararajan et al.).

    Attributes:
        n_steps: integration steps (default 50).
        integration: Captum's integration rule (default ``"gausslegendre"``).
    """

    n_steps: int = Field(50, ge=1)
    integration: Literal[
        "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
    ] = "gausslegendre"


class GradientShapParams(MethodParams):
    """GradientSHAP (expected gradients with input noise).

    Attributes:
        n_samples: random (baseline, point on path, noise) samples per image (default 20).
        stdevs: standard deviation of the Gaussian noise added to the input (default 0.09).
    """

    n_samples: int = Field(20, ge=1)
    stdevs: float = Field(0.09, ge=0.0)


class NoiseTunnelParams(MethodParams):
    """SmoothGrad / VarGrad over the gradient (Smilkov et al.; Adebayo et al.).

    Attributes:
        n_samples: noisy copies per image (default 50).
        sigma: noise standard deviation as a fraction of the input range; images are in
            ``[0, 1]``, so this is the absolute standard deviation (default 0.15).
    """

    n_samples: int = Field(50, ge=1)
    sigma: float = Field(0.15, ge=0.0)


class SmoothGradParams(NoiseTunnelParams):
    """SmoothGrad.

    Attributes:
        abs: average absolute gradients (Captum's ``Saliency`` default, True) or signed ones.
    """

    abs: bool = True


class DeepLiftShapParams(MethodParams):
    """DeepLIFT-SHAP over a baseline distribution.

    Attributes:
        n_samples: baselines in the distribution (default 10): the image's baseline plus
            Gaussian noise of standard deviation ``stdevs``.
        stdevs: noise of the baseline distribution (default 0.1).
    """

    n_samples: int = Field(10, ge=2)
    stdevs: float = Field(0.1, ge=0.0)


class GradCamParams(MethodParams):
    """GradCAM (Selvaraju et al.) on a convolutional layer, upsampled to the input size.

    Attributes:
        relu: keep only positive evidence (default True).
        interpolation: upsampling mode (default ``"bilinear"``).
    """

    relu: bool = True
    interpolation: Literal["bilinear", "nearest", "bicubic"] = "bilinear"


class GuidedGradCamParams(MethodParams):
    """Guided GradCAM: guided backpropagation times upsampled GradCAM.

    Attributes:
        interpolation: upsampling mode of the GradCAM map (default ``"bilinear"``).
    """

    interpolation: Literal["bilinear", "nearest", "bicubic"] = "bilinear"


class LrpParams(MethodParams):
    """Layer-wise relevance propagation through zennit (Bach et al.; Montavon et al.).

    Attributes:
        composite: ``"epsilon_plus_flat"`` (default: flat rule on the first layer, z+ on the
            convolutions, epsilon on the dense layers) or ``"epsilon_gamma_box"`` (z-box on the
            first convolution, gamma on the others, epsilon on the dense layers).
        canonizer: ``"auto"`` (default: zennit's ResNet canonizer when the model has torchvision
            residual blocks, else batch-norm merging when it has batch norms, else none),
            ``"resnet"``, ``"vgg"`` (batch norms merged into the preceding layer) or ``"none"``.
        epsilon: the epsilon rule's stabiliser (default 1e-6).
        gamma: the gamma rule's parameter (``epsilon_gamma_box``; default 0.25).
        low: lowest value of the first convolution's input (``epsilon_gamma_box``; default 0.0,
            images in ``[0, 1]``; give the normalised bound when the model normalises inside).
        high: highest such value (default 1.0).
    """

    composite: Literal["epsilon_plus_flat", "epsilon_gamma_box"] = "epsilon_plus_flat"
    canonizer: Literal["auto", "resnet", "vgg", "none"] = "auto"
    epsilon: float = Field(1e-6, gt=0)
    gamma: float = Field(0.25, ge=0)
    low: float = 0.0
    high: float = 1.0


class RolloutParams(MethodParams):
    """Attention rollout for ViTs (Abnar & Zuidema, 2020): the class token's row of the product,
    over the blocks, of each block's head-fused attention plus the identity, rows normalised.

    Attributes:
        head_fusion: how the heads of a block are fused: ``"mean"`` (default), ``"max"`` or
            ``"min"``.
        interpolation: upsampling mode of the patch map (default ``"bilinear"``).
    """

    head_fusion: Literal["mean", "max", "min"] = "mean"
    interpolation: Literal["bilinear", "nearest", "bicubic"] = "bilinear"


class OcclusionParams(MethodParams):
    """Occlusion (Zeiler & Fergus): slide a baseline-filled square over the image.

    Attributes:
        window: square side, in pixels (int) or as a fraction of the image side (float);
            default 0.125 (8x8 at 64x64).
        stride: step, in pixels or as a fraction; default 0.0625 (4 at 64x64).
    """

    window: int | float = Field(0.125, gt=0)
    stride: int | float = Field(0.0625, gt=0)


class SuperpixelParams(MethodParams):
    """KernelSHAP on SLIC superpixels.

    Attributes:
        n_samples: perturbed images per explained image (default 200).
        n_segments: approximate number of SLIC superpixels (default 50).
        compactness: SLIC compactness (default 10.0).
    """

    n_samples: int = Field(200, ge=2)
    n_segments: int = Field(50, ge=2)
    compactness: float = Field(10.0, gt=0)


class LimeParams(SuperpixelParams):
    """LIME on SLIC superpixels (Ribeiro et al.), configured like the original ``lime`` package's
    image explainer: ridge regression (Captum's default Lasso zeroes every weight of small logit
    changes) and sample weights from the cosine distance in the superpixel on/off space,
    ``sqrt(exp(-d^2 / kernel_width^2))``.

    Attributes:
        alpha: ridge regularisation of the surrogate linear model (default 1.0).
        kernel_width: width of the similarity kernel (default 0.25, as in ``lime``).
    """

    alpha: float = Field(1.0, gt=0)
    kernel_width: float = Field(0.25, gt=0)


class FeatureAblationParams(MethodParams):
    """Feature ablation: replace one feature at a time by the baseline.

    Attributes:
        features: ``"patches"`` (square patches, default) or ``"superpixels"`` (SLIC).
        patch: patch side in pixels (int) or as a fraction of the image side (float; default
            0.125).
        n_segments: approximate number of superpixels (default 50).
        compactness: SLIC compactness (default 10.0).
    """

    features: Literal["patches", "superpixels"] = "patches"
    patch: int | float = Field(0.125, gt=0)
    n_segments: int = Field(50, ge=2)
    compactness: float = Field(10.0, gt=0)


class RandomParams(MethodParams):
    """A random control map (no model involved).

    Attributes:
        distribution: ``"uniform"`` in [0, 1) (default) or standard ``"normal"``.
    """

    distribution: Literal["uniform", "normal"] = "uniform"


def validate_params(method: str, model: type[MethodParams], params: dict[str, Any]) -> MethodParams:
    """Build ``model`` from ``params``; errors name the method, the bad keys and the valid ones.

    Raises:
        ValueError: on an unknown parameter name or an invalid value.
    """
    valid = list(model.model_fields)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for method {method!r}; "
            f"valid parameters: {', '.join(valid) or 'none'}"
        )
    try:
        return model(**params)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
        )
        raise ValueError(f"invalid parameters for method {method!r}: {problems}") from None
