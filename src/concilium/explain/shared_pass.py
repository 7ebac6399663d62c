"""Saliency, input x gradient and GradCAM of one model from one forward+backward pass.

The input gradient of the target logit gives saliency (its magnitude) and input x gradient; a
forward hook on the GradCAM layer keeps that layer's activation, whose gradient comes from the
same backward call. The results equal Captum's ``Saliency``, ``InputXGradient`` and
``LayerGradCam`` + ``LayerAttribution.interpolate`` (tested against them), at one pass instead
of three.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from concilium.explain.batching import images_per_chunk
from concilium.explain.cam import cam_from_gradients
from concilium.explain.methods import upsample
from concilium.explain.params import GradCamParams, MethodParams, SaliencyParams
from concilium.explain.prepare import Prepared

#: Methods :func:`~concilium.explain.explain_many` computes together from one forward+backward
#: pass.
SHARED_PASS: tuple[str, ...] = ("saliency", "input_x_gradient", "gradcam")


@contextmanager
def _capture(layer: nn.Module | None, store: dict[str, Tensor]) -> Iterator[None]:
    if layer is None:
        yield
        return

    def hook(_m: nn.Module, _inp: object, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise ValueError("the GradCAM layer must return one tensor; choose a convolutional layer")
        store["act"] = out
        return out.clone()  # in-place operations after the layer cannot rewrite the activation

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def shared_pass(prep: Prepared, wanted: dict[str, MethodParams]) -> dict[str, Tensor]:
    """Saliency, input x gradient and GradCAM from one forward+backward pass per chunk.

    Args:
        prep: the prepared call (with a batching plan, and a layer when GradCAM is wanted).
        wanted: method name (from :data:`SHARED_PASS`) -> its validated parameters.

    Returns:
        method name -> channel-signed attributions ``(N, C or 1, H, W)``.

    Raises:
        ValueError: if ``wanted`` names a method outside :data:`SHARED_PASS`, or the GradCAM
            layer does not return one tensor.
    """
    unknown = sorted(set(wanted) - set(SHARED_PASS))
    if unknown:
        raise ValueError(f"the shared pass computes {', '.join(SHARED_PASS)} only; got {unknown}")
    if prep.plan is None:
        raise RuntimeError("internal: no batching plan for the shared pass")
    images = prep.images
    n, hw = images.shape[0], tuple(images.shape[-2:])
    step = images_per_chunk(prep.plan.rows_grad, 1, n)
    layer = prep.layer if "gradcam" in wanted else None
    out: dict[str, list[Tensor]] = {m: [] for m in wanted}
    for start in range(0, n, step):
        c = prep.chunk(start, min(n, start + step), prep.plan.rows_grad)
        acts: dict[str, Tensor] = {}
        x = c.images.detach().requires_grad_(True)
        with torch.enable_grad(), _capture(layer, acts):
            logits = c.module(x, *(c.forward_args or ()))
            selected = logits.gather(1, c.classes.view(-1, 1)).sum()
            wrt = [x] + ([acts["act"]] if layer is not None else [])
            grads = torch.autograd.grad(selected, wrt)
        g = grads[0].detach()
        if "saliency" in wanted:
            sp = wanted["saliency"]
            out["saliency"].append(g.abs() if isinstance(sp, SaliencyParams) and sp.abs else g)
        if "input_x_gradient" in wanted:
            out["input_x_gradient"].append(c.images * g)
        if layer is not None:
            gp = wanted["gradcam"]
            if not isinstance(gp, GradCamParams):
                raise RuntimeError("internal: gradcam params of the wrong type")
            if prep.layout is None:
                raise RuntimeError("internal: no layer layout for the shared GradCAM")
            act, dact = prep.layout.to_grid(acts["act"].detach()), prep.layout.to_grid(grads[1].detach())
            cam = cam_from_gradients("gradcam", act, dact).unsqueeze(1)
            cam = torch.relu(cam) if gp.relu else cam
            out["gradcam"].append(upsample(cam, hw, gp.interpolation))
    return {m: torch.cat(v) for m, v in out.items()}
