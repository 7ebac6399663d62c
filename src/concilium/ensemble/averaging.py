"""Cross-model averaging (Ahamed, Alipour, Kumar, Pazzani): Ens-Avg, Ens-Logit and Exp-Avg.

* **Ens-Avg** (:func:`ens_avg`): normalise each member's map of an image the same way, then reduce
  over the members (the paper: the mean). Written to the store as source ``ens-avg``.
* **Ens-Logit** (:class:`LogitEnsemble`, :func:`ens_logit_maps`): the explanation of the ensemble
  *model* whose logits are the mean of the members' logits. Source ``ens-logit``.
* **Exp-Avg** (:func:`paper_table`): the mean over members of each member's metric, read from the
  metrics table. Ens-Avg above Exp-Avg is the paper's claim.

GradCAM of a logit ensemble:
    An ensemble has no single last convolutional layer. Take member ``j``'s GradCAM layer ``A_j``:
    the gradient of the ensemble logit ``(1/n) sum_i f_i`` with respect to ``A_j`` is ``(1/n)``
    times the gradient of ``f_j``, and ReLU and bilinear up-sampling are positively homogeneous,
    so GradCAM of the ensemble at ``A_j`` is ``GradCAM_j / n``. Summing the ensemble's GradCAM over
    all members' layers therefore gives **the mean of the members' GradCAMs** (unnormalised).
    :func:`ens_logit_maps` computes exactly that for ``method="gradcam"`` and explains the wrapper
    for every other method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from concilium.ensemble.normalise import NormalisationName
from concilium.ensemble.reduce import ReducerName, aggregate

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

    The wrapper has no ``gradcam_layer`` on purpose: see the module docstring for how GradCAM of
    the ensemble is computed from the members.
    """

    def __init__(self, models: Sequence[nn.Module], *, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("LogitEnsemble needs at least one model")
        self.members = nn.ModuleList(models)
        w = torch.ones(len(models)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(models),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights must be {len(models)} non-negative numbers with a positive sum; got {weights}"
            )
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: Tensor) -> Tensor:
        logits = [m(x) for m in self.members]
        shapes = {tuple(lg.shape) for lg in logits}
        if len(shapes) != 1:
            raise ValueError(f"members return logits of different shapes {sorted(shapes)}; "
                             "a logit ensemble needs the same classes in every member")
        return torch.einsum("m,mnc->nc", self.weights.to(logits[0].dtype), torch.stack(logits))


def ens_logit_maps(
    models: Sequence[nn.Module],
    images: Tensor,
    targets: Tensor,
    *,
    method: str,
    params: Mapping[str, object] | None = None,
    explainer: Explainer | None = None,
) -> Tensor:
    """Ens-Logit: explain the averaged-logit ensemble of ``models``.

    Args:
        models: member models.
        images: ``(N, C, H, W)``.
        targets: ``(N,)`` class indices.
        method: explanation method name (``concilium.explain.METHODS``).
        params: extra method parameters, passed to the explainer by name.
        explainer: ``explainer(model, images, targets, method=..., **params) -> (N, H, W)``;
            defaults to :func:`concilium.explain.explain`.

    Returns:
        ``(N, H, W)``. For ``"gradcam"`` the mean of the members' GradCAMs (identical to the
        ensemble's GradCAM summed over the members' layers, see the module docstring).
    """
    if explainer is None:
        from concilium.explain import explain as explainer
    params = dict(params or {})
    if method == "gradcam":
        maps = [explainer(m, images, targets, method=method, **params) for m in models]
        return torch.stack(maps).mean(0)
    wrapper = LogitEnsemble(models).to(images.device).eval()
    return explainer(wrapper, images, targets, method=method, **params)


def paper_table(
    metrics: pd.DataFrame,
    *,
    members: Sequence[str],
    ens_source: str = "ens-avg",
    logit_source: str | None = "ens-logit",
    higher_is_better: Mapping[str, bool] | None = None,
) -> pd.DataFrame:
    """The paper's table: per method and metric, metric(Ens-Avg), Exp-Avg and Ens-Logit.

    Args:
        metrics: the metrics table (columns ``sample, source, method, metric, value``).
        members: the member sources whose mean is Exp-Avg (e.g. ``["m0", ..., "m10"]``).
        ens_source: the Ens-Avg source name.
        logit_source: the Ens-Logit source name (``None`` to leave it out).
        higher_is_better: per metric; defaults to the metric registry's metadata, else True.

    Returns:
        Columns ``method, metric, ens_avg, exp_avg, ens_logit, member_min, member_max,
        n_members, higher_is_better, gain`` (``gain`` is Ens-Avg minus Exp-Avg, sign flipped for
        lower-is-better metrics so that a positive gain always means Ens-Avg is better) and
        ``ens_avg_better``.

    Raises:
        ValueError: if the table lacks the needed columns, a member, or the ensemble source.
    """
    need = {"source", "method", "metric", "value"}
    if not need <= set(metrics.columns):
        raise ValueError(f"metrics table needs columns {sorted(need)}; got {list(metrics.columns)}")
    members = list(members)
    present = set(metrics["source"].unique())
    missing = [s for s in [*members, ens_source] if s not in present]
    if missing:
        raise ValueError(f"sources {missing} are not in the metrics table (have {sorted(present)}); "
                         "run `concilium evaluate` on them first")
    per_source = metrics.groupby(["source", "method", "metric"])["value"].mean()
    rows = []
    for (method, metric), _ in metrics[metrics.source == ens_source].groupby(["method", "metric"]):
        member_vals = [per_source.get((s, method, metric)) for s in members]
        member_vals = [v for v in member_vals if v is not None and pd.notna(v)]
        if not member_vals:
            continue
        hib = _higher_is_better(metric, higher_is_better)
        ens = float(per_source[(ens_source, method, metric)])
        exp = float(sum(member_vals) / len(member_vals))
        logit = per_source.get((logit_source, method, metric)) if logit_source else None
        gain = (ens - exp) if hib else (exp - ens)
        rows.append({
            "method": method, "metric": metric, "ens_avg": ens, "exp_avg": exp,
            "ens_logit": float(logit) if logit is not None else float("nan"),
            "member_min": float(min(member_vals)), "member_max": float(max(member_vals)),
            "n_members": len(member_vals), "higher_is_better": hib, "gain": gain,
            "ens_avg_better": gain > 0,
        })
    return pd.DataFrame(rows)


def _higher_is_better(metric: str, given: Mapping[str, bool] | None) -> bool:
    if given is not None and metric in given:
        return bool(given[metric])
    try:
        from concilium.metrics import METRICS

        entry = METRICS.get(metric)
        return bool(getattr(entry, "higher_is_better", True))
    except (ImportError, ValueError):
        return True
