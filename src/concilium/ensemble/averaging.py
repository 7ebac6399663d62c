"""Cross-model averaging (Ahamed, Alipour, Kumar, Pazzani): Ens-Avg, Ens-Logit and Exp-Avg.

* **Ens-Avg** (:func:`ens_avg`): normalise each member's map of an image the same way, then reduce
  over the members (the paper: the mean). Written to the store as source ``ens-avg``.
* **Ens-Logit** (:class:`LogitEnsemble`, :func:`ens_logit_maps`): the explanation of the ensemble
  *model* whose logits are the mean of the members' logits. Source ``ens-logit``.
* **Exp-Avg** is a statistic of the metrics table, not a map: it is defined once, in
  :mod:`concilium.metrics.tables` (with the paper's table). Ens-Avg above Exp-Avg is the paper's
  claim.

GradCAM of a logit ensemble:
    An ensemble has no single last convolutional layer. Take member ``j``'s GradCAM layer ``A_j``:
    the gradient of the ensemble logit ``(1/n) sum_i f_i`` with respect to ``A_j`` is ``(1/n)``
    times the gradient of ``f_j``, and ReLU and bilinear up-sampling are positively homogeneous,
    so GradCAM of the ensemble at ``A_j`` is ``GradCAM_j / n``. :func:`ens_logit_maps` sums the
    ensemble's GradCAM over all members' layers, each computed on the averaged-logit model, so
    the target is the ensemble's (``"pred"`` is the argmax of the averaged logits, not each
    member's own prediction); for a class target this is the mean of the members' GradCAMs of
    that class. This holds for member-specific layers only. Members that share a layer (one
    backbone: ``head`` diversity with ``finetune="head"``; detected by :func:`shared_layer` from
    equal activations) have one activation ``A`` there, and the averaged-logit model's GradCAM is
    ``ReLU(sum_k mean_hw(dF/dA)_k A_k)`` with ``dF/dA`` the mean of the members' gradients, i.e.
    ``ReLU(mean of pre-ReLU CAMs)``, which is at most (and in general not) the mean of the
    members' GradCAMs. :func:`ens_logit_maps` then explains ``LogitEnsemble(shared_layer=...)``,
    whose members' outputs at that layer are tied to one tensor; every layer method
    (``guided_gradcam`` too) works there. With member-specific layers, layer methods other than
    GradCAM have no single layer and are refused with a ``ValueError`` naming the method.
    Every other method explains the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from concilium.ensemble.normalise import NormalisationName
from concilium.ensemble.reduce import ReducerName, aggregate
from concilium.explain import METHODS, explain

Explainer = Callable[..., Tensor]


def ens_avg(
    member_maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    *,
    normalisation: NormalisationName | str = "max_abs",
    reducer: ReducerName | str = "mean",
    absolute: bool = False,
) -> Tensor:
    """Ens-Avg: the members' maps of one method, normalised per image, reduced over members.

    Args:
        member_maps: ``M`` members' maps of the same images, ``(M, N, H, W)`` or a sequence /
            mapping of ``(N, H, W)``.
        normalisation: per-image normalisation applied to every member map first.
        reducer: how members are combined (the paper: ``"mean"``).
        absolute: take ``|map|`` first.

    Returns:
        ``(N, H, W)``. An ensemble of one member is that member's normalised map.
    """
    return aggregate(member_maps, normalisation=normalisation, reducer=reducer, absolute=absolute)


class LogitEnsemble(nn.Module):
    """A model whose logits are the (weighted) mean of its members' logits.

    Args:
        models: the member models, each mapping ``(N, C, H, W)`` to ``(N, num_classes)``.
        weights: optional non-negative weights (default: equal); normalised to sum to 1.

        shared_layer: a layer name the members share (equal activations, checked in every
            forward; ``ValueError`` otherwise): their outputs there are tied to member 0's, so
            the ensemble has one activation and ``gradcam_layer`` is ``members.0.<name>``.

    Without ``shared_layer`` the wrapper has no ``gradcam_layer``: see the module docstring for
    how GradCAM of the ensemble is computed from the members.
    """

    def __init__(self, models: Sequence[nn.Module], *, weights: Sequence[float] | None = None,
                 shared_layer: str | None = None) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("LogitEnsemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.shared_layer = shared_layer
        if shared_layer is not None:
            layers = [dict(m.named_modules()).get(shared_layer) for m in models]
            if any(layer is None for layer in layers):
                raise ValueError(f"shared_layer {shared_layer!r} is not a module of every member")
            if len({id(layer) for layer in layers}) != len(layers):
                raise ValueError("members hold the same module object at the shared layer; give "
                                 "each member its own copy (sharing is read from equal activations)")
            self.gradcam_layer = f"members.0.{shared_layer}"
        w = torch.ones(len(models)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(models),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights must be {len(models)} non-negative numbers with a positive sum; got {weights}"
            )
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: Tensor) -> Tensor:
        with self._tied():
            logits = [m(x) for m in self.members]
        shapes = {tuple(lg.shape) for lg in logits}
        if len(shapes) != 1:
            raise ValueError(f"members return logits of different shapes {sorted(shapes)}; "
                             "a logit ensemble needs the same classes in every member")
        return torch.einsum("m,mnc->nc", self.weights.to(logits[0].dtype), torch.stack(logits))

    @contextmanager
    def _tied(self) -> Iterator[None]:
        """With a ``shared_layer``: every member's output of that layer is replaced by member 0's
        (checked equal), so the ensemble has one activation there and its gradient sums every
        member's. Hooks removed on exit."""
        if self.shared_layer is None:
            yield
            return
        shared: dict[str, Tensor] = {}

        def first(_m: nn.Module, _i: object, out: Tensor) -> None:
            shared["act"] = out

        def tie(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
            act = shared["act"]
            if out.shape != act.shape or not torch.allclose(out, act, rtol=1e-4, atol=1e-6):
                raise ValueError(f"layer {self.shared_layer!r} is not shared: the members' "
                                 "activations differ there; leave shared_layer unset")
            return act

        layers = [dict(m.named_modules())[self.shared_layer] for m in self.members]
        handles = [layers[0].register_forward_hook(first)]
        try:
            handles += [layer.register_forward_hook(tie) for layer in layers[1:]]
            yield
        finally:
            for h in handles:
                h.remove()

    def randomisation_groups(self) -> list[tuple[str, list[str]]]:
        """The ensemble's layers for a model-randomisation test, bottom-up: layer ``k`` from the
        output is every member's ``k``-th layer from its output (members of other depths align
        at the output), randomised together. Named by the members' own layer name when they
        agree, else ``output-k``."""
        per_member = [
            [(f"members.{j}.{name}", name) for name, m in member.named_modules()
             if hasattr(m, "reset_parameters")]
            for j, member in enumerate(self.members)
        ]
        groups = []
        for k in range(max(len(p) for p in per_member)):
            layer = [p[len(p) - 1 - k] for p in per_member if k < len(p)]
            own = {name for _, name in layer}
            groups.append((own.pop() if len(own) == 1 else f"output-{k}",
                           [full for full, _ in layer]))
        return groups[::-1]


def ens_logit_maps(
    models: Sequence[nn.Module],
    images: Tensor,
    targets: Tensor | str | int,
    *,
    method: str,
    params: Mapping[str, object] | None = None,
    explainer: Explainer | None = None,
) -> Tensor:
    """Ens-Logit: explain the averaged-logit ensemble of ``models``.

    Args:
        models: member models.
        images: ``(N, C, H, W)``.
        targets: ``(N,)`` class indices or a target spec (``"pred"``: the ensemble's
            prediction), resolved on the averaged-logit model.
        method: explanation method name (``concilium.explain.METHODS``).
        params: extra method parameters, passed to the explainer by name.
        explainer: ``explainer(model, images, targets, method=..., **params) -> (N, H, W)``;
            defaults to :func:`concilium.explain.explain`.

    Returns:
        ``(N, H, W)``. For ``"gradcam"`` the ensemble's GradCAM summed over the members'
        layers, for the ensemble's target (see the module docstring).

    Raises:
        ValueError: a layer method other than ``"gradcam"`` on members without a shared layer,
            or a member without ``gradcam_layer``.
    """
    explainer = explain if explainer is None else explainer
    params = dict(params or {})
    wrapper = LogitEnsemble(models).to(images.device).eval()
    spec = METHODS.get(method) if method in METHODS else None
    if spec is None or not spec.needs_layer:
        return explainer(wrapper, images, targets, method=method, **params)
    layers = [getattr(m, "gradcam_layer", None) for m in models]
    if not all(isinstance(name, str) for name in layers):
        raise ValueError("a layer method on a logit ensemble needs every member's "
                         f"gradcam_layer; got {layers}")
    common = shared_layer(models, images, layers)
    if common is not None:  # one activation: the averaged-logit model's own layer method
        tied = LogitEnsemble(models, shared_layer=common).to(images.device).eval()
        return explainer(tied, images, targets, method=method, layer=tied.gradcam_layer, **params)
    if method != "gradcam":
        raise ValueError(
            f"method {method!r} attributes through one layer, and the averaged-logit ensemble of "
            "these members has none (each member has its own); of the layer methods only "
            "'gradcam' is defined then (summed over the members' layers); leave it out"
        )
    classes = _class_targets(wrapper, images, targets, params)
    if classes is not None:
        # the ensemble's GradCAM at member j's layer is member j's GradCAM of the ensemble's
        # class over n (module docstring): one pass per member, not one ensemble pass per member
        own = {k: v for k, v in params.items() if k != "labels"}
        maps = [explainer(m, images, classes, method=method, layer=name, **own)
                for m, name in zip(models, layers, strict=True)]
        return torch.stack(maps).sum(0) / len(models)
    # other targets (contrasts, attributes): the averaged-logit model at member j's layer, summed
    maps = [explainer(wrapper, images, targets, method=method, layer=f"members.{j}.{name}", **params)
            for j, name in enumerate(layers)]
    return torch.stack(maps).sum(0)


@torch.no_grad()
def _class_targets(wrapper: nn.Module, images: Tensor, targets: Tensor | str | int,
                   params: Mapping[str, object]) -> Tensor | None:
    """The class per image of a plain class target resolved on the averaged-logit model
    (``"pred"``: its argmax), or ``None`` for another kind of target."""
    n = images.shape[0]
    if isinstance(targets, Tensor):
        return targets.to(torch.long).expand(n) if targets.dim() == 0 else targets.to(torch.long)
    if isinstance(targets, int) or (isinstance(targets, str) and targets.isdigit()):
        return torch.full((n,), int(targets), dtype=torch.long)
    if targets == "label" and isinstance(params.get("labels"), Tensor):
        return params["labels"].to(torch.long)
    if targets == "pred":
        return torch.cat([wrapper(images[i:i + 64]).argmax(1)
                          for i in range(0, n, 64)]).cpu()
    return None


@torch.no_grad()
def shared_layer(models: Sequence[nn.Module], images: Tensor, layers: Sequence[str]) -> str | None:
    """The layer the members share, or ``None``: ``layers`` (one name per member) must be one
    name, and the members' activations there on ``images`` equal (one backbone: ``head``
    diversity with ``finetune="head"``)."""
    if len(models) < 2 or len(set(layers)) != 1:
        return None
    acts: list[Tensor] = []
    handles = []
    try:
        for m in models:
            layer = dict(m.named_modules()).get(layers[0])
            if layer is None:
                return None
            handles.append(layer.register_forward_hook(lambda _m, _i, out: acts.append(out)))
        was = [m.training for m in models]
        for m in models:
            m.eval()(images[:8])
        for m, t in zip(models, was, strict=True):
            m.train(t)
    finally:
        for h in handles:
            h.remove()
    same = all(a.shape == acts[0].shape and torch.allclose(a, acts[0], rtol=1e-4, atol=1e-6)
               for a in acts[1:])
    return layers[0] if same else None
