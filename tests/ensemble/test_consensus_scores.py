"""Consensus scores measure agreement, not density (review ensembling D12): leave-one-out
consensus and a centred, density-blind similarity (Spearman) by default."""

import pytest
import torch

from concilium.ensemble.consensus import consensus, consensus_scores
from concilium.ensemble.similarity import similarity

POWERS = torch.tensor([1.0, 2, 4, 8, 16, 32])


def _independent_maps_of_increasing_density() -> torch.Tensor:
    """The review's D12 repro: 6 independent uniform maps raised to increasing powers (the
    higher the power, the fewer strong pixels: a sparser map)."""
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.rand(200, 32, 32, generator=g) ** p for p in POWERS])


def test_default_score_does_not_order_independent_maps_by_density():
    """Independent members agree with nobody: every default score is ~0, whatever the density.
    (The former default, cosine on |maps| against the whole committee's vote, scored them
    0.89 ... 0.31 in the order of their density.)"""
    scores = consensus_scores(_independent_maps_of_increasing_density()).mean(1)
    assert scores.abs().max() < 0.01, scores
    assert float(scores.max() - scores.min()) < 0.01, scores


@pytest.mark.parametrize("kind", ["cosine", "pearson", "spearman"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_only_a_centred_leave_one_out_score_is_blind_to_density(kind, leave_one_out):
    """Each half of the fix alone still ranks the independent maps by density: without
    leave-one-out a member agrees with its own share of the vote (dense maps carry more of
    it); cosine on |maps| rewards dense maps even against the others' vote."""
    scores = consensus_scores(_independent_maps_of_increasing_density(), similarity_kind=kind,
                              leave_one_out=leave_one_out).mean(1)
    density_effect = float(scores[0] - scores[-1])  # densest minus sparsest member
    if kind == "cosine" or not leave_one_out:
        assert density_effect > 0.1, scores
    else:
        assert abs(density_effect) < 0.01, scores


@pytest.mark.parametrize("vote", ["mean", "rank"])
def test_a_members_own_density_does_not_change_its_score(vote):
    """Raising member 0's map to a power (denser or sparser, same pixel order) leaves its
    default score unchanged (to float precision): its own map is not in its reference (leave-one-out) and
    Spearman sees only the order of its pixels."""
    g = torch.Generator().manual_seed(1)
    signal = torch.rand(20, 16, 16, generator=g)
    members = torch.stack([signal + 0.5 * torch.rand(20, 16, 16, generator=g)
                           for _ in range(5)])
    scores = [consensus_scores(torch.cat([members[:1] ** p, members[1:]]), vote=vote)[0]
              for p in (0.25, 1.0, 4.0)]
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0], atol=1e-4, rtol=0)  # float32 ties
    assert float(scores[0].mean()) > 0.3  # it does agree with the others


@pytest.mark.parametrize("kind", ["cosine", "pearson", "spearman"])
@pytest.mark.parametrize(("vote", "normalisation"), [("mean", "max_abs"), ("mean", "z_score"),
                                                      ("rank", "max_abs")])
def test_leave_one_out_score_is_the_similarity_to_the_vote_of_the_others(kind, vote,
                                                                          normalisation):
    """Slow re-implementation: member m's score is its processed map's similarity to
    :func:`consensus` of the other members."""
    g = torch.Generator().manual_seed(2)
    stack = torch.randn(4, 6, 8, 8, generator=g)
    scores = consensus_scores(stack, similarity_kind=kind, vote=vote,
                              normalisation=normalisation)
    for m in range(4):
        others = torch.cat([stack[:m], stack[m + 1:]])
        own = consensus(stack[m : m + 1], vote=vote, normalisation=normalisation)
        ref = consensus(others, vote=vote, normalisation=normalisation)
        torch.testing.assert_close(scores[m], similarity(own, ref, kind), atol=1e-5, rtol=0)


def test_the_whole_committee_vote_is_accepted_and_a_foreign_map_refused():
    stack = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cons = consensus(stack)
    torch.testing.assert_close(consensus_scores(stack, cons), consensus_scores(stack))
    with pytest.raises(ValueError, match="not the vote of these members"):
        consensus_scores(stack, cons + 0.1)
    with pytest.raises(ValueError, match="not the vote of these members"):
        consensus_scores(stack, consensus(stack, normalisation="z_score"))
    # without leave-one-out any map of the right shape is a reference
    assert consensus_scores(stack, cons + 0.1, leave_one_out=False).shape == (3, 4)
    with pytest.raises(ValueError, match="at least 2 members"):
        consensus_scores(stack[:1])
    torch.testing.assert_close(consensus_scores(stack[:1], leave_one_out=False),
                               torch.ones(1, 4))
