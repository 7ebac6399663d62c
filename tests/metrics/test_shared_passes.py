"""The shared perturbation engine (``concilium.metrics.shared``): a suite evaluated in one scope
gives every metric the value it has alone, and pays for each distinct copy once."""

from __future__ import annotations

import pytest
import torch
from metric_helpers import FAST, input_x_gradient, make_batch
from test_metric_entries import count_images

from concilium.metrics import METRICS, evaluate, evaluate_suite, shared_passes
from concilium.metrics.perturb import pixel_order
from concilium.metrics.shared import active, device_digests, row_digests

ALL = METRICS.names()


def _alone(name, maps, images, labels, masks, model, **params):
    return evaluate(
        name, maps, images=images, labels=labels, masks=masks, model=model,
        explainer=input_x_gradient, generator=torch.Generator().manual_seed(0),
        **{**FAST.get(name, {}), **params},
    )


def test_every_metric_of_a_suite_has_its_value_alone():
    model, images, labels, maps, masks = make_batch()
    maps = maps.clone()
    maps[:, :3, :3] = 0.25  # ties, ordered by the per-image streams
    suite = evaluate_suite(
        ALL, maps, images=images, labels=labels, masks=masks, model=model,
        explainer=input_x_gradient, params={n: FAST[n] for n in FAST},
    )
    assert sorted(suite) == sorted(ALL)
    for name in ALL:
        alone = _alone(name, maps, images, labels, masks, model)
        torch.testing.assert_close(suite[name], alone, rtol=1e-6, atol=1e-7, equal_nan=True,
                                   msg=name)


def _forwards(model, names, images, labels, maps, params=None):
    with count_images(model) as seen:
        evaluate_suite(names, maps, images=images, labels=labels, model=model, params=params)
    return seen[0]


def test_aopc_reads_the_deletion_copies():
    model, images, labels, maps, _ = make_batch()
    deletion = _forwards(model, ["deletion"], images, labels, maps)
    assert deletion == images.shape[0] * METRICS.get("deletion").model_passes(size=(10, 10))
    assert _forwards(model, ["deletion", "aopc"], images, labels, maps) == deletion


def test_monotonicity_reads_the_pixel_flipping_copies_backwards():
    """Monotonicity inserts the least relevant pixels first: the copy with ``k`` pixels back is
    pixel flipping's copy with the ``P - k`` most relevant removed. Only its start (the
    unperturbed image, which pixel flipping never scores) is new."""
    model, images, labels, maps, _ = make_batch()
    n, p = images.shape[0], 100
    maps = maps.clone()
    maps[:, 5:, 5:] = 0.0  # ties too
    flipping = _forwards(model, ["pixel_flipping"], images, labels, maps)
    assert flipping == n * p
    # monotonicity orders by |map| by default (Quantus); on the same order the copies coincide
    both = _forwards(model, ["pixel_flipping", "monotonicity"], images, labels, maps,
                     params={"monotonicity": {"abs": False}})
    assert both == n * (p + 1)
    assert _forwards(model, ["pixel_flipping", "monotonicity"], images, labels, maps.abs()) == (
        n * (p + 1)
    )


def test_the_sensitivities_explain_each_noisy_copy_once():
    model, images, labels, maps, _ = make_batch()
    calls = [0]

    def explainer(m, x, t):
        calls[0] += x.shape[0]
        return input_x_gradient(m, x, t)

    params = {"nr_samples": 3, "return_nan_when_prediction_changes": False}
    evaluate_suite(["max_sensitivity"], maps, images=images, labels=labels, model=model,
                   explainer=explainer, params={"max_sensitivity": params})
    alone = calls[0]
    assert alone == images.shape[0] * 3
    calls[0] = 0
    evaluate_suite(["max_sensitivity", "avg_sensitivity"], maps, images=images, labels=labels,
                   model=model, explainer=explainer,
                   params={"max_sensitivity": params, "avg_sensitivity": params})
    assert calls[0] == alone


def test_a_randomised_copy_is_never_served_from_the_store():
    """MPRT re-explains with its own randomised copies of the model: inside a scope it must make
    every call (the store only serves the caller's unmodified model)."""
    model, images, labels, maps, _ = make_batch()
    calls = [0]

    def explainer(m, x, t):
        calls[0] += x.shape[0]
        return input_x_gradient(m, x, t)

    evaluate("mprt", maps, images=images, labels=labels, model=model, explainer=explainer)
    alone = calls[0]
    calls[0] = 0
    with shared_passes():
        for _ in range(2):
            evaluate("mprt", maps, images=images, labels=labels, model=model, explainer=explainer)
    assert calls[0] == 2 * alone


def test_copies_that_differ_in_one_pixel_are_distinct():
    model, images, labels, maps, _ = make_batch(n=1)
    with shared_passes() as store:
        base = torch.zeros_like(images)
        masks = torch.zeros(2, 10, 10, dtype=torch.bool)
        masks[0, 3, 3] = True
        masks[1, 3, 4] = True
        scores = store.variant_scores(
            model, images, labels, base, lambda i, v: masks[v], 2, softmax=False, batch_size=8
        )
        assert store.stats.model_forwards == 2
        direct = model(torch.where(masks.unsqueeze(1), base, images.expand(2, -1, -1, -1)))
        torch.testing.assert_close(scores[0], direct.gather(1, labels.expand(2)[:, None])[:, 0])


def test_the_scope_closes_and_nests():
    assert active() is None
    with shared_passes() as outer:
        with shared_passes() as inner:
            assert inner is outer
        assert active() is outer
    assert active() is None


@pytest.mark.parametrize("seed", [0, 1])
def test_lerf_is_morf_reversed_ties_included(seed):
    maps = torch.zeros(3, 6, 6)
    maps[:, 2:4, 2:4] = 1.0
    maps[1, 0, 0] = 2.0
    streams = [seed, seed + 7, seed + 11]
    morf = pixel_order(maps, descending=True, streams=streams)
    lerf = pixel_order(maps, descending=False, streams=streams)
    assert torch.equal(lerf, morf.flip(1))
    ordered = maps.flatten(1).gather(1, morf)
    assert (ordered.diff(dim=1) <= 0).all()


@pytest.mark.parametrize("digest", [row_digests, device_digests])
def test_row_digests_tell_rows_apart_by_one_ulp(digest):
    """The GPU digest (computed on the device, tested here on the CPU) and the host digest:
    equal rows get equal digests, a row changed in its last bit another one."""
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[1, 2, 7, 7] = torch.nextafter(y[1, 2, 7, 7], torch.tensor(2.0))
    a, b = digest(x), digest(y)
    assert a[0] == b[0] and a[2] == b[2] and a[1] != b[1]
    assert len(set(a)) == 3
    assert digest(x.double())[0] != a[0]  # the dtype is part of the digest
