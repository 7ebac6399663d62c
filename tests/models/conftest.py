"""Shared fixtures of the model tests: small benchmark datasets (32 px, generated in < 0.1 s)."""

from __future__ import annotations

import pytest

from concilium.data.dataset import ImageDataset
from concilium.data.synthetic import SynthConfig, generate


@pytest.fixture(scope="session")
def tiny_dataset() -> ImageDataset:
    """48 images, 32 px, 3 classes, with attributes: for plumbing tests (not accuracy)."""
    return generate(SynthConfig(n=48, size=32, seed=0, num_classes=3))
