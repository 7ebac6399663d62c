"""Small stand-ins shared by the GANMEX tests: a tiny classifier and a trained tiny generator."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from concilium.ganmex import GanmexOptions, train_ganmex

SIZE = 16
CLASSES = ["red", "green", "blue"]


class TinyClassifier(nn.Module):
    """Conv + global pool + linear, with a ``features`` method like ``ConciliumNet``."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def colour_images(n: int, *, seed: int = 0, size: int = SIZE) -> tuple[Tensor, Tensor]:
    """``n`` noisy images whose dominant colour channel is the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = 0.2 * torch.rand(n, 3, size, size, generator=g)
    images[torch.arange(n), labels] += 0.6
    return images, labels


TINY = dict(batch_size=4, base_channels=4, num_residual=1, critic_channels=4, val_size=6)


@pytest.fixture
def classifier() -> TinyClassifier:
    return TinyClassifier()


@pytest.fixture(scope="module")
def trained_gen(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A generator directory trained for 2 tiny steps, with the classifier card it was trained
    against."""
    out = tmp_path_factory.mktemp("gen")
    images, labels = colour_images(12)
    card = {"member_id": "m0", "class_names": CLASSES, "image_size": [SIZE, SIZE]}
    from concilium.ganmex import card_hash

    train_ganmex(TinyClassifier(), images, labels, out_dir=out, class_names=CLASSES,
                 options=GanmexOptions(steps=2, checkpoint_every=2, **TINY),
                 classifier_card_hash=card_hash(card))
    return out, card
