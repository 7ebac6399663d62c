"""Run-level ensemblers (registry :data:`ENSEMBLERS`): read a run's stored maps, ensemble them,
write the result back as a new source, plus any tables under ``RUN/results/``.

Kinds and what they write (``methods`` defaults to every method all the run's members have):

============ ===================================================== ==========================
kind         what                                                  source(s), method
============ ===================================================== ==========================
ens-avg      members' normalised maps reduced per method           ``ens-avg``, each method
ens-logit    explain the averaged-logit ensemble model             ``ens-logit``, each method
consensus    committee vote per method + consensus-score tables    ``consensus``, each method
aggregate    one source's methods normalised and reduced           ``aggregate``, ``a+b+...``
weighted     one source's methods weighted by metric scores        ``weighted``, ``a+b+...``
krr          kernel ridge from one source's methods to the masks   ``krr``, ``a+b+...``
cnn          U-Net ensembler trained on the train split            ``cnn`` (probability) and
                                                                   ``cnn:logit``, ``a+b+...``
============ ===================================================== ==========================

Method ensembles read the maps of ``from_source`` (default: the first member; ``ens-avg`` to
combine the members' averaged maps). ``source`` renames the output (``ens-avg:head``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from concilium._registry import Registry
from concilium._util import derive_seed
from concilium.ensemble.averaging import ens_avg, ens_logit_maps
from concilium.ensemble.cnn import CNNEnsembler, CNNTrainConfig, train_cnn_ensembler
from concilium.ensemble.consensus import (
    Vote,
    consensus,
    consensus_correlations,
    consensus_scores,
    consensus_table,
    correct_by_all,
)
from concilium.ensemble.krr import krr_ensemble
from concilium.ensemble.normalise import NormalisationName
from concilium.ensemble.reduce import ReducerName, aggregate
from concilium.ensemble.similarity import SimilarityName
from concilium.ensemble.weighted import metric_weights, weighted_ensemble
from concilium.explain import explain
from concilium.metrics import evaluate
from concilium.metrics.tables import higher_is_better_of
from concilium.store import (
    Entry,
    Run,
    available_methods,
    member_stack,
    read_maps,
    read_metrics,
    write_source,
    write_table,
)

ENSEMBLERS_DIR = "ensemblers"


class EnsembleOptions(BaseModel):
    """Settings of a run-level ensembler; each kind reads the fields it needs.

    Attributes:
        methods: methods to ensemble (default: all methods every member has).
        members: member sources (default: the run's members).
        source: output source name (default: the kind).
        from_source: input source of method ensembles (default: the first member).
        normalisation, reducer, absolute, trim: see :func:`aggregate`; ``absolute=None`` means
            the kind's default (True for consensus, False otherwise).
        vote, similarity, correct_only, localisation_metric: consensus settings.
        weight_metrics, metric_weights, clip_negative: weighted settings.
        folds, alpha, kernel, gamma, pixels_per_image, positional: krr settings.
        cnn: the CNN ensembler's training settings; ``ensembler``: a saved ensembler to apply
            instead of training.
        seed: seeds stochastic steps; device: where models run.
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] | None = None
    members: list[str] | None = None
    source: str | None = None
    from_source: str | None = None
    normalisation: NormalisationName = "max_abs"
    reducer: ReducerName = "mean"
    absolute: bool | None = None
    trim: float = Field(0.2, ge=0, lt=0.5)
    vote: Vote = "mean"
    similarity: SimilarityName = "cosine"
    correct_only: bool = True
    localisation_metric: str = "auc"
    weight_metrics: list[str] = Field(default_factory=lambda: ["relevance_mass"])
    metric_weights: dict[str, float] | None = None
    clip_negative: bool = True
    folds: int = Field(5, ge=2)
    alpha: float = Field(1.0, gt=0)
    kernel: Literal["rbf", "linear", "laplacian", "polynomial"] = "rbf"
    gamma: float | None = None
    pixels_per_image: int = Field(32, ge=1)
    positional: bool = False
    cnn: CNNTrainConfig = Field(default_factory=CNNTrainConfig)
    ensembler: str | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class EnsembleResult:
    """What a run-level ensembler wrote: store entries and result tables (name -> table)."""

    entries: list[Entry] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


RunEnsembler = Callable[[Run, EnsembleOptions], EnsembleResult]
ENSEMBLERS: Registry[RunEnsembler] = Registry("ensembler")
NEEDS_MODELS = {"ens-logit", "consensus"}


def _members(ctx: Run, opts: EnsembleOptions) -> list[str]:
    members = opts.members or ctx.member_ids
    unknown = [m for m in members if m not in ctx.member_ids]
    if unknown:
        raise ValueError(f"members {unknown} are not in this run; valid: {ctx.member_ids}")
    return members


def _methods(ctx: Run, sources: list[str], opts: EnsembleOptions) -> list[str]:
    have = available_methods(ctx.store, sources)
    if opts.methods is None:
        if not have:
            raise ValueError(f"no method has complete entries for all of {sources}; run "
                             "`concilium explain` first")
        return have
    missing = [m for m in opts.methods if m not in have]
    if missing:
        raise ValueError(f"methods {missing} have no complete entry for every one of {sources}; "
                         f"available: {have}")
    return list(opts.methods)


def _meta(ctx: Run, kind: str) -> dict[str, Any]:
    return {"dataset_fingerprint": ctx.fingerprint, "ensemble_kind": kind}


def _abs(opts: EnsembleOptions, default: bool) -> bool:
    return default if opts.absolute is None else opts.absolute


@ENSEMBLERS.register("ens-avg")
def run_ens_avg(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Ens-Avg per method over the members."""
    members = _members(ctx, opts)
    out = EnsembleResult()
    for method in _methods(ctx, members, opts):
        stack, hashes = member_stack(ctx.store, members, method, ctx.data.ids)
        absolute = _abs(opts, False)
        maps = ens_avg(stack, normalisation=opts.normalisation, reducer=opts.reducer,
                       absolute=absolute)
        params = {"kind": "ens-avg", "inputs": hashes, "normalisation": opts.normalisation,
                  "reducer": opts.reducer, "absolute": absolute, "trim": opts.trim}
        out.entries.append(write_source(ctx.store, opts.source or "ens-avg", method, maps,
                                        sample_ids=ctx.data.ids, params=params,
                                        meta=_meta(ctx, "ens-avg")))
    return out



@ENSEMBLERS.register("ens-logit")
def run_ens_logit(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Explain the averaged-logit model with each method's stored parameters."""

    members = _members(ctx, opts)
    models = [ctx.models[m].to(opts.device).eval() for m in members]
    out = EnsembleResult()
    for method in _methods(ctx, members, opts):
        ref = ctx.store.get(members[0], method)
        p = ref.params
        maps = []
        for start in range(0, len(ctx.data), 64):
            images = ctx.data.images[start : start + 64].to(opts.device)
            labels = ctx.data.labels[start : start + 64].to(opts.device)
            gen = torch.Generator(device=images.device)
            gen.manual_seed(derive_seed(int(p.get("seed", ctx.seed)), "ens-logit", method, start))
            params = {"labels": labels, "reduction": p.get("reduction", "sum"),
                      "baseline": p.get("baseline", "zero"), "generator": gen,
                      **dict(p.get("method_params", {}))}
            maps.append(ens_logit_maps(models, images, p.get("target", ctx.target), method=method,
                                       params=params, explainer=explain).detach().cpu())
        params = {"kind": "ens-logit", "members": members,
                  "member_params_hash": ref.params_hash, "explain": p}
        out.entries.append(write_source(ctx.store, opts.source or "ens-logit", method,
                                        torch.cat(maps), sample_ids=ctx.data.ids, params=params,
                                        meta=_meta(ctx, "ens-logit")))
    return out


def member_accuracy(ctx: Run, members: list[str], device: str) -> dict[str, float]:
    """Each member's accuracy on the run's samples (models loaded), else its card's."""
    if not all(m in ctx.models for m in members):
        return {m: ctx.accuracies.get(m, float("nan")) for m in members}
    out = {}
    with torch.no_grad():
        for m in members:
            model = ctx.models[m].to(device).eval()
            pred = torch.cat([model(ctx.data.images[s : s + 256].to(device)).argmax(1).cpu()
                              for s in range(0, len(ctx.data), 256)])
            out[m] = float((pred == ctx.data.labels).double().mean())
    return out


@ENSEMBLERS.register("consensus")
def run_consensus(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Committee vote per method; consensus scores and their correlations as tables.

    The consensus source covers every row (so it is evaluated like the members); with
    ``correct_only`` the scores and correlations use only the images every member gets right.
    """

    members = _members(ctx, opts)
    absolute = _abs(opts, True)
    keep = torch.ones(len(ctx.data), dtype=torch.bool)
    if opts.correct_only:
        if not all(m in ctx.models for m in members):
            raise ValueError("correct_only needs the members' models; load them or pass "
                             "correct_only=False (--all-images)")
        keep = correct_by_all([ctx.models[m].to(opts.device) for m in members],
                              ctx.data.images.to(opts.device), ctx.data.labels)
        if not keep.any():
            raise ValueError("no image is classified correctly by every member; use "
                             "correct_only=False (--all-images)")
    accuracy = member_accuracy(ctx, members, opts.device)
    out, tables, corrs = EnsembleResult(), [], []
    for method in _methods(ctx, members, opts):
        stack, hashes = member_stack(ctx.store, members, method, ctx.data.ids)
        cons = consensus(stack, normalisation=opts.normalisation, vote=opts.vote, absolute=absolute)
        params = {"kind": "consensus", "inputs": hashes, "normalisation": opts.normalisation,
                  "vote": opts.vote, "absolute": absolute}
        out.entries.append(write_source(ctx.store, opts.source or "consensus", method, cons,
                                        sample_ids=ctx.data.ids, params=params,
                                        meta=_meta(ctx, "consensus")))
        scores = consensus_scores(stack[:, keep], cons[keep], similarity_kind=opts.similarity,
                                  normalisation=opts.normalisation, absolute=absolute)
        masks = ctx.data.masks[keep]
        loc = [float(np.nanmean(evaluate(opts.localisation_metric, stack[i, keep], masks=masks,
                                         labels=ctx.data.labels[keep]).numpy()))
               for i in range(len(members))]
        table = consensus_table(members, scores, accuracy=[accuracy[m] for m in members],
                                localisation=loc)
        table.insert(1, "method", method)
        table["consensus_localisation"] = float(np.nanmean(evaluate(
            opts.localisation_metric, cons[keep], masks=masks, labels=ctx.data.labels[keep]).numpy()))
        for key, value in (("similarity", opts.similarity), ("normalisation", opts.normalisation),
                           ("vote", opts.vote), ("localisation_metric", opts.localisation_metric),
                           ("n_images", int(keep.sum()))):
            table[key] = value
        tables.append(table)
        corr = consensus_correlations(table)
        corr.insert(0, "method", method)
        corrs.append(corr)
    out.tables["consensus"] = pd.concat(tables, ignore_index=True)
    out.tables["consensus_correlations"] = pd.concat(corrs, ignore_index=True)
    return out


def _from(ctx: Run, opts: EnsembleOptions) -> tuple[str, list[str], dict[str, torch.Tensor],
                                                          dict[str, str]]:
    src = opts.from_source or ctx.member_ids[0]
    methods = _methods(ctx, [src], opts)
    maps, hashes = {}, {}
    for m in methods:
        maps[m], entry = read_maps(ctx.store, src, m, ctx.data.ids)
        hashes[m] = entry.params_hash
    return src, methods, maps, hashes


@ENSEMBLERS.register("aggregate")
def run_aggregate(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Normalise then reduce one source's methods (``normEnsembleXAI``)."""
    src, methods, maps, hashes = _from(ctx, opts)
    absolute = _abs(opts, False)
    out = aggregate(maps, normalisation=opts.normalisation, reducer=opts.reducer,
                    absolute=absolute, trim=opts.trim)
    params = {"kind": "aggregate", "from": src, "inputs": hashes,
              "normalisation": opts.normalisation, "reducer": opts.reducer, "absolute": absolute,
              "trim": opts.trim}
    return EnsembleResult([write_source(ctx.store, opts.source or "aggregate", "+".join(methods),
                                        out, sample_ids=ctx.data.ids, params=params,
                                        meta=_meta(ctx, "aggregate"))])


@ENSEMBLERS.register("weighted")
def run_weighted(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Weight one source's methods by their mean metric scores (from the metrics table)."""

    src, methods, maps, hashes = _from(ctx, opts)
    metrics = read_metrics(ctx.run_dir)
    rows = metrics[(metrics.source == src) & metrics.metric.isin(opts.weight_metrics)]
    scores: dict[str, dict[str, float]] = {}
    for metric in opts.weight_metrics:
        part = rows[rows.metric == metric].groupby("method")["value"].mean()
        if part.empty:
            raise ValueError(f"the metrics table has no {metric!r} scores of source {src!r}; run "
                             f"`concilium evaluate {ctx.run_dir} --metrics {metric}` first")
        scores[metric] = part.to_dict()
    hib = {m: higher_is_better_of(m) for m in opts.weight_metrics}
    w = metric_weights(scores, methods=methods, higher_is_better=hib,
                       metric_weights=opts.metric_weights, clip_negative=opts.clip_negative)
    absolute = _abs(opts, False)
    out = weighted_ensemble(maps, w, normalisation=opts.normalisation, absolute=absolute)
    params = {"kind": "weighted", "from": src, "inputs": hashes, "metrics": opts.weight_metrics,
              "metric_weights": opts.metric_weights, "weights": [round(float(x), 8) for x in w],
              "normalisation": opts.normalisation, "absolute": absolute}
    table = pd.DataFrame({"method": methods, "weight": w.tolist(), "source": src})
    entry = write_source(ctx.store, opts.source or "weighted", "+".join(methods), out,
                         sample_ids=ctx.data.ids, params=params, meta=_meta(ctx, "weighted"))
    return EnsembleResult([entry], {"weights": table})


@ENSEMBLERS.register("krr")
def run_krr(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Out-of-fold kernel ridge regression from one source's methods to the masks."""
    src, methods, maps, hashes = _from(ctx, opts)
    absolute = _abs(opts, False)
    out = krr_ensemble(maps, ctx.data.masks, normalisation=opts.normalisation, absolute=absolute,
                       folds=opts.folds, alpha=opts.alpha, kernel=opts.kernel, gamma=opts.gamma,
                       pixels_per_image=opts.pixels_per_image, positional=opts.positional,
                       seed=opts.seed)
    params = {"kind": "krr", "from": src, "inputs": hashes, "normalisation": opts.normalisation,
              "absolute": absolute, "folds": opts.folds, "alpha": opts.alpha,
              "kernel": opts.kernel, "gamma": opts.gamma, "pixels_per_image": opts.pixels_per_image,
              "positional": opts.positional, "seed": opts.seed}
    return EnsembleResult([write_source(ctx.store, opts.source or "krr", "+".join(methods), out,
                                        sample_ids=ctx.data.ids, params=params,
                                        meta=_meta(ctx, "krr"))])


def _rows(ctx: Run, split: str) -> torch.Tensor:
    return torch.tensor([i for i, s in enumerate(ctx.data.splits) if s == split], dtype=torch.long)


@ENSEMBLERS.register("cnn")
def run_cnn(ctx: Run, opts: EnsembleOptions) -> EnsembleResult:
    """Train the U-Net ensembler on the run's train rows (early stopping on its val rows), or
    apply a saved one, and write E* for every row."""
    src, methods, maps, hashes = _from(ctx, opts)
    name = opts.source or "cnn"
    result = EnsembleResult()
    images = ctx.data.images
    if opts.ensembler is not None:
        ens = CNNEnsembler.load(opts.ensembler, device=opts.device)
        where = str(Path(opts.ensembler).resolve())
    else:
        tr, va = _rows(ctx, "train"), _rows(ctx, "val")
        if len(tr) == 0 or len(va) == 0:
            raise ValueError("the CNN ensembler trains on the run's train rows and stops on its "
                             "val rows, and this run has none; explain with --split all, or pass "
                             "a trained ensembler (--ensembler DIR)")
        ens, history = train_cnn_ensembler(
            {m: x[tr] for m, x in maps.items()}, ctx.data.masks[tr],
            val_maps={m: x[va] for m, x in maps.items()}, val_masks=ctx.data.masks[va],
            train_images=images[tr], val_images=images[va], config=opts.cnn, device=opts.device)
        where = str(ens.save(ctx.run_dir / ENSEMBLERS_DIR / name.replace(":", "_")))
        result.tables[f"{name.replace(':', '_')}_history"] = history
    logits, probs = ens.predict(maps, images=images if ens.card.with_image else None)
    params = {"kind": "cnn", "from": src, "inputs": hashes, "card": ens.card.model_dump(mode="json")}
    meta = {**_meta(ctx, "cnn"), "ensembler_dir": where}
    method = "+".join(ens.card.methods)
    result.entries.append(write_source(ctx.store, name, method, probs, sample_ids=ctx.data.ids,
                                       params={**params, "output": "probability"}, meta=meta))
    result.entries.append(write_source(ctx.store, f"{name}:logit", method, logits,
                                       sample_ids=ctx.data.ids,
                                       params={**params, "output": "logit"}, meta=meta))
    return result


def run_ensemble(run_dir: str | Path, kind: str, options: EnsembleOptions | None = None
                 ) -> EnsembleResult:
    """Run one ensembler on a run: write its sources into the store and its tables under
    ``RUN/results/``.

    Args:
        run_dir: a run made by ``concilium explain``.
        kind: a name from :data:`ENSEMBLERS`.
        options: settings (default :class:`EnsembleOptions()`).

    Raises:
        ValueError: unknown kind (lists the valid ones) or any input problem of the kind.
    """
    fn = ENSEMBLERS.get(kind)
    opts = options or EnsembleOptions()
    ctx = Run.open(run_dir, load_models=kind in NEEDS_MODELS, device=opts.device)
    result = fn(ctx, opts)
    for name, table in result.tables.items():
        write_table(run_dir, name, table)
    return result
