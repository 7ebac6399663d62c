"""smooth_mprt and efficient_mprt (Hedström et al. 2023): hand values, properties, and agreement
with Quantus 0.6.0 (sMPRT per layer exactly without noise and in distribution at the defaults;
eMPRT exactly at the defaults)."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from metric_helpers import input_x_gradient, make_batch

from concilium._util import derive_seed
from concilium.metrics import (
    METRICS,
    efficient_mprt,
    evaluate,
    evaluate_curve,
    mprt_curve,
    smooth_mprt,
)
from concilium.metrics._streams import base_seed, image_streams
from concilium.metrics.mprt_variants import fully_randomised, histogram_entropy, smoothed
from concilium.metrics.randomisation import randomisable_layers


def _np(t):
    return t.detach().cpu().numpy()


def _q_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return _np(input_x_gradient(model, x, torch.as_tensor(targets).long()))[:, None]


def _batch():
    model, images, labels, _, _ = make_batch(n=3, size=8)
    return model, images, labels, input_x_gradient(model, images, labels)


def _quantus(metric, model, images, labels, maps, **call):
    return metric(
        model=model,
        x_batch=_np(images),
        y_batch=_np(labels),
        a_batch=_np(maps)[:, None],
        channel_first=True,
        device="cpu",
        explain_func=_q_explain,
        **call,
    )


# ---- smooth_mprt ---------------------------------------------------------------------------


def test_smoothed_explainer_is_the_mean_over_noisy_copies_the_last_one_clean():
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(2, dtype=torch.long)

    def channel_sum(model, x, t):
        return x.sum(1)

    g = torch.Generator().manual_seed(5)
    out = smoothed(channel_sum, nr_samples=3, noise_magnitude=0.1, generator=g)(None, images,
                                                                                 targets)
    # copy k of image i: the noise of image i's stream keyed ("smooth", k)
    streams = image_streams(torch.Generator().manual_seed(base_seed(torch.Generator()
                                                                    .manual_seed(5))), images)
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(2, 1, 1, 1)
    noisy = [images + torch.stack([
        torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(
            derive_seed(t, "smooth", k))) for t in streams]) * 0.1 * span for k in range(2)]
    expected = sum(x.sum(1) for x in [*noisy, images]) / 3
    torch.testing.assert_close(out, expected)
    one = smoothed(channel_sum, nr_samples=1, noise_magnitude=0.1, generator=None)
    torch.testing.assert_close(one(None, images, targets), images.sum(1))
    with pytest.raises(ValueError, match="generator="):
        smoothed(channel_sum, nr_samples=2, noise_magnitude=0.1, generator=None)


def test_smooth_mprt_with_one_sample_is_bottom_up_mprt():
    model, images, labels, maps = _batch()
    layers, ours = evaluate_curve("smooth_mprt", maps, images=images, labels=labels, model=model,
                                  explainer=input_x_gradient, nr_samples=1)
    plain_layers, plain = mprt_curve(maps, images=images, labels=labels, model=model,
                                     explainer=input_x_gradient, order="bottom_up")
    assert layers == plain_layers == randomisable_layers(model)
    torch.testing.assert_close(ours, plain)


def test_smooth_mprt_is_seeded_leaves_the_global_rng_and_the_model():
    model, images, labels, maps = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    kwargs = {"images": images, "labels": labels, "model": model,
              "explainer": input_x_gradient, "nr_samples": 3}
    first = smooth_mprt(maps, generator=torch.Generator().manual_seed(1), **kwargs)
    second = smooth_mprt(maps, generator=torch.Generator().manual_seed(1), **kwargs)
    other = smooth_mprt(maps, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert METRICS.get("smooth_mprt").stochastic


def test_smooth_mprt_matches_quantus_per_layer_without_noise():
    model, images, labels, maps = _batch()
    # Quantus explains the noisy copies with quantus.explain, whatever explain_func it is given
    theirs = _quantus(quantus.SmoothMPRT(nr_samples=1, disable_warnings=True), model, images,
                      labels, maps, explain_func_kwargs={"method": "InputXGradient"})
    layers, ours = evaluate_curve("smooth_mprt", maps, images=images, labels=labels, model=model,
                                  explainer=input_x_gradient, nr_samples=1)
    assert list(theirs)[1:] == layers
    for j, layer in enumerate(layers):
        np.testing.assert_allclose(_np(ours[:, j]), theirs[layer], atol=1e-5)  # max abs diff


def test_smooth_mprt_matches_quantus_in_distribution_at_the_defaults():
    model, images, labels, maps = _batch()
    theirs, ours = [], []
    for seed in range(4):
        np.random.seed(seed)  # Quantus draws its noise from NumPy's global RNG
        q = _quantus(quantus.SmoothMPRT(disable_warnings=True), model, images, labels, maps,
                     explain_func_kwargs={"method": "InputXGradient"})
        theirs.append(np.stack([q[layer] for layer in list(q)[1:]], axis=1))
        ours.append(_np(evaluate_curve(
            "smooth_mprt", maps, images=images, labels=labels, model=model,
            explainer=input_x_gradient, generator=torch.Generator().manual_seed(seed))[1]))
    # per-seed std about 0.03: 0.08 is about four standard errors of the difference of means
    np.testing.assert_allclose(np.mean(ours, 0), np.mean(theirs, 0), atol=0.08)
    score = evaluate("smooth_mprt", maps, images=images, labels=labels, model=model,
                     explainer=input_x_gradient, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(_np(score), ours[0].mean(1))  # the original is not averaged in


# ---- efficient_mprt ------------------------------------------------------------------------


def test_histogram_entropy_hand_values_and_scipy():
    maps = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0],
                                                                              [5.0, 5.0]]])
    h = histogram_entropy(maps, n_bins=2)
    expected = [np.log(2), np.log(2), 0.0]
    np.testing.assert_allclose(_np(h), expected)
    x = torch.randn(4, 9, 9, generator=torch.Generator().manual_seed(0))
    ref = [scipy.stats.entropy(np.histogram(_np(m).ravel(), bins=100)[0]) for m in x]
    np.testing.assert_allclose(_np(histogram_entropy(x, n_bins=100)), ref, atol=1e-12)


def test_efficient_mprt_hand_values():
    model, images, labels, maps = _batch()

    def ignores_the_model(m, x, t):
        return x.sum(1)

    same = images.sum(1)
    kwargs = {"images": images, "labels": labels, "model": model}
    assert efficient_mprt(same, explainer=ignores_the_model, **kwargs).tolist() == [0.0] * 3

    def constant(m, x, t):
        return torch.ones(x.shape[0], *x.shape[-2:])

    assert efficient_mprt(same, explainer=constant, **kwargs).tolist() == [-1.0] * 3
    with pytest.warns(UserWarning, match="efficient_mprt: 1 of 3"):
        flat = same.clone()
        flat[0] = 2.0
        out = efficient_mprt(flat, explainer=ignores_the_model, **kwargs)
    assert np.isnan(out[0].item())


def test_fully_randomised_is_quantus_cascade_end_and_leaves_the_model_and_rng():
    model, _, _, _ = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    random = fully_randomised(model, seed=42)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.manual_seed(43)
    model.conv.reset_parameters()
    torch.manual_seed(43)
    model.fc.reset_parameters()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in random.state_dict().items())


def test_efficient_mprt_matches_quantus_at_the_defaults():
    model, images, labels, maps = _batch()
    theirs = _quantus(quantus.EfficientMPRT(disable_warnings=True), model, images, labels, maps)
    ours = efficient_mprt(maps, images=images, labels=labels, model=model,
                          explainer=input_x_gradient)
    np.testing.assert_allclose(_np(ours), np.asarray(theirs), atol=1e-9)  # max abs diff
