"""``consensus``: the committee vote of each method, plus consensus-score tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from concilium.data.dataset import ImageDataset
from concilium.ensemble.consensus import (
    Vote,
    consensus,
    consensus_correlations,
    consensus_scores,
    consensus_table,
    correct_by_all,
)
from concilium.ensemble.similarity import SimilarityName
from concilium.jobs.ensemble.base import (
    Absolute,
    EnsembleOptionsBase,
    EnsembleResult,
    Members,
    Normalisation,
    complete_methods,
    ensembler,
    member_sources,
    write_entry,
)
from concilium.metrics import evaluate
from concilium.store import Run, member_stack


class ConsensusOptions(EnsembleOptionsBase):
    """Options of ``consensus``."""

    members: Members = None
    normalisation: Normalisation = "max_abs"
    absolute: Absolute = True
    vote: Vote = Field("mean", description="how the members vote: mean maps or mean ranks")
    similarity: SimilarityName = Field(
        "spearman", description="similarity of each member's map to the consensus (spearman: "
                                "centred and blind to a map's density; cosine rewards dense "
                                "maps)")
    leave_one_out: bool = Field(
        True, description="score each member against the vote of the other members")
    correct_only: bool = Field(
        True, description="score only the images every member classifies correctly")
    localisation_metric: str = Field(
        "auc", description="metric of the members' and the consensus' localisation")


def member_accuracy(
    run: Run, members: list[str], device: str, *, data: ImageDataset | None = None,
) -> tuple[dict[str, float], str]:
    """Each member's held-out accuracy and where it was measured.

    The ``test`` rows of ``data`` (default: the run's rows) when it holds any (else its ``val``
    rows), never its training rows: a run that explained ``all`` holds mostly training images,
    on which every member is close to perfect (review D13). The consensus job passes the run's
    whole dataset, so the accuracy covers the whole test split, not only the few test rows
    among the explained ones. Without held-out rows, or without the models, the members' card
    accuracy (measured on the validation split at training) is used.

    Returns:
        ``({member: accuracy}, measured_on)`` with ``measured_on`` one of ``"test"``, ``"val"``
        or ``"card"``.
    """
    data = run.data if data is None else data
    split = next((s for s in ("test", "val") if s in data.splits), None)
    if split is None or not all(m in run.models for m in members):
        return {m: run.accuracies.get(m, float("nan")) for m in members}, "card"
    data = data.subset(split)
    out = {}
    with torch.no_grad():
        for m in members:
            model = run.models[m].to(device).eval()
            pred = torch.cat([model(data.images[s : s + 256].to(device)).argmax(1).cpu()
                              for s in range(0, len(data), 256)])
            out[m] = float((pred == data.labels).double().mean())
    return out, split


@ensembler("consensus", options=ConsensusOptions, needs_models=True)
def run_consensus(run: Run, options: ConsensusOptions) -> EnsembleResult:
    """Committee vote per method; consensus scores and their correlations as tables.

    The consensus table records how each score was computed (``similarity``,
    ``leave_one_out``, ``normalisation``, ``vote``) and where accuracy was measured
    (``accuracy_on``).

    The consensus source covers every row (so it is evaluated like the members); with
    ``correct_only`` the scores and correlations use only the images every member gets right.
    """
    o = options
    members = member_sources(run, o.members)
    keep = torch.ones(len(run.data), dtype=torch.bool)
    if o.correct_only:
        if not all(m in run.models for m in members):
            raise ValueError("correct_only needs the members' models; load them or pass "
                             "correct_only=False (--no-correct-only)")
        keep = correct_by_all([run.models[m].to(o.device) for m in members],
                              run.data.images.to(o.device), run.data.labels)
        if not keep.any():
            raise ValueError("no image is classified correctly by every member; use "
                             "correct_only=False (--no-correct-only)")
    everything = run.info.dataset.load()  # the whole test split, not the explained rows'
    accuracy, accuracy_on = member_accuracy(run, members, o.device, data=everything)
    accuracy_images = (sum(s == accuracy_on for s in everything.splits)
                       if accuracy_on != "card" else 0)
    labels, masks = run.data.labels[keep], run.data.masks[keep]
    out, tables, corrs = EnsembleResult(), [], []
    for method in complete_methods(run, members, o.methods):
        stack, hashes = member_stack(run.store, members, method, run.data.ids)
        cons = consensus(stack, normalisation=o.normalisation, vote=o.vote, absolute=o.absolute)
        params = {"inputs": hashes, "normalisation": o.normalisation, "vote": o.vote,
                  "absolute": o.absolute}
        out.entries.append(write_entry(run, "consensus", method, cons, source=o.source,
                                       params=params))
        scores = consensus_scores(stack[:, keep], cons[keep], similarity_kind=o.similarity,
                                  normalisation=o.normalisation, absolute=o.absolute,
                                  vote=o.vote, leave_one_out=o.leave_one_out)
        # the members' localisation on the maps the vote saw (|map| when absolute), like the
        # consensus' own (review ensembling D14: signed member maps against an |map| consensus)
        voted = stack.abs() if o.absolute else stack
        loc = [float(np.nanmean(evaluate(o.localisation_metric, voted[i, keep], masks=masks,
                                         labels=labels).numpy()))
               for i in range(len(members))]
        table = consensus_table(members, scores, accuracy=[accuracy[m] for m in members],
                                localisation=loc)
        table.insert(1, "method", method)
        table["consensus_localisation"] = float(np.nanmean(evaluate(
            o.localisation_metric, cons[keep], masks=masks, labels=labels).numpy()))
        for key, value in (("similarity", o.similarity), ("leave_one_out", o.leave_one_out),
                           ("normalisation", o.normalisation),
                           ("vote", o.vote), ("localisation_metric", o.localisation_metric),
                           ("n_images", int(keep.sum())), ("accuracy_on", accuracy_on),
                           ("accuracy_images", accuracy_images)):
            table[key] = value
        tables.append(table)
        corr = consensus_correlations(table)
        corr.insert(0, "method", method)
        corrs.append(corr)
    out.tables["consensus"] = pd.concat(tables, ignore_index=True)
    out.tables["consensus_correlations"] = pd.concat(corrs, ignore_index=True)
    return out
