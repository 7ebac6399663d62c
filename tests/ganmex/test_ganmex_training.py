"""Training: frozen classifier, targets, one step lowers the loss, validation, checkpoints, resume."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from concilium.ganmex import (
    GanmexOptions,
    frozen,
    generator_loss,
    load_card,
    load_generator,
    read_history,
    sample_targets,
    train_ganmex,
    train_step,
    validate,
)
from concilium.ganmex.checkpoint import build_networks

from .conftest import CLASSES, SIZE, TINY, TinyClassifier, colour_images


def test_frozen_restores_flags_and_mode_even_on_error(classifier: TinyClassifier) -> None:
    classifier.train()
    classifier.head.weight.requires_grad_(False)
    with pytest.raises(RuntimeError), frozen(classifier):
        assert not classifier.training
        assert not any(p.requires_grad for p in classifier.parameters())
        raise RuntimeError("boom")
    assert classifier.training
    assert [p.requires_grad for p in classifier.parameters()] == [True, True, False, True]


def test_sample_targets_never_the_source_and_cover_the_others() -> None:
    labels = torch.arange(4).repeat(250)
    t = sample_targets(labels, 4, generator=torch.Generator().manual_seed(0))
    assert not (t == labels).any()
    for c in range(4):
        assert set(t[labels == c].tolist()) == set(range(4)) - {c}
    with pytest.raises(ValueError, match="num_classes >= 2"):
        sample_targets(labels, 1, generator=torch.Generator())


def test_one_step_decreases_the_generator_loss_on_a_fixed_batch(
    classifier: TinyClassifier,
) -> None:
    # the reference's smooth losses: at the default's exact identity the L1 has a kink (its
    # gradient there is 0), so a first step may raise the loss it did not see
    options = GanmexOptions.preset("reference", **TINY)
    gen, critic = build_networks(options, num_classes=3, image_size=(SIZE, SIZE), in_channels=3)
    images, labels = colour_images(4)
    targets = sample_targets(labels, 3, generator=torch.Generator().manual_seed(1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=options.lr_g)
    opt_d = torch.optim.Adam(critic.parameters(), lr=options.lr_d)
    before_gen = copy.deepcopy(gen)
    with frozen(classifier):
        train_step(gen, critic, classifier, opt_g, opt_d, [(images, labels, targets)],
                   options=options, rng=torch.Generator().manual_seed(2))
        # both losses with the critic as the generator update saw it
        weights = dict(l_cls=options.l_cls, l_sim=options.l_sim, target=options.target_loss)
        before = generator_loss(before_gen, critic, classifier, images, labels, targets,
                                **weights).total
        after = generator_loss(gen, critic, classifier, images, labels, targets, **weights).total
    assert after.item() < before.item()


def test_training_never_modifies_the_classifier(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(12)
    state = copy.deepcopy(classifier.state_dict())
    classifier.train()
    train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                 options=GanmexOptions(steps=2, checkpoint_every=1, n_critic=2, **TINY))
    for k, v in classifier.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert classifier.training and all(p.requires_grad for p in classifier.parameters())


def test_checkpoints_validation_csv_and_card(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(12)
    records = []
    card, history = train_ganmex(
        classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
        options=GanmexOptions(steps=3, checkpoint_every=2, **TINY),
        classifier_card_hash="abc", data_fingerprint="fp", on_validation=records.append,
    )
    assert [r.step for r in history] == [2, 3] and records == history
    assert card.step == 3 and card.image_size == (SIZE, SIZE) and card.class_names == CLASSES
    assert load_card(tmp_path) == card
    with (tmp_path / "validation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 3]
    assert read_history(tmp_path / "validation.csv") == history
    assert read_history(tmp_path / "validation.csv", up_to=2) == history[:1]
    assert read_history(tmp_path / "missing.csv") == []
    for r in history:
        assert 0.0 <= r.success_rate <= 1.0 and r.l1 > 0 and r.seconds > 0
        assert r.feature_distance >= 0 and r.feature_distance_input >= 0
    assert "success" in history[-1].line()
    gen, loaded = load_generator(tmp_path)
    assert loaded.step == 3 and not gen.training


def test_resume_equals_an_uninterrupted_run(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(12)
    straight, resumed = tmp_path / "a", tmp_path / "b"
    opts = dict(checkpoint_every=2, **TINY)
    _, hist_a = train_ganmex(classifier, images, labels, out_dir=straight, class_names=CLASSES,
                             options=GanmexOptions(steps=4, **opts))
    train_ganmex(classifier, images, labels, out_dir=resumed, class_names=CLASSES,
                 options=GanmexOptions(steps=2, **opts))
    card, hist_b = train_ganmex(classifier, images, labels, out_dir=resumed,
                                class_names=CLASSES, options=GanmexOptions(steps=4, **opts))
    assert card.step == 4 and [r.step for r in hist_b] == [2, 4]
    gen_a, _ = load_generator(straight)
    gen_b, _ = load_generator(resumed)
    for (k, va), vb in zip(gen_a.state_dict().items(), gen_b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert hist_a[-1].success_rate == hist_b[-1].success_rate
    assert hist_a[-1].l1 == pytest.approx(hist_b[-1].l1)


def test_until_success_stops_at_the_first_good_checkpoint(
    tmp_path, classifier: TinyClassifier
) -> None:
    images, labels = colour_images(12)

    class AlwaysBlue(TinyClassifier):  # succeeds exactly on the targets "blue"
        def forward(self, x):
            return super().forward(x) * 0 + torch.tensor([0.0, 0.0, 10.0])

    card, history = train_ganmex(AlwaysBlue(), images, labels, out_dir=tmp_path,
                                 class_names=CLASSES, until_success=0.1,
                                 options=GanmexOptions(steps=5, checkpoint_every=1, **TINY))
    assert card.step == 1 and len(history) == 1 and history[0].success_rate >= 0.1
    with pytest.raises(ValueError, match="until_success"):
        train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                     until_success=1.5)


def test_resume_with_other_settings_is_refused(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(12)
    train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                 options=GanmexOptions(steps=1, **TINY))
    with pytest.raises(ValueError, match="option l_sim"):
        train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                     options=GanmexOptions(steps=2, l_sim=1.0, **TINY))
    with pytest.raises(ValueError, match="classifier_card_hash"):
        train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                     options=GanmexOptions(steps=2, **TINY), classifier_card_hash="other")
    card, _ = train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                           options=GanmexOptions(steps=1, l_sim=1.0, **TINY), resume=False)
    assert card.options.l_sim == 1.0


def test_interrupted_save_is_detected(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(12)
    train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                 options=GanmexOptions(steps=1, **TINY))
    card = load_card(tmp_path)
    (tmp_path / "card.json").write_text(card.model_copy(update={"step": 5}).model_dump_json())
    with pytest.raises(ValueError, match="killed while saving"):
        load_generator(tmp_path)


def test_validate_counts_successes(classifier: TinyClassifier) -> None:
    options = GanmexOptions(**TINY)
    gen, critic = build_networks(options, num_classes=3, image_size=(SIZE, SIZE), in_channels=3)
    images, labels = colour_images(6)
    targets = torch.tensor([1, 2, 0, 2, 0, 1])

    class Oracle(torch.nn.Module):  # predicts the target the generator was asked for
        def forward(self, x):
            return torch.nn.functional.one_hot(targets, 3).float() + 0 * x.sum()

    scores = validate(gen, critic, Oracle(), images, labels, targets)
    assert scores["success_rate"] == 1.0
    with torch.no_grad():
        expected_l1 = (images - gen(images, targets)).abs().mean().item()
    assert scores["l1"] == pytest.approx(expected_l1, rel=1e-5)


def test_bad_inputs_are_refused(tmp_path, classifier: TinyClassifier) -> None:
    images, labels = colour_images(6)
    with pytest.raises(ValueError, match="two classes"):
        train_ganmex(classifier, images, labels * 0, out_dir=tmp_path, class_names=["a"])
    with pytest.raises(ValueError, match="divisible by 4"):
        train_ganmex(classifier, images[..., :14, :14], labels, out_dir=tmp_path,
                     class_names=CLASSES)
    with pytest.raises(ValueError, match="val_labels"):
        train_ganmex(classifier, images, labels, out_dir=tmp_path, class_names=CLASSES,
                     val_images=images)
    with pytest.raises(ValueError):
        GanmexOptions(steps=0)
    with pytest.raises(ValueError):
        GanmexOptions(unknown=1)  # type: ignore[call-arg]


def test_same_class_targets_at_the_requested_rate_and_the_reference_uniform() -> None:
    labels = torch.arange(4).repeat(2000)
    t = sample_targets(labels, 4, generator=torch.Generator().manual_seed(0), same_class=0.25)
    share = (t == labels).float().mean().item()
    assert 0.23 < share < 0.27  # 8000 draws: 4.5 standard errors is 0.022
    others = t[t != labels]
    assert set(others.tolist()) == {0, 1, 2, 3}
    u = sample_targets(labels, 4, generator=torch.Generator().manual_seed(0), same_class="uniform")
    assert 0.22 < (u == labels).float().mean().item() < 0.28  # 1/K
    assert torch.bincount(u, minlength=4).min() > 1800


def test_presets_and_their_errors() -> None:
    ref = GanmexOptions.preset("reference")
    assert (ref.output, ref.target_loss, ref.l_cls, ref.l_sim, ref.lr_g, ref.beta1,
            ref.same_class) == ("tanh", "ce", 1000.0, 200.0, 2e-5, 0.9, "uniform")
    assert GanmexOptions.preset("default") == GanmexOptions()
    assert GanmexOptions.preset("reference", steps=7).steps == 7
    with pytest.raises(ValueError, match="default, reference"):
        GanmexOptions.preset("paper")
    with pytest.raises(ValueError, match="same_class"):
        GanmexOptions(same_class=1.0)


class _Fixed(torch.nn.Module):
    """``G(x, t) = x`` with pixel (0, 0) of channel 0 set to 1 and pixel (1, 1) to 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        out = x.clone()
        out[:, 0, 0, 0] = 1.0
        out[:, 0, 1, 1] = 0.5
        return out


def test_validation_against_counterfactuals_by_hand(classifier: TinyClassifier) -> None:
    x = torch.zeros(2, 3, SIZE, SIZE)
    x_star = x.clone()
    x_star[:, :, 0, 0] = 1.0  # the change the generator should make: pixel (0, 0)
    labels, targets = torch.tensor([0, 1]), torch.tensor([1, 2])
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1), torch.nn.Flatten(0))
    scores = validate(_Fixed(), critic, classifier, x, labels, targets, counterfactuals=x_star)
    n_values = 3 * SIZE * SIZE
    assert scores["l1"] == pytest.approx(1.5 / n_values)
    # |G - x*|: channels 1 and 2 of pixel (0, 0) (1 each) and pixel (1, 1) (0.5)
    assert scores["counterfactual_l1"] == pytest.approx(2.5 / n_values)
    assert scores["in_region"] == pytest.approx(1.0 / 1.5)  # the 1 of pixel (0, 0) of 1.5
    plain = validate(_Fixed(), critic, classifier, x, labels, targets)
    assert plain["counterfactual_l1"] is None and plain["in_region"] is None


def test_stop_on_quality_waits_for_a_small_distance(tmp_path, classifier) -> None:
    images, labels = colour_images(12)
    opts = GanmexOptions(steps=4, checkpoint_every=1, **TINY)
    # success 0.01 alone stops at the first checkpoint with any hit; an impossible L1 never stops
    _, history = train_ganmex(classifier, images, labels, out_dir=tmp_path / "a",
                              class_names=CLASSES, options=opts, until_success=0.01,
                              until_l1=1e-12)
    assert [r.step for r in history] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="until_l1"):
        train_ganmex(classifier, images, labels, out_dir=tmp_path / "b", class_names=CLASSES,
                     options=opts, until_l1=0.0)


def test_finetune_generator_trains_a_copy_against_another_classifier(classifier) -> None:
    from concilium.ganmex import finetune_generator

    images, labels = colour_images(12)
    options = GanmexOptions(**TINY)
    gen, _ = build_networks(options, num_classes=3, image_size=(SIZE, SIZE), in_channels=3)
    before = copy.deepcopy(gen.state_dict())
    other = TinyClassifier()
    with torch.no_grad():
        other.head.weight.mul_(-1.0)  # another classifier
    tuned = finetune_generator(gen, other, images, labels, options=options, steps=2, seed=0)
    for k, v in gen.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    assert not tuned.training and not any(p.requires_grad for p in tuned.parameters())
    t = torch.tensor([1] * 12)
    with torch.no_grad():
        assert not torch.equal(tuned(images, t), gen(images, t))
    same = finetune_generator(gen, other, images, labels, options=options, steps=2, seed=0)
    for a, b in zip(same.parameters(), tuned.parameters(), strict=True):
        assert torch.equal(a, b)  # seeded
