"""Consistency: keys, hand values (layer a), properties (b), agreement with Quantus 0.6.0 on its
discretisation and the defect of its default (d)."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metric_helpers import make_batch

from concilium.metrics import METRICS, MetricWarning, evaluate
from concilium.metrics.agreement import discretise_maps


class Predicts(torch.nn.Module):
    """Predicts the class stored in pixel (0, 0) of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() + 0 * self.p


def test_keys():
    maps = torch.tensor([[[0.0, -3.0], [2.0, 1.0]]])
    assert discretise_maps(maps, how="first_n_sign", n=3).tolist() == [[0, -1, 1]]
    assert discretise_maps(maps, how="top_n_sign", n=2).tolist() == [[2, 3, 1, 1]]
    assert discretise_maps(maps, how="rank", n=2).tolist() == [[2, 3, 0, 1]]
    with pytest.raises(ValueError, match="discretise must be one of"):
        discretise_maps(maps, how="top", n=2)


def test_hand_value():
    # keys (top-1 position, |a|): A A A B B; predicted classes 0 0 1 2 2
    maps = torch.zeros(5, 2, 2)
    maps[:3, 0, 0] = 1.0
    maps[3:, 1, 1] = 1.0
    images = torch.zeros(5, 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0])
    score = evaluate(
        "consistency", maps, images=images, labels=torch.zeros(5, dtype=torch.long),
        model=Predicts(), n=1,
    )  # fmt: skip
    np.testing.assert_allclose(score.numpy(), [0.5, 0.5, 0.0, 1.0, 1.0])


def test_an_explanation_shared_by_no_other_image_is_nan_with_a_warning():
    maps = torch.zeros(3, 2, 2)
    maps[0, 0, 0] = maps[1, 0, 0] = 1.0
    maps[2, 1, 0] = 1.0
    images = torch.zeros(3, 1, 2, 2)
    with pytest.warns(MetricWarning, match="1 of 3 images score NaN because no other image"):
        score = evaluate(
            "consistency", maps, images=images, labels=torch.zeros(3, dtype=torch.long),
            model=Predicts(), n=1,
        )  # fmt: skip
    assert score[:2].tolist() == [1.0, 1.0] and torch.isnan(score[2])


def test_batch_relative_metadata():
    assert METRICS.get("consistency").batch_relative and METRICS.get("focus").batch_relative
    assert not METRICS.get("auc").batch_relative


def _quantus(model, images, labels, maps, **kw):
    return np.asarray(
        quantus.Consistency(disable_warnings=True, **kw)(
            model=model, x_batch=images.numpy(), y_batch=labels.numpy(),
            a_batch=maps.numpy()[:, None], device="cpu",
        ),
        dtype=float,
    )  # fmt: skip


def test_matches_quantus_on_its_discretisation():
    """``discretise="first_n_sign"`` is Quantus's ``top_n_sign``; signed maps (``abs=False``)
    so that the keys differ between images."""
    model, images, labels, maps, _ = make_batch(n=12, size=6)
    maps = torch.sign(maps) * (maps.abs() > 0.7)  # many ties: keys shared by several images
    maps[:, 0, :2] = torch.tensor([1.0, -1.0])  # keys differ only in values 3..5
    theirs = _quantus(model, images, labels, maps, abs=False)
    ours = evaluate(
        "consistency", maps, images=images, labels=labels, model=model,
        discretise="first_n_sign", abs=False,
    ).numpy()  # fmt: skip
    # Quantus writes 0 (0 / 1e-9) where no other image shares the key; we write NaN
    lonely = np.isnan(ours)
    assert lonely.any() and not lonely.all()
    np.testing.assert_allclose(ours[~lonely], theirs[~lonely], atol=1e-8)
    np.testing.assert_array_equal(theirs[lonely], 0.0)


def test_quantus_default_ignores_the_explanation_ours_does_not():
    """At Quantus's defaults (abs=True, first 5 signs) every map with non-zero first values has
    the key (1, 1, 1, 1, 1): the score is the share of other images of the same predicted
    class whatever the explanation. Ours keys on the top-5 positions."""
    model, images, labels, maps, _ = make_batch(n=8, size=6)
    other = torch.randn(8, 6, 6, generator=torch.Generator().manual_seed(1))
    pred = model(images).argmax(1).numpy()
    class_share = [(np.sum(pred == p) - 1) / 7 for p in pred]
    for m in (maps, other):
        np.testing.assert_allclose(_quantus(model, images, labels, m), class_share, atol=1e-8)
    ties = maps.clone()
    ties[4:] = ties[:4]  # images 4..7 share their explanation with images 0..3
    ours = evaluate("consistency", ties, images=images, labels=labels, model=model).numpy()
    expected = [float(pred[i] == pred[(i + 4) % 8]) for i in range(8)]
    np.testing.assert_allclose(ours, expected)


@pytest.mark.parametrize("n", [1, 3, 7, 40])
def test_top_n_keys_equal_a_full_stable_sort_with_ties(n):
    # integer-valued maps tie often; the keys must be the first n places of a stable
    # descending sort (ties in pixel order), as the slow definition says
    g = torch.Generator().manual_seed(n)
    maps = torch.randint(-2, 3, (12, 5, 6), generator=g).float()
    maps[0] = 0.0
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :n]
    expected = torch.cat([order, torch.sign(flat.gather(1, order)).long()], dim=1)
    assert torch.equal(discretise_maps(maps, how="top_n_sign", n=n), expected)
