"""The CAM family on one layer: GradCAM, GradCAM++, XGradCAM, HiResCAM, LayerCAM, EigenCAM,
ScoreCAM, AblationCAM (and Guided GradCAM), registered in :data:`METHODS`.

Every method reads the layer's activations ``A`` (and for the gradient methods their gradient
``G`` of the target logit) through one forward hook, as ``(n, C, h, w)`` grids
(:class:`~concilium.explain.layers.LayerLayout`: CNN maps, channels-last Swin maps and ViT
tokens with the class/register tokens dropped), forms a ``(n, h, w)`` map and upsamples it to the
image with Captum's interpolation. The formulas are those of ``pytorch_grad_cam`` (the reference
each is tested against on the same inputs; see ``tests/explain/test_cam.py``):

==============  ===============================================================================
gradcam         ``sum_c mean_hw(G)_c A_c``
gradcam_pp      weights ``sum_hw relu(G) a``, ``a = G^2 / (2 G^2 + sum_hw(A) G^3)``
xgradcam        weights ``sum_hw(G A) / sum_hw(A)``
hirescam        ``sum_c G_c A_c`` (element-wise)
layercam        ``sum_c relu(G_c) A_c``
eigencam        ``A``'s first principal component (pytorch_grad_cam's SVD projection, thin SVD)
scorecam        weights ``softmax_c f(x * norm(up(A_c)))``: one forward per channel
ablationcam     weights ``(f(x) - f(x | A_c = 0)) / f(x)``: one forward per channel
==============  ===============================================================================

followed by a ReLU (``relu=True``, the default, as pytorch_grad_cam). pytorch_grad_cam then
min-max scales each map to ``[0, 1]``; concilium keeps the raw values (scale-free metrics and
the ensemble normalisations decide scaling).

ScoreCAM and AblationCAM run the model once per channel of the layer, in batches of the plan's
forward rows. AblationCAM replaces the layer's output by the ablated copies in a forward hook
and feeds the model one row of the image for the rows above the layer (they are the same for
every copy), so the layers before the ablated one run once per batch instead of once per copy;
a model whose other branches cannot broadcast that one row falls back to full copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import GuidedBackprop
from torch import Tensor, nn
from torch.nn import functional as F

from concilium.explain import params as P
from concilium.explain.layers import LayerReader
from concilium.explain.methods import Chunk, register_method, upsample

_EPS_PP = 1e-6
_EPS_X = 1e-7
_EPS_SCORE = 1e-8
#: The pytorch_grad_cam class of each forward-only CAM.
_REFERENCE = {"eigencam": "EigenCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


@contextmanager
def _hooked(layer: nn.Module, replace: Callable[[Tensor], Tensor] | None = None) -> Iterator[list[Tensor]]:
    """Record the layer's output (optionally replaced by ``replace(output)``); the hook is
    removed on exit, also on an error. The model continues with a copy of the output, so an
    in-place operation after the layer (an in-place ReLU, a residual ``+=``) cannot rewrite the
    recorded activation, whose gradient still flows through the copy."""
    seen: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> Tensor | None:
        if not isinstance(out, Tensor):
            raise ValueError("the layer must return one tensor; choose a convolutional layer or a "
                             "block's norm")
        seen.append(out)
        return replace(out) if replace is not None else out.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _layer_of(c: Chunk) -> tuple[nn.Module, LayerReader]:
    if c.layer is None or c.layout is None:
        raise RuntimeError("internal: a layer method got a chunk without its layer")
    return c.layer, c.layout


def activations(c: Chunk) -> Tensor:
    """The layer's activations as ``(n, C, h, w)`` grids, from one forward pass."""
    layer, layout = _layer_of(c)
    with torch.no_grad(), _hooked(layer) as seen:
        c.module(c.images, *(c.forward_args or ()))
    return layout.to_grid(seen[-1].detach())


def activations_and_gradients(c: Chunk) -> tuple[Tensor, Tensor]:
    """The layer's activations and their gradient of the chunk's target logits, as ``(n, C, h,
    w)`` grids, from one forward and one backward pass."""
    layer, layout = _layer_of(c)
    x = c.images.detach().requires_grad_(True)
    with torch.enable_grad(), _hooked(layer) as seen:
        logits = c.module(x, *(c.forward_args or ()))
        act = seen[-1]
        selected = logits.gather(1, c.classes.view(-1, 1)).sum()
        grad = torch.autograd.grad(selected, act)[0]
    return layout.to_grid(act.detach()), layout.to_grid(grad.detach())


def _sum_hw(t: Tensor) -> Tensor:
    return t.sum(dim=(2, 3), keepdim=True)


def cam_from_gradients(method: str, act: Tensor, grad: Tensor) -> Tensor:
    """The ``(n, h, w)`` map of a gradient CAM method from ``(n, C, h, w)`` activations and
    gradients (before the ReLU).

    Raises:
        ValueError: on a method that is not a gradient CAM.
    """
    if method == "gradcam":
        return (grad.mean(dim=(2, 3), keepdim=True) * act).sum(1)
    if method == "gradcam_pp":
        g2 = grad.pow(2)
        alpha = g2 / (2 * g2 + _sum_hw(act) * g2 * grad + _EPS_PP)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        return (_sum_hw(torch.relu(grad) * alpha) * act).sum(1)
    if method == "xgradcam":
        return (_sum_hw(grad * act / (_sum_hw(act) + _EPS_X)) * act).sum(1)
    if method == "hirescam":
        return (grad * act).sum(1)
    if method == "layercam":
        return (torch.relu(grad) * act).sum(1)
    raise ValueError(f"{method!r} is not a gradient CAM; valid: {', '.join(GRADIENT_CAMS)}")


#: The CAM methods computed from one forward+backward pass of the layer.
GRADIENT_CAMS: tuple[str, ...] = ("gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam")


def _finish(cam: Tensor, c: Chunk, p: P.GradCamParams) -> Tensor:
    """ReLU (``p.relu``) and upsampling of ``(n, h, w)`` maps to ``(n, 1, H, W)``."""
    cam = torch.relu(cam) if p.relu else cam
    return upsample(cam.unsqueeze(1), tuple(c.images.shape[-2:]), p.interpolation)


#: method name -> its ``(n, h, w)`` layer-resolution map of a chunk, before the ReLU; filled
#: as the methods are registered below.
LAYER_MAPS: dict[str, Callable[[Chunk], Tensor]] = {}


def _gradient_map(method: str) -> Callable[[Chunk], Tensor]:
    def layer_map(c: Chunk) -> Tensor:
        act, grad = activations_and_gradients(c)
        return cam_from_gradients(method, act, grad)

    return layer_map


def _cam_method(method: str) -> Callable[[Chunk, P.GradCamParams], Tensor]:
    """The registered ``run`` of a CAM method: its layer map, ReLU'd and upsampled."""

    def run(c: Chunk, p: P.GradCamParams) -> Tensor:
        return _finish(LAYER_MAPS[method](c), c, p)

    return run


_GRADIENT_CAM_INFO: dict[str, tuple[str, str]] = {
    "gradcam": ("captum.attr.LayerGradCam", "GradCAM: activations weighted by their mean gradient"),
    "gradcam_pp": ("pytorch_grad_cam.GradCAMPlusPlus",
                   "GradCAM++: positive gradients weighted by second/third-order terms"),
    "xgradcam": ("pytorch_grad_cam.XGradCAM", "XGradCAM: activation-normalised gradient weights"),
    "hirescam": ("pytorch_grad_cam.HiResCAM", "HiResCAM: element-wise gradient times activation"),
    "layercam": ("pytorch_grad_cam.LayerCAM", "LayerCAM: positive gradients times activations"),
}

for _name, (_reference, _description) in _GRADIENT_CAM_INFO.items():
    LAYER_MAPS[_name] = _gradient_map(_name)
    register_method(
        name=_name, captum_class=_reference, params=P.GradCamParams, kind="gradient",
        needs_baseline=False, needs_layer=True, stochastic=False, per_channel=False,
        passes=lambda p, hw: 1, description=_description + ", upsampled to the image",
    )(_cam_method(_name))


@register_method(
    name="guided_gradcam", captum_class="captum.attr.GuidedGradCam", params=P.GuidedGradCamParams,
    kind="gradient", needs_baseline=False, needs_layer=True, stochastic=False, per_channel=True,
    passes=lambda p, hw: 2, activation_hooks=True,
    description="guided backpropagation times GradCAM",
)
def _guided_gradcam(c: Chunk, p: P.GuidedGradCamParams) -> Tensor:
    # Captum's GuidedGradCam, with GradCAM read through the layer layout (ViT tokens too)
    cam = _finish(LAYER_MAPS["gradcam"](c), c,
                  P.GradCamParams(relu=True, interpolation=p.interpolation))
    guided = GuidedBackprop(c.module).attribute(
        c.images, target=c.classes, additional_forward_args=c.forward_args
    )
    return guided * cam


def eigen_projection(act: Tensor) -> Tensor:
    """pytorch_grad_cam's ``get_2d_projection`` of ``(n, C, h, w)`` activations: each image's
    ``(h*w, C)`` matrix, centred per channel, projected on its first right singular vector.
    NumPy's thin SVD gives the same vector, with the same sign, as the full one pytorch_grad_cam
    computes (whose ``C x C`` factor it never uses), at a fraction of the cost; torch's SVD may
    flip the sign (the map would then be ReLU'd away), so NumPy's is used, on the CPU."""
    n, ch, h, w = act.shape
    m = np.nan_to_num(act.detach().float().cpu().numpy()).reshape(n, ch, h * w).transpose(0, 2, 1)
    m = m - m.mean(axis=1, keepdims=True)
    out = np.empty((n, h * w), dtype=np.float32)
    for i in range(n):
        _, _, vt = np.linalg.svd(m[i], full_matrices=False)
        out[i] = m[i] @ vt[0]
    return torch.from_numpy(out.reshape(n, h, w)).to(act.device, act.dtype)


def _eigencam(c: Chunk) -> Tensor:
    return eigen_projection(activations(c))


def _rows_of(c: Chunk, i: int, k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The target column of image ``i`` repeated ``k`` times, and its forward arguments."""
    args = tuple(a[i:i + 1].expand(k, *a.shape[1:]) for a in (c.forward_args or ()))
    return c.classes[i:i + 1].expand(k), args


def _score(c: Chunk, i: int, x: Tensor) -> Tensor:
    classes, args = _rows_of(c, i, x.shape[0])
    return c.module(x, *args).gather(1, classes.view(-1, 1)).flatten()


def _scorecam(c: Chunk) -> Tensor:
    act = activations(c)
    size = tuple(c.images.shape[-2:])
    rows = max(1, c.rows)
    weights = []
    for i in range(act.shape[0]):
        up = F.interpolate(act[i:i + 1], size=size, mode="bilinear", align_corners=True)[0]
        flat = up.flatten(1)
        lo, hi = flat.min(1).values, flat.max(1).values
        masks = (up - lo[:, None, None]) / (hi - lo + _EPS_SCORE)[:, None, None]
        scores = []
        for s in range(0, masks.shape[0], rows):
            x = c.images[i:i + 1] * masks[s:s + rows, None]
            scores.append(_score(c, i, x))
        weights.append(torch.softmax(torch.cat(scores), 0))
    w = torch.stack(weights)[:, :, None, None]
    return (w * act).sum(1)


def _ablated(raw: Tensor, channels: Tensor, channel_dim: int) -> Tensor:
    """``len(channels)`` copies of the one-row ``raw`` output, copy ``t`` with channel
    ``channels[t]`` set to zero."""
    out = raw.expand(len(channels), *raw.shape[1:]).clone()
    moved = out.movedim(channel_dim, 1)
    moved[torch.arange(len(channels), device=raw.device), channels] = 0
    return out


def _ablation_scores(c: Chunk, i: int, raw: Tensor, channels: Tensor) -> Tensor:
    """Target logits of image ``i`` with each of ``channels`` ablated at the layer."""
    layer, layout = _layer_of(c)
    copies = _ablated(raw, channels, layout.layout(raw).channel_dim)
    for one_row in (True, False):  # one upstream row (broadcast) first, full copies if refused
        x = c.images[i:i + 1]
        if not one_row:
            x = x.expand(len(channels), *x.shape[1:])
        try:
            with _hooked(layer, lambda _out: copies):
                classes, args = _rows_of(c, i, len(channels))
                out = c.module(x, *args)
            if out.shape[0] == len(channels):
                return out.gather(1, classes.view(-1, 1)).flatten()
        except RuntimeError:
            if not one_row:
                raise
    raise RuntimeError("internal: ablated forward returned the wrong number of rows")


def _ablationcam(c: Chunk) -> Tensor:
    layer, layout = _layer_of(c)
    rows = max(1, c.rows)
    weights = []
    grids = []
    for i in range(c.images.shape[0]):
        with _hooked(layer) as seen:
            base = _score(c, i, c.images[i:i + 1])
        raw = seen[-1].detach()
        grids.append(layout.to_grid(raw))
        n_channels = raw.shape[layout.layout(raw).channel_dim]
        drops = []
        for s in range(0, n_channels, rows):
            channels = torch.arange(s, min(n_channels, s + rows), device=raw.device)
            drops.append(_ablation_scores(c, i, raw, channels))
        weights.append((base - torch.cat(drops)) / base)
    w = torch.stack(weights)[:, :, None, None]
    return (w * torch.cat(grids)).sum(1)


_FORWARD_CAM_INFO: dict[str, tuple[Callable[[Chunk], Tensor], bool, str]] = {
    "eigencam": (_eigencam, False,
                 "EigenCAM: first principal component of the layer's activations (class-agnostic)"),
    "scorecam": (_scorecam, True,
                 "ScoreCAM: softmax of the target logit on the image masked by each channel"),
    "ablationcam": (_ablationcam, True,
                    "AblationCAM: relative drop of the target logit when each channel is zeroed"),
}

for _name, (_map, _per_channel, _description) in _FORWARD_CAM_INFO.items():
    LAYER_MAPS[_name] = _map
    register_method(
        name=_name, captum_class=f"pytorch_grad_cam.{_REFERENCE[_name]}", params=P.GradCamParams,
        kind="perturbation", needs_baseline=False, needs_layer=True, stochastic=False,
        per_channel=False, passes=lambda p, hw: 1, per_layer_channel=_per_channel,
        description=_description + ", upsampled to the image",
    )(_cam_method(_name))
