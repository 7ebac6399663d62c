"""The consensus study's member accuracy is held-out accuracy (review D13)."""

from types import SimpleNamespace

import torch
from torch import nn

from concilium.data.dataset import ImageDataset
from concilium.jobs.ensemble import member_accuracy


class Memoriser(nn.Module):
    """Predicts the class written in pixel (0, 0) of channel 0: right on the images that carry
    their label there, wrong on the others."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 2).float()


def _run(splits, models=True):
    n = len(splits)
    labels = torch.tensor([i % 2 for i in range(n)])
    images = torch.zeros(n, 3, 4, 4)
    for i, s in enumerate(splits):  # training images carry their label, held-out ones the other
        images[i, 0, 0, 0] = labels[i] if s == "train" else 1 - labels[i]
    data = ImageDataset(images=images, labels=labels, masks=torch.zeros(n, 4, 4, dtype=torch.bool),
                        ids=[f"s{i}" for i in range(n)], splits=list(splits),
                        class_names=["a", "b"])
    return SimpleNamespace(data=data, models={"m0": Memoriser()} if models else {},
                           accuracies={"m0": 0.75})


def test_measured_on_the_test_rows_not_the_training_rows():
    run = _run(["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    acc, on = member_accuracy(run, ["m0"], "cpu")
    assert on == "test" and acc == {"m0": 0.0}  # 1.0 on the training rows, 0.8 on all rows


def test_val_rows_when_the_run_holds_no_test_rows():
    acc, on = member_accuracy(_run(["train"] * 6 + ["val"] * 2), ["m0"], "cpu")
    assert (acc, on) == ({"m0": 0.0}, "val")


def test_the_card_accuracy_without_held_out_rows_or_models():
    assert member_accuracy(_run(["train"] * 4), ["m0"], "cpu") == ({"m0": 0.75}, "card")
    assert member_accuracy(_run(["test"] * 4, models=False), ["m0"], "cpu") == (
        {"m0": 0.75}, "card")


def test_measured_on_the_whole_test_split_when_given_the_dataset():
    """The consensus job passes the run's whole dataset: the explained rows hold only a few
    test images (2 here), the dataset's test split all of them (8)."""
    run = _run(["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    everything = _run(["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["train"] * 6
                      + ["test"] * 6).data
    everything.images[-6:, 0, 0, 0] = everything.labels[-6:].float()  # right on the new ones
    acc, on = member_accuracy(run, ["m0"], "cpu", data=everything)
    assert on == "test" and acc == {"m0": 0.75}  # 0.0 on the run's 2 test rows
