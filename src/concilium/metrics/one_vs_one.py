"""The one-vs-one evaluation: "why class c and not t", scored against the exact counterfactual.

For images ``x`` of class ``c``, contrast classes ``t`` and their minimal counterfactuals ``x*``
(the benchmark renders them exactly: :func:`concilium.data.counterfactuals`), every pair of an
attribution method and a baseline explains ``logit_c - logit_t``
(:func:`~concilium.metrics.contrast.contrast_explain`) and is scored per image on:

* ``relevance_mass`` and ``auc``: relevance mass and ROC-AUC of ``|map|`` on the pixels where ``x`` and
  ``x*`` differ (localisation; higher is better);
* ``aopc_morf``, ``aopc_lerf`` and ``aopc_gap``: the contrast AOPC deleting *towards* ``x*`` in
  ``step`` % steps up to ``max_percent`` % (:func:`~concilium.metrics.contrast.contrast_aopc`);
  ``aopc_gap = morf - lerf``, higher is better;
* ``mprt``: cascading model-parameter randomisation (top-down, Spearman of ``|map|``, mean over
  layers; lower = the maps change more). A baseline that depends on the model (GANMEX's
  ``G(x, t)``) must be made again for every randomised model, or the similarity is high by
  construction (``IG ~ (x - b) * grad`` keeps ``x - b``); pass ``regenerate[name]`` for it, or
  its ``mprt`` is NaN and :data:`UNTESTABLE` says why.

Rows are plain dicts (``method, baseline, metric, image, value``), one per image and metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from concilium.ganmex.provider import image_key
from concilium.metrics.contrast import contrast_aopc, contrast_explain
from concilium.metrics.localisation import auc, relevance_mass
from concilium.metrics.randomisation import mprt_curve
from concilium.metrics.tables import mean_ci

__all__ = [
    "CLAIMS",
    "HIGHER_IS_BETTER",
    "ONE_VS_ONE_METRICS",
    "UNTESTABLE",
    "claim_verdicts",
    "one_vs_one_scores",
    "summarise_one_vs_one",
]

ONE_VS_ONE_METRICS = ("relevance_mass", "auc", "aopc_morf", "aopc_lerf", "aopc_gap", "mprt")
"""The scores of :func:`one_vs_one_scores`, in table order."""
HIGHER_IS_BETTER = {"relevance_mass": True, "auc": True, "aopc_morf": True, "aopc_lerf": False,
                    "aopc_gap": True, "mprt": False}
"""Which direction is better for each score (``mprt``: lower = more sensitive)."""
UNTESTABLE = (
    "not tested: this baseline is made for the trained model, and a baseline kept fixed while the "
    "model is randomised keeps x - b in the maps, so the similarity is high by construction; "
    "regenerating it needs a generator trained against every randomised model"
)
"""Why ``mprt`` is NaN for a model-dependent baseline given without ``regenerate``."""

BaselineFactory = Callable[[nn.Module], Any]


def one_vs_one_scores(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    contrast: Tensor,
    references: Tensor,
    *,
    baselines: Mapping[str, Any],
    methods: Sequence[str] = ("integrated_gradients",),
    method_params: Mapping[str, dict[str, Any]] | None = None,
    model_dependent: Sequence[str] = (),
    regenerate: Mapping[str, BaselineFactory] | None = None,
    step: float = 0.5,
    max_percent: float = 20.0,
    randomisation: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per-image one-vs-one scores of every (method, baseline) pair.

    Args:
        model: the classifier (eval mode).
        images: ``(N, C, H, W)`` images of classes ``labels``.
        labels: ``(N,)`` their classes ``c``.
        contrast: ``(N,)`` the contrast classes ``t``.
        references: ``(N, C, H, W)`` the counterfactuals ``x*`` (ground truth: the changed
            pixels are where they differ from ``images``; the AOPC deletes towards them).
        baselines: name -> baseline (anything ``concilium.explain.explain`` accepts; a provider
            is called with the contrast classes).
        methods: attribution methods.
        method_params: per method, its parameters (e.g. ``{"integrated_gradients":
            {"n_steps": 32}}``).
        model_dependent: names of the baselines made for ``model`` (GANMEX).
        regenerate: name -> ``factory(randomised_model) -> baseline``, for the model-dependent
            baselines that can be made again for a randomised model.
        step: AOPC step in percent of the pixels.
        max_percent: AOPC deletes up to this percent of the pixels.
        randomisation: compute ``mprt`` (the costliest score).
        seed: tie-breaks of the AOPC order and the randomised weights.

    Returns:
        Rows ``{"method", "baseline", "metric", "image", "value"}``.
    """
    if references.shape != images.shape:
        raise ValueError(f"references must be {tuple(images.shape)} like the images; got "
                         f"{tuple(references.shape)}")
    unknown = sorted(set(model_dependent) - set(baselines))
    if unknown:
        raise ValueError(f"model_dependent names {unknown}, which are not baselines "
                         f"({sorted(baselines)})")
    regenerate = dict(regenerate or {})
    changed = (references != images).any(dim=1)
    by_key = {image_key(x): int(t) for x, t in zip(images, contrast.tolist(), strict=True)}
    rows: list[dict[str, Any]] = []
    for method in methods:
        params = dict((method_params or {}).get(method, {}))
        for name, baseline in baselines.items():
            maps = contrast_explain(model, images, labels, contrast, method=method,
                                    baseline=baseline, method_params=params)
            scores: dict[str, Tensor] = {
                "relevance_mass": relevance_mass(maps.abs(), masks=changed),
                "auc": auc(maps.abs(), masks=changed),
            }
            aopc = contrast_aopc(maps, images=images, references=references, labels=labels,
                                 contrast=contrast, model=model, step=step,
                                 max_percent=max_percent, seed=seed)
            scores |= {"aopc_morf": aopc["morf"], "aopc_lerf": aopc["lerf"],
                       "aopc_gap": aopc["gap"]}
            if randomisation:
                scores["mprt"] = _mprt(model, images, labels, maps, by_key, method=method,
                                       params=params, baseline=baseline,
                                       factory=regenerate.get(name),
                                       dependent=name in model_dependent, seed=seed)
            for metric, values in scores.items():
                rows += [{"method": method, "baseline": name, "metric": metric, "image": i,
                          "value": float(v)} for i, v in enumerate(values.tolist())]
    return rows


def _mprt(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    maps: Tensor,
    by_key: dict[str, int],
    *,
    method: str,
    params: dict[str, Any],
    baseline: Any,
    factory: BaselineFactory | None,
    dependent: bool,
    seed: int,
) -> Tensor:
    if dependent and factory is None:
        return torch.full((images.shape[0],), float("nan"))

    def explainer(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        t = torch.tensor([by_key[image_key(row)] for row in x.cpu()])
        b = factory(m) if factory is not None else baseline
        return contrast_explain(m, x, y, t, method=method, baseline=b, method_params=params)

    _, curve = mprt_curve(maps, images=images, labels=labels, model=model, explainer=explainer,
                          order="top_down", similarity="spearman", seed=seed)
    return curve.nanmean(dim=1)


CLAIMS = {
    "relevance_mass": "localises the class-difference region better (relevance mass)",
    "auc": "localises the class-difference region better (ROC-AUC)",
    "aopc_gap": "more faithful to the contrast (AOPC MoRF - LeRF, deleting towards x*)",
    "aopc_morf": "better deletion AOPC, MoRF order",
    "aopc_lerf": "better deletion AOPC, LeRF order",
    "mprt": "more sensitive to cascading randomisation (lower similarity)",
}
"""The paper's claims (Shih, Tien and Karnin 2021) as they read on each one-vs-one score."""

_KEYS = ("member", "method", "baseline")


def _per_seed(rows: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    missing = {"method", "baseline", "metric", "value", "seed"} - set(rows.columns)
    if missing:
        raise ValueError(f"one-vs-one rows need the columns {sorted(missing)} (add 'seed' to the "
                         "rows of each seed)")
    keys = [k for k in _KEYS if k in rows.columns]
    means = rows.groupby([*keys, "metric", "seed"], sort=False)["value"].mean().reset_index()
    return keys, means


def summarise_one_vs_one(rows: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """One row per (member,) method and baseline: each score's mean over seeds and its Student-t
    interval across the seeds' means (``<metric>``, ``<metric>_low``, ``<metric>_high``).

    Args:
        rows: :func:`one_vs_one_scores` rows with a ``seed`` column (and ``member``, optional).
        level: the interval's confidence level.
    """
    keys, means = _per_seed(rows)
    out: dict[tuple, dict[str, Any]] = {}
    for (*key, metric), group in means.groupby([*keys, "metric"], sort=False):
        mean, low, high, n = mean_ci(group["value"].to_numpy(), level=level)
        row = out.setdefault(tuple(key), dict(zip(keys, key, strict=True)))
        row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high, "n_seeds": n})
    table = pd.DataFrame(list(out.values()))
    if "image" in rows and len(table):
        counted = rows.groupby(keys, sort=False).apply(
            lambda g: len(g[["seed", "image"]].drop_duplicates()), include_groups=False)
        table = table.merge(counted.rename("n_images").reset_index(), on=keys, how="left")
    return table


def claim_verdicts(
    rows: pd.DataFrame,
    *,
    candidate: str = "ganmex",
    exclude: Sequence[str] = ("x*",),
    level: float = 0.95,
) -> pd.DataFrame:
    """Does ``candidate`` beat the best other baseline on each score? Per (member,) method and
    score: the other baseline with the best mean (``exclude`` left out: the oracle ceiling), the
    per-seed difference ``candidate - best`` and its interval across seeds, and a verdict:
    ``"holds"`` (the interval lies on the better side of 0), ``"reversed"`` (on the worse side),
    ``"not shown"`` (it includes 0 or has fewer than two seeds) or ``"untestable"`` (no finite
    value for the candidate, see :data:`UNTESTABLE`).
    """
    keys, means = _per_seed(rows)
    group_keys = [k for k in keys if k != "baseline"]
    out = []
    for key, group in means.groupby([*group_keys, "metric"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        *head, metric = key
        hib = HIGHER_IS_BETTER.get(str(metric), True)
        wide = group.pivot(index="seed", columns="baseline", values="value")
        if candidate not in wide:
            continue
        others = [b for b in wide.columns if b != candidate and b not in exclude]
        base = dict(zip(group_keys, head, strict=True)) | {
            "metric": metric, "claim": CLAIMS.get(str(metric), str(metric)),
            "candidate": float(wide[candidate].mean())}
        if not others or not np.isfinite(wide[candidate]).any():
            out.append(base | {"best_other": None, "best_other_value": np.nan, "diff": np.nan,
                               "diff_low": np.nan, "diff_high": np.nan,
                               "verdict": "untestable" if others else "no other baseline"})
            continue
        overall = wide[others].mean()
        best = str(overall.idxmax() if hib else overall.idxmin())
        diff = (wide[candidate] - wide[best]).to_numpy()
        mean, low, high, n = mean_ci(diff, level=level)
        better, worse = (low > 0, high < 0) if hib else (high < 0, low > 0)
        if n < 2 or not np.isfinite(low):
            verdict = "not shown"
        else:
            verdict = "holds" if better else "reversed" if worse else "not shown"
        out.append(base | {"best_other": best, "best_other_value": float(overall[best]),
                           "diff": mean, "diff_low": low, "diff_high": high, "verdict": verdict})
    return pd.DataFrame(out)
