"""Ens-Logit GradCAM on real (non-linear) members: the ensemble's target, not the members'
(review ensembling D7), the averaged model's map rather than a mean of maps (section 3), and
layer methods other than GradCAM refused by name (D18)."""

import copy

import pytest
import torch

from concilium.ensemble.averaging import LogitEnsemble, ens_logit_maps, shared_layer
from concilium.explain import explain
from concilium.jobs.ensemble import run_ensemble
from concilium.models import create_model
from concilium.store import ExplanationStore, Run


def _members(n=3):
    ms = []
    for s in range(n):
        torch.manual_seed(s)
        m = create_model("small-cnn", num_classes=4).eval()
        with torch.no_grad():
            m.head.weight.mul_(50)  # confident members that disagree with the ensemble
        ms.append(m)
    return ms


def test_gradcam_pred_explains_the_ensembles_class():
    """Review D7 repro: members explained their own predicted class (16/16 maps wrong)."""
    ms = _members()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ens_pred = LogitEnsemble(ms)(x).argmax(1)
        own = torch.stack([m(x).argmax(1) for m in ms])
    assert (own != ens_pred).any(dim=0).sum() >= 8  # the repro is one that can fail
    lib = ens_logit_maps(ms, x, "pred", method="gradcam", explainer=explain)
    right = torch.stack([explain(m, x, ens_pred, method="gradcam") for m in ms]).mean(0)
    torch.testing.assert_close(lib, right, atol=1e-7, rtol=1e-5)


def test_saliency_is_the_averaged_models_map_not_the_mean_map():
    """Section 3: with non-linear members the averaged model's saliency differs from the mean
    of the members' saliency maps; a mutant that averages maps fails here."""
    ms = _members(2)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 3])
    lib = ens_logit_maps(ms, x, t, method="saliency")
    direct = explain(LogitEnsemble(ms).eval(), x, t, method="saliency")
    torch.testing.assert_close(lib, direct)
    mean_map = torch.stack([explain(m, x, t, method="saliency") for m in ms]).mean(0)
    assert not torch.allclose(lib, mean_map, atol=1e-6)


def test_guided_gradcam_is_refused_by_name():
    ms = _members(2)
    with pytest.raises(ValueError, match="guided_gradcam"):
        ens_logit_maps(ms, torch.rand(2, 3, 16, 16), "pred", method="guided_gradcam")


def test_ens_logit_kind_skips_guided_gradcam_with_a_warning_and_runs_gradcam(tiny_run):
    """Review D18: ``ens-logit`` over every method must not abort on a layer method."""
    store = ExplanationStore(tiny_run)
    ids = Run.open(tiny_run).data.ids
    for member in ("m0", "m1"):
        params = {"method": "guided_gradcam", "method_params": {}, "target": "label",
                  "reduction": "sum", "baseline": "zero", "seed": 0}
        entry = store.entry(member, "guided_gradcam", params, ids, shape=(32, 32))
        entry.write(0, torch.zeros(len(ids), 32, 32))
    with pytest.warns(UserWarning, match="guided_gradcam"):
        result = run_ensemble(tiny_run, "ens-logit", {"methods": ["gradcam", "guided_gradcam"]})
    assert [e.method for e in result.entries] == ["gradcam"]
    run = Run.open(tiny_run, load_models=True)
    x, labels = run.data.images[:4], run.data.labels[:4]
    expected = ens_logit_maps([run.models["m0"], run.models["m1"]], x, "label", method="gradcam",
                              params={"labels": labels})
    torch.testing.assert_close(result.entries[0].read([0, 1, 2, 3]), expected, atol=1e-6,
                               rtol=1e-4)


def _head_members(n=3):
    """Members sharing one backbone (weights equal, modules distinct) with their own heads: head
    diversity with ``finetune="head"``."""
    torch.manual_seed(0)
    base = create_model("small-cnn", num_classes=4).eval()
    ms = []
    for s in range(n):
        m = copy.deepcopy(base)
        m.reset_heads(torch.Generator().manual_seed(10 + s))
        with torch.no_grad():
            m.head.weight.mul_(20)
        ms.append(m.eval())
    return ms


def test_gradcam_at_a_shared_layer_is_the_averaged_models_gradcam():
    """Review D8: with a shared backbone the averaged-logit GradCAM is ReLU of the activation
    weighted by the mean gradient, computed here directly; it differs from the mean of the
    members' GradCAMs (which the library returned before)."""
    ms = _head_members()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layer = ms[0].gradcam_layer
    assert shared_layer(ms, x, [layer] * 3) == layer
    with torch.no_grad():
        t = LogitEnsemble(ms)(x).argmax(1)
    grads, act = [], None
    for m in ms:
        store = {}
        handle = dict(m.named_modules())[layer].register_forward_hook(
            lambda _m, _i, out, store=store: store.setdefault("a", out))
        try:
            score = m(x).gather(1, t[:, None]).sum()
            grads.append(torch.autograd.grad(score, store["a"])[0])
        finally:
            handle.remove()
        act = store["a"].detach()
    g = torch.stack(grads).mean(0)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    direct = torch.nn.functional.interpolate(cam, size=(32, 32), mode="bilinear",
                                             align_corners=False)[:, 0]
    lib = ens_logit_maps(ms, x, "pred", method="gradcam")
    torch.testing.assert_close(lib, direct, atol=1e-6, rtol=1e-4)
    mean_of_maps = torch.stack([explain(m, x, t, method="gradcam") for m in ms]).mean(0)
    assert (mean_of_maps - lib).abs().amax() > 1e-3 * mean_of_maps.abs().amax()
    # and guided_gradcam works at the shared layer
    assert ens_logit_maps(ms, x, "pred", method="guided_gradcam").shape == (6, 32, 32)


def test_a_layer_that_is_not_shared_is_refused():
    ms = _members(2)
    x = torch.rand(2, 3, 16, 16)
    assert shared_layer(ms, x, [ms[0].gradcam_layer] * 2) is None
    with pytest.raises(ValueError, match="not shared"):
        LogitEnsemble(ms, shared_layer=ms[0].gradcam_layer)(x)


def test_evaluate_explains_a_logit_ensemble_with_a_layer_method_through_ens_logit():
    """Robustness and randomisation metrics re-explain ``ens-logit`` maps on the averaged-logit
    model (or its randomised copy); GradCAM there goes through Ens-Logit, as when the map was
    made (it failed with "this model documents no gradcam_layer" before, so the demo skipped
    them)."""
    from concilium.jobs.evaluate import _explainer
    from concilium.metrics import evaluate as score

    torch.manual_seed(0)
    members = [create_model("small-cnn", num_classes=4).eval() for _ in range(3)]
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    explainer = _explainer({"method": "gradcam", "method_params": {}}, 0)
    ensemble = LogitEnsemble(members).eval()
    maps = explainer(ensemble, x, y)
    torch.testing.assert_close(maps, ens_logit_maps(members, x, y, method="gradcam"))
    values = score("max_sensitivity", maps.detach(), images=x, labels=y, model=ensemble,
                   explainer=explainer, nr_samples=2)
    assert torch.isfinite(values).all()
