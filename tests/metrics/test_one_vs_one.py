"""One-vs-one scores: the contrast curve by hand, IG completeness on the contrast, the oracle map
and baseline, and a model-dependent baseline declared untestable under randomisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from concilium.explain import explain
from concilium.metrics.contrast import (
    PairedBaseline,
    contrast_aopc,
    contrast_curve,
    contrast_explain,
    contrast_scores,
)
from concilium.metrics.one_vs_one import UNTESTABLE, one_vs_one_scores

SIZE = 4


def linear_model(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, classes))
    return model.eval()


def data(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g)
    x_star = x.clone()
    x_star[:, :, :2, :2] = torch.rand(n, 3, 2, 2, generator=g)  # the change: a 2x2 corner
    labels = torch.arange(n) % 3
    contrast = (labels + 1) % 3
    return x, x_star, labels, contrast


def test_contrast_curve_by_hand():
    model = linear_model()
    x, x_star, c, t = data(2)
    w = model[1].weight.detach().view(3, 3, SIZE, SIZE)
    maps = torch.arange(SIZE * SIZE, dtype=torch.float32).flip(0).view(1, SIZE, SIZE)
    maps = maps.expand(2, -1, -1).clone()  # pixel 0 ranked first, then 1, 2, ...
    curve = contrast_curve(maps, images=x, references=x_star, labels=c, contrast=t, model=model,
                           order="morf", step=25.0, max_percent=50.0)
    assert curve.shape == (2, 3)  # 0, 4 and 8 pixels replaced
    for i in range(2):
        diff = w[c[i]] - w[t[i]]
        for col, k in enumerate((0, 4, 8)):
            z = x[i].clone().view(3, -1)
            z[:, :k] = x_star[i].view(3, -1)[:, :k]
            expected = (diff.view(3, -1) * z).sum() + (model[1].bias[c[i]] - model[1].bias[t[i]])
            assert curve[i, col].item() == pytest.approx(expected.item(), abs=1e-5)
    scores = contrast_scores(model, x, c, t)
    torch.testing.assert_close(curve[:, 0], scores)


def test_integrated_gradients_on_the_contrast_is_complete_and_grouped_by_t():
    model = linear_model()
    x, x_star, c, t = data(6)
    maps = contrast_explain(model, x, c, t, method="integrated_gradients",
                            baseline=PairedBaseline(x, x_star), method_params={"n_steps": 8})
    # completeness of IG for f = logit_c - logit_t
    delta = contrast_scores(model, x, c, t) - contrast_scores(model, x_star, c, t)
    torch.testing.assert_close(maps.flatten(1).sum(1), delta, atol=1e-4, rtol=1e-4)
    # the same as explaining each contrast class on its own
    for k in t.unique().tolist():
        rows = t == k
        alone = explain(model, x[rows], f"contrast:{k}", method="integrated_gradients",
                        baseline=x_star[rows], labels=c[rows], n_steps=8)
        torch.testing.assert_close(maps[rows], alone, atol=1e-6, rtol=1e-6)


def test_oracle_map_beats_its_reverse_and_x_star_localises_perfectly():
    model = linear_model()
    x, x_star, c, t = data(6)
    rows = one_vs_one_scores(model, x, c, t, x_star,
                             baselines={"x*": PairedBaseline(x, x_star), "zero": "zero"},
                             method_params={"integrated_gradients": {"n_steps": 8}},
                             step=25.0, max_percent=50.0, randomisation=False)
    value = {(r["baseline"], r["metric"], r["image"]): r["value"] for r in rows}
    for i in range(6):
        # IG with b = x* is zero wherever x = x*: all its mass is on the changed pixels
        assert value[("x*", "relevance_mass", i)] == pytest.approx(1.0)
        assert value[("x*", "auc", i)] == pytest.approx(1.0)
        assert value[("zero", "relevance_mass", i)] < 1.0
    # deleting towards x* along the oracle map (the contrast drop per pixel) has a positive gap
    w = model[1].weight.detach().view(3, 3, SIZE, SIZE)
    oracle = torch.stack([((w[c[i]] - w[t[i]]) * (x[i] - x_star[i])).sum(0) for i in range(6)])
    gap = contrast_aopc(oracle, images=x, references=x_star, labels=c, contrast=t, model=model,
                        step=25.0, max_percent=50.0)
    assert (gap["gap"] >= 0).all()
    reverse = contrast_aopc(-oracle, images=x, references=x_star, labels=c, contrast=t,
                            model=model, step=25.0, max_percent=50.0)
    torch.testing.assert_close(reverse["gap"], -gap["gap"], atol=1e-5, rtol=1e-5)


def test_model_dependent_baseline_is_untestable_without_regeneration():
    model = linear_model()
    x, x_star, c, t = data(4)
    calls = []

    def regenerate(m):
        calls.append(m)
        return PairedBaseline(x, x_star)

    rows = one_vs_one_scores(model, x, c, t, x_star,
                             baselines={"gen": PairedBaseline(x, x_star), "fixed": "zero",
                                        "regen": PairedBaseline(x, x_star)},
                             model_dependent=("gen", "regen"), regenerate={"regen": regenerate},
                             method_params={"integrated_gradients": {"n_steps": 4}},
                             step=25.0, max_percent=50.0)
    mprt = {(r["baseline"], r["image"]): r["value"] for r in rows if r["metric"] == "mprt"}
    assert all(math.isnan(mprt[("gen", i)]) for i in range(4))
    assert all(math.isfinite(mprt[("fixed", i)]) for i in range(4))
    assert all(math.isfinite(mprt[("regen", i)]) for i in range(4))
    assert calls and all(m is not model for m in calls)  # made for every randomised copy
    assert "by construction" in UNTESTABLE


def test_clear_errors():
    model = linear_model()
    x, x_star, c, t = data(2)
    with pytest.raises(ValueError, match="like the images"):
        PairedBaseline(x, x_star[:1])
    with pytest.raises(ValueError, match="no paired baseline"):
        PairedBaseline(x[:1], x_star[:1])(x, c)
    with pytest.raises(ValueError, match="step <= max_percent"):
        contrast_curve(torch.rand(2, SIZE, SIZE), images=x, references=x_star, labels=c,
                       contrast=t, model=model, step=30.0, max_percent=20.0)
    with pytest.raises(ValueError, match="model_dependent"):
        one_vs_one_scores(model, x, c, t, x_star, baselines={"zero": "zero"},
                          model_dependent=("ganmex",))


def _rows(values: dict[str, list[float]], metric: str = "relevance_mass"):
    import pandas as pd

    out = []
    for baseline, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            for image in range(2):  # two images per seed, symmetric around the seed's value
                out.append({"method": "ig", "baseline": baseline, "metric": metric,
                            "image": image, "seed": seed, "value": v + (0.01 if image else -0.01)})
    return pd.DataFrame(out)


def test_summary_intervals_across_seed_means_by_hand():
    from scipy import stats

    from concilium.metrics.one_vs_one import summarise_one_vs_one

    table = summarise_one_vs_one(_rows({"ganmex": [0.2, 0.3, 0.4], "blur": [0.1, 0.1, 0.1]}))
    row = table.set_index("baseline").loc["ganmex"]
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert row["relevance_mass"] == pytest.approx(0.3)
    assert row["relevance_mass_low"] == pytest.approx(0.3 - half)
    assert row["n_seeds"] == 3 and row["n_images"] == 6


@pytest.mark.parametrize(("metric", "ganmex", "verdict"), [
    ("relevance_mass", [0.5, 0.52, 0.55], "holds"),
    ("relevance_mass", [0.05, 0.02, 0.04], "reversed"),
    ("relevance_mass", [0.5, 0.0, 0.1], "not shown"),
    ("mprt", [0.05, 0.02, 0.04], "holds"),  # lower is better
    ("mprt", [float("nan")] * 3, "untestable"),
])
def test_claim_verdicts(metric, ganmex, verdict):
    from concilium.metrics.one_vs_one import claim_verdicts

    rows = _rows({"ganmex": ganmex, "blur": [0.2, 0.21, 0.22], "zero": [0.1, 0.1, 0.1],
                  "x*": [1.0, 1.0, 1.0]}, metric=metric)
    out = claim_verdicts(rows).iloc[0]
    assert out["verdict"] == verdict
    if verdict != "untestable":  # the best other is blur for mass and zero for mprt, never x*
        assert out["best_other"] == ("blur" if metric == "relevance_mass" else "zero")
