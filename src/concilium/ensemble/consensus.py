"""Committee consensus of explanations (Li, Xiong et al., ECML 2022).

A committee of ``M`` models (any architectures) explains the same images. Optionally only the
images every member classifies correctly are kept (:func:`correct_by_all`). Each map is normalised
per image and the committee votes (:func:`consensus`: mean of the normalised maps, or rank voting).
A member's **consensus score** is the mean over images of the similarity between its map and the
consensus (:func:`consensus_scores`); the paper finds it correlates positively with the member's
accuracy and with its own localisation score (:func:`consensus_correlations`).

Two defaults keep the score a measure of agreement (review ensembling D12):

- **leave-one-out**: each member is compared with the vote of the *other* members, so it does
  not agree with its own contribution to the consensus;
- **Spearman** similarity: centred, and invariant to any increasing transform of a member's map,
  so a dense map (many strong pixels) does not score higher than a sparse map with the same
  pixel order. Cosine on ``|maps|`` (the former default) rewards density: independent maps of
  increasing density score in the order of their density.

The paper's exact normalisation and similarity are not public, so both are options and recorded
in the tables this module produces.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from concilium.ensemble.normalise import NormalisationName, normalise, rank
from concilium.ensemble.reduce import stack_maps
from concilium.ensemble.similarity import SimilarityName, similarity

Vote = Literal["mean", "rank"]


@torch.no_grad()
def correct_by_all(
    models: Sequence[nn.Module], images: Tensor, labels: Tensor, *, batch_size: int = 256
) -> Tensor:
    """Which images every model classifies correctly: bool ``(N,)``.

    Args:
        models: the committee (evaluated in eval mode, on the images' device).
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` class indices.
        batch_size: images per forward pass.
    """
    if len(models) == 0:
        raise ValueError("give at least one model")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},) like the images; got {tuple(labels.shape)}")
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    for model in models:
        was_training = model.training
        model.eval()
        try:
            for s in range(0, images.shape[0], batch_size):
                pred = model(images[s : s + batch_size]).argmax(-1).cpu()
                keep[s : s + batch_size] &= pred == labels[s : s + batch_size].cpu()
        finally:
            model.train(was_training)
    return keep


def consensus(
    member_maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    *,
    normalisation: NormalisationName | str = "max_abs",
    vote: Vote = "mean",
    absolute: bool = True,
) -> Tensor:
    """The committee's consensus map ``(N, H, W)``.

    Args:
        member_maps: ``M`` members' maps of the same images (``(M, N, H, W)``, a sequence or a
            mapping of ``(N, H, W)``).
        normalisation: per-image normalisation of each member's map before voting.
        vote: ``"mean"`` (average of the normalised maps) or ``"rank"`` (average of per-image
            pixel quantiles, i.e. rank voting).
        absolute: use ``|map|`` (the paper reduces SmoothGrad by absolute value; default True).
    """
    return _voters(stack_maps(member_maps), normalisation=normalisation, vote=vote,
                   absolute=absolute).mean(0)


def _voters(stack: Tensor, *, normalisation: str, vote: str, absolute: bool) -> Tensor:
    """The maps the committee averages, ``(M, N, H, W)``: ``|map|`` when ``absolute``,
    normalised per image, and under the rank vote each map's per-image pixel quantiles."""
    if vote not in ("mean", "rank"):
        raise ValueError(f"vote must be 'mean' or 'rank'; got {vote!r}")
    if absolute:
        stack = stack.abs()
    stack = normalise(stack, normalisation)
    return rank(stack) if vote == "rank" else stack


def consensus_scores(
    member_maps: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    consensus_map: Tensor | None = None,
    *,
    similarity_kind: SimilarityName | str = "spearman",
    normalisation: NormalisationName | str = "max_abs",
    absolute: bool = True,
    vote: Vote = "mean",
    leave_one_out: bool = True,
) -> Tensor:
    """Per-member, per-image similarity to the consensus: ``(M, N)``.

    The member maps get the same preprocessing (``absolute``, ``normalisation``, and with
    ``vote="rank"`` the per-image pixel quantiles the rank vote averages) as in
    :func:`consensus`, so a member whose processed map equals the consensus scores exactly 1:
    a rank consensus is compared with the members' ranks, not with their scaled maps.
    The consensus score of member ``m`` is ``scores[m].mean()``.

    Args:
        member_maps: the ``M`` members' maps (as for :func:`consensus`).
        consensus_map: the committee's vote ``(N, H, W)``. ``None``: computed here. With
            ``leave_one_out`` it must be :func:`consensus` of these maps with these settings
            (checked), since each member's own vote is taken out of it.
        similarity_kind: ``"spearman"`` (default: centred and blind to a member's density),
            ``"pearson"`` (centred) or ``"cosine"`` (rewards dense maps on ``|maps|``; D12).
        normalisation: per-image normalisation, as in :func:`consensus`.
        absolute: use ``|map|``, as in :func:`consensus`.
        vote: ``"mean"`` or ``"rank"``, as in :func:`consensus`.
        leave_one_out: compare member ``m`` with the vote of the other ``M - 1`` members
            (default), not with the whole committee's vote that includes its own map.

    Raises:
        ValueError: a consensus map of another shape; a leave-one-out score of a committee of
            one, or against a map that is not this committee's vote.
    """
    voters = _voters(stack_maps(member_maps), normalisation=normalisation, vote=vote,
                     absolute=absolute)
    m = voters.shape[0]
    if consensus_map is not None:
        if consensus_map.shape != voters.shape[1:]:
            raise ValueError(f"consensus_map must be (N, H, W) = {tuple(voters.shape[1:])} like "
                             f"the members' maps; got {tuple(consensus_map.shape)}")
        if leave_one_out and not torch.allclose(consensus_map.to(voters), voters.mean(0),
                                                rtol=1e-4, atol=1e-6):
            raise ValueError("consensus_map is not the vote of these members with these "
                             "settings, so a member's own vote cannot be taken out of it; pass "
                             "consensus_map=None (computed here) or leave_one_out=False")
    if leave_one_out:
        if m < 2:
            raise ValueError("a leave-one-out score needs at least 2 members (a member of a "
                             "committee of one has no others); pass leave_one_out=False")
        # the others' vote computed as consensus() computes it (not the whole vote minus the
        # member's share: its rounding would break the ties of a rank vote one way or another)
        reference = torch.stack([torch.cat([voters[:i], voters[i + 1:]]).mean(0)
                                 for i in range(m)])
    else:
        reference = (voters.mean(0) if consensus_map is None
                     else consensus_map.to(voters)).expand_as(voters)
    return similarity(voters, reference, similarity_kind)


#: Up to this many points the p-values are exact (every pairing of x and y, ``n!``).
EXACT_P_MAX_N = 8


def exact_p(x: np.ndarray, y: np.ndarray, r: float) -> float:
    """Two-sided exact permutation p-value of the Pearson correlation ``r`` of ``x`` and ``y``:
    the share of the ``n!`` pairings of ``x`` with a permutation of ``y`` whose correlation is
    at least ``|r|`` in absolute value. (On ranks it is Spearman's exact p-value.)"""
    n = x.size
    perms = np.array(list(itertools.permutations(range(n))))
    xc, yc = x - x.mean(), y - y.mean()
    rs = (yc[perms] @ xc) / (np.linalg.norm(xc) * np.linalg.norm(yc))
    return float(np.mean(np.abs(rs) >= abs(r) - 1e-12))


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of ``x`` and ``y`` with two-sided p-values.

    Up to :data:`EXACT_P_MAX_N` points the p-values are exact permutation p-values
    (:func:`exact_p`): scipy's t-approximation is far off there (4 points in perfect order: 0.0
    instead of the exact 1/12). Beyond, scipy's. Fewer than 3 points, or a constant variable,
    give NaN (a correlation is undefined there).
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.shape} and {ya.shape}")
    nan = {"pearson_r": math.nan, "pearson_p": math.nan, "spearman_rho": math.nan,
           "spearman_p": math.nan, "n": int(xa.size)}
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return nan
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    pearson_p, spearman_p = float(pr.pvalue), float(sr.pvalue)
    if xa.size <= EXACT_P_MAX_N:
        pearson_p = exact_p(xa, ya, float(pr.statistic))
        spearman_p = exact_p(stats.rankdata(xa), stats.rankdata(ya), float(sr.statistic))
    return {"pearson_r": float(pr.statistic), "pearson_p": pearson_p,
            "spearman_rho": float(sr.statistic), "spearman_p": spearman_p, "n": int(xa.size)}


def consensus_table(
    member_ids: Sequence[str],
    scores: Tensor,
    *,
    accuracy: Sequence[float] | None = None,
    localisation: Sequence[float] | None = None,
) -> pd.DataFrame:
    """One row per member: ``member, consensus_score, accuracy, localisation`` (the scatter-plot
    data). ``scores`` is the ``(M, N)`` output of :func:`consensus_scores`."""
    m = len(member_ids)
    if scores.shape[0] != m:
        raise ValueError(f"scores has {scores.shape[0]} rows but {m} member ids were given")
    table = pd.DataFrame({"member": list(member_ids),
                          "consensus_score": scores.double().mean(1).tolist()})
    for name, values in (("accuracy", accuracy), ("localisation", localisation)):
        if values is not None:
            if len(values) != m:
                raise ValueError(f"{name} must have one value per member ({m}); got {len(values)}")
            table[name] = [float(v) for v in values]
    return table


def consensus_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Correlation of the consensus score with each other column of :func:`consensus_table`
    (``accuracy``, ``localisation``): columns ``against, pearson_r, pearson_p, spearman_rho,
    spearman_p, n``."""
    rows = []
    for col in ("accuracy", "localisation"):
        if col in table.columns:
            rows.append({"against": col, **correlation(table["consensus_score"], table[col])})
    return pd.DataFrame(rows, columns=["against", "pearson_r", "pearson_p", "spearman_rho",
                                       "spearman_p", "n"])
