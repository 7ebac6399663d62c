"""Training one network: the loss by hand, accuracy on a quick benchmark, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from concilium.data.dataset import ImageDataset
from concilium.data.synthetic import SynthConfig, generate
from concilium.models import FitSettings, create_model, train_member
from concilium.models.fit import multitask_loss

# (a) hand values ---------------------------------------------------------------------------


def test_multitask_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    attr_logits = torch.tensor([[0.0, 1.0]])
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))  # label 0
    bce = (math.log(2) + math.log(1 + math.exp(-1))) / 2  # targets (1, 1): -log(sigmoid(z))
    loss = multitask_loss(
        logits, torch.tensor([0]), attr_logits, torch.tensor([[1.0, 1.0]]), attribute_weight=0.5
    )
    assert loss.item() == pytest.approx(ce + 0.5 * bce, rel=1e-6)
    assert multitask_loss(logits, torch.tensor([0])).item() == pytest.approx(ce, rel=1e-6)


# accuracy ----------------------------------------------------------------------------------


def test_training_reaches_90_percent_on_a_quick_benchmark() -> None:
    # 500 images of 48 px, two classes (~3 s on one core). At 32 px the beak, which tells the
    # two classes apart, is 2-3 pixels long and the same budget reaches only 86-91%.
    data = generate(
        SynthConfig(
            n=500,
            size=48,
            seed=0,
            num_classes=2,
            rotation=0.0,
            noise=0.0,
            split_fractions=(0.7, 0.3, 0.0),
        )
    )
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=2)
    result = train_member(model, data, epochs=5, lr=1e-2, batch_size=16, seed=0)
    assert result.val_accuracy is not None and result.val_accuracy > 0.9, result


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"epochs": 1.5}, TypeError, "epochs must be an int"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"attribute_weight": float("inf")}, ValueError, "attribute_weight must be >= 0"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be >= 0"),
        ({"weight_decay": True}, TypeError, "weight_decay must be a number"),
    ],
)
def test_fit_settings_are_checked(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FitSettings(**kwargs)


def test_weight_decay_reaches_the_optimiser(tiny_dataset: ImageDataset) -> None:
    trained = []
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        model = create_model("small-cnn", num_classes=3)
        train_member(model, tiny_dataset, epochs=1, batch_size=16, seed=0, weight_decay=decay)
        trained.append(model.head.weight.detach().clone())
    # same data, order and initialisation: only the decay differs, and it shrinks the weights
    assert not torch.equal(trained[0], trained[1])
    assert trained[1].norm() < trained[0].norm()


def test_train_member_checks_the_model_and_split(tiny_dataset: ImageDataset) -> None:
    with pytest.raises(TypeError, match="must be a ConciliumNet"):
        train_member(torch.nn.Linear(2, 2), tiny_dataset)  # type: ignore[arg-type]
    model = create_model("small-cnn", num_classes=3)
    with pytest.raises(ValueError, match="num_attributes=13"):
        train_member(model, tiny_dataset, attributes=True)
    no_train = tiny_dataset.subset("val")
    with pytest.raises(ValueError, match="the train split has 0 samples"):
        train_member(model, no_train)


@pytest.mark.parametrize("n", [64, 200, 400])
def test_short_schedules_train_without_scheduler_errors(n):
    """A few optimiser steps (n // batch_size * epochs < 8) use a constant rate, not OneCycleLR."""
    ds = generate(SynthConfig(n=n, size=32, num_classes=2, seed=1))
    model = create_model("small-cnn", num_classes=2)
    result = train_member(model, ds, epochs=1, batch_size=64, seed=0)
    assert math.isfinite(result.final_loss)
