"""Fixtures of the metric tests (helpers live in metric_helpers.py)."""

from __future__ import annotations

import pytest
from metric_helpers import make_batch


@pytest.fixture
def batch():
    return make_batch()
