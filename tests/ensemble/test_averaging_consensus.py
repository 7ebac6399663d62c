"""Ens-Avg, Ens-Logit, Exp-Avg table, consensus and its correlations, similarity."""

import copy

import pandas as pd
import pytest
import scipy.stats
import torch
from torch import nn

from concilium.ensemble.averaging import LogitEnsemble, ens_avg, ens_logit_maps
from concilium.ensemble.consensus import (
    consensus,
    consensus_correlations,
    consensus_scores,
    consensus_table,
    correct_by_all,
    correlation,
)
from concilium.ensemble.normalise import normalise
from concilium.ensemble.similarity import SIMILARITIES, mean_pairwise_similarity, similarity


def _maps(seed, shape=(3, 5, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_ensemble_of_one_equals_its_member():
    m = _maps(0)
    torch.testing.assert_close(ens_avg([m], normalisation="none"), m)
    torch.testing.assert_close(ens_avg({"m0": m}, normalisation="l2"), normalise(m, "l2"))


def test_ens_avg_is_mean_of_normalised_members():
    a, b = _maps(1), 5 * _maps(2)
    expected = (normalise(a, "max_abs") + normalise(b, "max_abs")) / 2
    torch.testing.assert_close(ens_avg([a, b]), expected)


class _Linear(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _grad_explainer(model, images, targets, *, method):
    x = images.clone().requires_grad_(True)
    out = model(x).gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.sum(1) if method == "saliency" else (g * images).sum(1)


def test_logit_ensemble_averages_logits_and_its_gradient_is_the_mean_gradient():
    models = [_Linear(s) for s in range(3)]
    x = torch.rand(4, 3, 2, 2)
    ens = LogitEnsemble(models)
    torch.testing.assert_close(ens(x), torch.stack([m(x) for m in models]).mean(0))
    t = torch.tensor([0, 1, 2, 0])
    got = ens_logit_maps(models, x, t, method="saliency", explainer=_grad_explainer)
    expected = torch.stack([_grad_explainer(m, x, t, method="saliency") for m in models]).mean(0)
    torch.testing.assert_close(got, expected)
    # GradCAM and non-linear members: tests/ensemble/test_ens_logit.py
    with pytest.raises(ValueError, match="non-negative"):
        LogitEnsemble(models, weights=[1, -1, 1])


@pytest.mark.parametrize("kind", SIMILARITIES.names())
def test_similarity_of_identical_maps_is_one_and_symmetric(kind):
    a, b = _maps(3), _maps(4)
    torch.testing.assert_close(similarity(a, a, kind), torch.ones(3))
    torch.testing.assert_close(similarity(a, b, kind), similarity(b, a, kind))
    const = torch.ones(1, 5, 5)
    assert torch.isfinite(similarity(const, a[:1], kind)).all()
    torch.testing.assert_close(similarity(const, const, kind), torch.ones(1))  # defined as 1


def _reference_similarity(a, b, kind):
    x, y = a.double().flatten().numpy(), b.double().flatten().numpy()
    if kind == "cosine":
        return float((x * y).sum() / ((x**2).sum() ** 0.5 * (y**2).sum() ** 0.5))
    stat = scipy.stats.pearsonr if kind == "pearson" else scipy.stats.spearmanr
    return float(stat(x, y).statistic)


@pytest.mark.parametrize("kind", SIMILARITIES.names())
def test_similarity_of_nearly_identical_maps_is_computed(kind):
    """Review section 3: 1 was hard-coded for identical maps, so the identical-map test could not
    see the computation; nearly identical maps check the computed value against numpy / scipy."""
    a = _maps(11, (2, 6, 6))
    b = a + 0.05 * _maps(12, (2, 6, 6))
    got = similarity(a, b, kind)
    for i in range(2):
        assert got[i].item() == pytest.approx(_reference_similarity(a[i], b[i], kind), abs=1e-5)
    assert (got < 1).all() and (got > 0.9).all()


def test_similarity_against_scipy():
    a, b = _maps(5, (1, 4, 6)), _maps(6, (1, 4, 6))
    r = scipy.stats.pearsonr(a.flatten(), b.flatten()).statistic
    rho = scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic
    assert similarity(a, b, "pearson").item() == pytest.approx(r, abs=1e-5)
    assert similarity(a, b, "spearman").item() == pytest.approx(rho, abs=1e-5)
    assert mean_pairwise_similarity(torch.stack([a, a, a])) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", SIMILARITIES.names())
@pytest.mark.parametrize("vote", ["mean", "rank"])
def test_consensus_score_of_member_identical_to_consensus_is_one(kind, vote):
    m = _maps(7).abs()
    stack = torch.stack([m, m, m])  # every member equal: each is the consensus
    cons = consensus(stack, normalisation="rank" if vote == "rank" else "max_abs", vote=vote)
    scores = consensus_scores(stack, cons, similarity_kind=kind,
                              normalisation="rank" if vote == "rank" else "max_abs")
    torch.testing.assert_close(scores, torch.ones(3, 3))


@pytest.mark.parametrize("kind", SIMILARITIES.names())
@pytest.mark.parametrize("normalisation", ["max_abs", "z_score", "rank"])
def test_identical_members_score_one_under_the_rank_vote(kind, normalisation):
    """Review D11: with ``vote="rank"`` and the default ``max_abs`` normalisation the rank
    consensus was compared with the members' scaled maps (cosine 0.866 for identical
    members); the members' ranks are compared now."""
    m = _maps(7).abs()
    stack = torch.stack([m, 2 * m, 0.5 * m])  # the same explanation at three scales
    cons = consensus(stack, normalisation=normalisation, vote="rank")
    scores = consensus_scores(stack, cons, similarity_kind=kind, normalisation=normalisation,
                              vote="rank")
    torch.testing.assert_close(scores, torch.ones(3, 3))


def test_consensus_scores_rank_the_outlier_last():
    base = _maps(8).abs()
    members = [base + 0.1 * _maps(10 + i).abs() for i in range(4)] + [_maps(99).abs()]
    cons = consensus(members)
    table = consensus_table([f"m{i}" for i in range(5)], consensus_scores(members, cons),
                            accuracy=[0.9, 0.91, 0.88, 0.92, 0.5])
    assert table.consensus_score.idxmin() == 4
    corr = consensus_correlations(table).set_index("against").loc["accuracy"]
    assert corr.pearson_r > 0.5 and corr.n == 5


def test_correlation_statistics_match_scipy_and_are_nan_when_undefined():
    """The statistics are scipy's; the p-values of so few points are exact permutation ones
    (tests/ensemble/test_correlation_p.py)."""
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    out = correlation(x, y)
    assert out["pearson_r"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic)
    assert out["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert pd.isna(correlation([1, 1, 1], [1, 2, 3])["pearson_r"])
    assert pd.isna(correlation([1, 2], [1, 2])["spearman_rho"])


def test_correct_by_all():
    models = [_Linear(s) for s in range(2)]
    x = torch.rand(6, 3, 2, 2)
    preds = [m(x).argmax(1) for m in models]
    labels = preds[0]
    keep = correct_by_all(models, x, labels)
    assert keep.tolist() == (preds[0] == preds[1]).tolist()


def test_consensus_rejects_members_of_different_images():
    with pytest.raises(ValueError, match="different images"):
        consensus([torch.zeros(3, 4, 4), torch.zeros(4, 4, 4)])
    with pytest.raises(ValueError, match="vote"):
        consensus([torch.zeros(3, 4, 4)], vote="median")


def _saliency(model, images, targets):
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return g.abs().sum(1)


def test_mprt_of_a_logit_ensemble_randomises_every_members_layer_together():
    """The ensemble's layer k is every member's layer k: as many MPRT steps as one member has
    layers (not members x layers), and an ensemble of one scores exactly as its member."""
    from concilium.metrics import evaluate_curve
    from concilium.metrics.randomisation import layer_groups, randomisable_layers

    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 3)).eval() for _ in range(3)]
    ensemble = LogitEnsemble(models).eval()
    groups = layer_groups(ensemble)
    assert [name for name, _ in groups] == randomisable_layers(models[0]) == ["0", "3"]
    assert [names for _, names in groups] == [[f"members.{j}.0" for j in range(3)],
                                              [f"members.{j}.3" for j in range(3)]]
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 0])
    maps = _saliency(ensemble, x, t)
    names, scores = evaluate_curve("mprt", maps, images=x, labels=t, model=ensemble,
                                   explainer=_saliency)
    assert names == ["3", "0"] and scores.shape == (4, 2)  # top-down
    one = LogitEnsemble(models[:1]).eval()
    single = evaluate_curve("mprt", _saliency(models[0], x, t), images=x, labels=t,
                            model=models[0], explainer=_saliency)[1]
    together = evaluate_curve("mprt", _saliency(one, x, t), images=x, labels=t, model=one,
                              explainer=_saliency)[1]
    torch.testing.assert_close(together, single)


@pytest.mark.parametrize("metric", ["mprt", "smooth_mprt", "efficient_mprt", "random_logit"])
def test_randomisation_metrics_score_a_logit_ensemble_of_one_as_its_member(metric):
    """The metrics that randomise the model run on an ensemble model (they read its layer
    groups), and an ensemble of one scores exactly as its member."""
    from concilium.metrics import evaluate

    torch.manual_seed(0)
    member = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 0])
    params = {"nr_samples": 2} if metric == "smooth_mprt" else {}
    scores = [evaluate(metric, _saliency(model, x, t), images=x, labels=t, model=model,
                       explainer=_saliency, generator=torch.Generator().manual_seed(3), **params)
              for model in (member, LogitEnsemble([member]).eval())]
    torch.testing.assert_close(scores[1], scores[0], equal_nan=True)
    two = LogitEnsemble([member, copy.deepcopy(member)]).eval()
    assert evaluate(metric, _saliency(two, x, t), images=x, labels=t, model=two,
                    explainer=_saliency, generator=torch.Generator().manual_seed(3),
                    **params).shape == (4,)
