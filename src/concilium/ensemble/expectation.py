"""What averaging gives by algebra alone, and how a score grows with the size of the ensemble.

**The identity (review ensembling D10).** For Ens-Avg ``e = mean_i a_i`` of ``K`` normalised member
maps ``a_i`` with centred norms (population standard deviations over pixels) ``sigma_i``, mask
correlations ``c_i = corr(a_i, s)`` and pairwise map correlations ``rho_ij``::

    corr(e, s) = sum_i sigma_i c_i / sqrt(sum_ij sigma_i sigma_j rho_ij)
               = Exp-Avg_sigma * mean(sigma) / sigma_e ,

where ``Exp-Avg_sigma = sum_i sigma_i c_i / sum_i sigma_i`` is the sigma-weighted mean of the
members' correlations and ``sigma_e <= mean(sigma)`` is the centred norm of ``e``. So Ens-Avg's
mask correlation is at least the sigma-weighted Exp-Avg on every image, whatever the maps: a gain
on that metric is fixed by algebra. For members of equal centred norm the factor is
``1 / sqrt(1/K + (1 - 1/K) rho_bar)`` with ``rho_bar`` the mean pairwise correlation, the gain
predicted from the members' diversity alone. Only a gain beyond that prediction says something
about the members.

Tensor-level: functions take stacked maps ``(K, N, H, W)`` and masks ``(N, H, W)``, never a run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from concilium.ensemble.averaging import ens_avg
from concilium.ensemble.normalise import normalise
from concilium.ensemble.reduce import stack_maps


def _centred(maps: Tensor) -> Tensor:
    flat = maps.flatten(-2).double()
    return flat - flat.mean(-1, keepdim=True)


def centred_norms(maps: Tensor) -> Tensor:
    """Population standard deviation over pixels of each map: ``(..., H, W) -> (...)``."""
    return _centred(maps).pow(2).mean(-1).sqrt()


def _corr(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation over the last axis of centred ``x`` and ``y``; NaN where either is
    constant."""
    num = (x * y).mean(-1)
    den = x.pow(2).mean(-1).sqrt() * y.pow(2).mean(-1).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def predicted_ratio(rho_bar: Tensor | float, k: int) -> Tensor:
    """Ens-Avg over sigma-weighted Exp-Avg predicted for ``k`` members of equal centred norm and
    mean pairwise correlation ``rho_bar``: ``1 / sqrt(1/k + (1 - 1/k) rho_bar)``.

    Example:
        >>> round(float(predicted_ratio(0.0, 2)), 4), float(predicted_ratio(1.0, 5))
        (1.4142, 1.0)
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 member; got {k}")
    rho = torch.as_tensor(rho_bar, dtype=torch.float64)
    return 1.0 / torch.sqrt(1.0 / k + (1.0 - 1.0 / k) * rho)


def averaging_expectation(
    member_maps: Tensor | Sequence[Tensor], masks: Tensor, *, normalisation: str = "max_abs"
) -> pd.DataFrame:
    """Per image, the observed Ens-Avg and Exp-Avg mask correlations beside what algebra predicts.

    Args:
        member_maps: ``K`` members' maps of one method, ``(K, N, H, W)``.
        masks: ``(N, H, W)`` bool ground-truth masks.
        normalisation: the per-map normalisation Ens-Avg uses (the weights are the centred norms
            of the maps normalised this way, the weights for which the identity holds).

    Returns:
        One row per image: ``sample`` (position), ``members`` (K), ``ens_avg`` (observed),
        ``exp_avg`` (plain mean of the members' correlations), ``exp_avg_sigma`` (sigma-weighted
        mean), ``rho_bar`` (mean pairwise correlation of the normalised maps), ``identity``
        (``sum sigma_i c_i / sqrt(sum sigma_i sigma_j rho_ij)``, equal to ``ens_avg``),
        ``expected`` (``exp_avg_sigma * predicted_ratio(rho_bar, K)``) and ``beyond``
        (``ens_avg - expected``: the part of the gain algebra does not give). NaN where a map or
        the mask is constant.

    Raises:
        ValueError: if ``masks`` is not ``(N, H, W)`` like the maps.
    """
    stack = stack_maps(member_maps)
    k, n = stack.shape[:2]
    if masks.shape != stack.shape[1:]:
        raise ValueError(f"masks must be (N, H, W) like the maps {tuple(stack.shape[1:])}; "
                         f"got {tuple(masks.shape)}")
    norm = normalise(stack, normalisation)
    a = _centred(norm)                                   # (K, N, P)
    s = _centred(masks.to(torch.float64))                # (N, P)
    sigma = a.pow(2).mean(-1).sqrt()                     # (K, N)
    c = _corr(a, s.expand_as(a))                         # (K, N)
    rho = _corr(a[:, None], a[None])                     # (K, K, N)
    observed = _corr(_centred(ens_avg(stack, normalisation=normalisation)), s)
    weighted = (sigma * c).sum(0) / sigma.sum(0)
    identity = (sigma * c).sum(0) / torch.einsum("in,jn,ijn->n", sigma, sigma, rho).sqrt()
    if k > 1:
        off = ~torch.eye(k, dtype=torch.bool)
        rho_bar = rho[off].mean(0)
    else:
        rho_bar = torch.ones(n, dtype=torch.float64)
    expected = weighted * predicted_ratio(rho_bar, k)
    return pd.DataFrame({
        "sample": np.arange(n), "members": k,
        "ens_avg": observed.numpy(), "exp_avg": c.mean(0).numpy(),
        "exp_avg_sigma": weighted.numpy(), "rho_bar": rho_bar.numpy(),
        "identity": identity.numpy(), "expected": expected.numpy(),
        "beyond": (observed - expected).numpy(),
    })


def member_subsets(
    m: int, k: int, *, subsets: int, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Up to ``subsets`` distinct ``k``-member subsets of ``m`` members: all of them when there are
    no more than ``subsets``, else drawn from ``rng`` without repeats.

    Example:
        >>> member_subsets(3, 2, subsets=10, rng=np.random.default_rng(0))
        [(0, 1), (0, 2), (1, 2)]
    """
    if not 1 <= k <= m:
        raise ValueError(f"k must be between 1 and the {m} members; got {k}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1; got {subsets}")
    if math.comb(m, k) <= subsets:
        return list(itertools.combinations(range(m), k))
    drawn: set[tuple[int, ...]] = set()
    while len(drawn) < subsets:
        drawn.add(tuple(sorted(rng.choice(m, size=k, replace=False).tolist())))
    return sorted(drawn)


def _numpy(v: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(v, Tensor):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def ensemble_size_curve(
    member_maps: Tensor | Sequence[Tensor],
    score: Callable[[Tensor], Tensor | np.ndarray],
    *,
    rng: np.random.Generator,
    sizes: Sequence[int] | None = None,
    subsets: int = 10,
    normalisation: str = "max_abs",
    level: float = 0.95,
) -> pd.DataFrame:
    """Ens-Avg's score against the number of members ``K``, over random member subsets.

    For every ``K`` in ``sizes`` (default ``1..M``), up to ``subsets`` member subsets
    (:func:`member_subsets`) are averaged with :func:`~concilium.ensemble.averaging.ens_avg`
    and scored per image by ``score``. Images where any subset of any ``K`` scores NaN are
    dropped for all (so every ``K`` is averaged over the same images).

    Args:
        member_maps: ``(M, N, H, W)`` maps of one method.
        score: maps ``(N, H, W)`` to per-image scores ``(N,)``, a tensor or array (e.g. a
            metric with its masks).
        rng: draws the subsets.
        sizes: the ensemble sizes (each in ``1..M``).
        subsets: subsets per size.
        normalisation: Ens-Avg's per-map normalisation.
        level: coverage of the interval over subsets.

    Returns:
        One row per ``K``: ``k``, ``subsets`` (drawn), ``images`` (kept), ``mean`` (mean over
        subsets of the image mean), ``low``/``high`` (quantiles of the subset means at
        ``(1 -+ level) / 2``; equal to ``mean`` when there is one subset).
    """
    stack = stack_maps(member_maps)
    m = stack.shape[0]
    sizes = list(range(1, m + 1)) if sizes is None else list(sizes)
    drawn = {k: member_subsets(m, k, subsets=subsets, rng=rng) for k in sizes}
    scores = {k: np.stack([_numpy(score(ens_avg(stack[list(sub)], normalisation=normalisation)))
                           for sub in subs])
              for k, subs in drawn.items()}
    keep = np.logical_and.reduce([np.isfinite(v).all(0) for v in scores.values()])
    rows = []
    for k, v in scores.items():
        means = v[:, keep].mean(1) if keep.any() else np.full(len(v), math.nan)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        rows.append({"k": k, "subsets": len(v), "images": int(keep.sum()),
                     "mean": float(means.mean()), "low": float(low), "high": float(high)})
    return pd.DataFrame(rows)
