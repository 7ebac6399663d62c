"""Names shared by every layer, spelled once: splits, metric families, explanation sources.

Example:
    >>> is_member("m3"), is_member("ens-avg")
    (True, False)
    >>> member_id(2)
    'm2'
"""

from __future__ import annotations

import re
from typing import Literal, get_args

SplitName = Literal["train", "val", "test"]
"""A split a sample belongs to."""
Split = Literal["train", "val", "test", "all"]
"""A split to select (``"all"``: every sample)."""
SPLITS: tuple[str, ...] = get_args(SplitName)

Family = Literal[
    "localisation", "faithfulness", "robustness", "complexity", "randomisation", "axiomatic"
]
FAMILIES: tuple[str, ...] = get_args(Family)
"""The metric families (Quantus's categories), in report order."""

MEMBER_ID = re.compile(r"^m(\d+)$")
"""Ensemble members are ``m0, m1, ...``; every other source is an ensemble of them."""
EXP_AVG = "exp-avg"
"""The pseudo-source of the mean of the members' scores (the paper's Exp-Avg)."""
MEMBERS = "members"
"""The pseudo-source of the members' scores, one row per member (tables and report)."""
IN_SAMPLE_MARK = " †in-sample"
"""Appended to a source or explanation in the tables when its scores include rows its
ensembler was fitted on (the metrics table's ``in_sample`` column)."""


def is_member(source: str) -> bool:
    """Whether ``source`` names one ensemble member (``m0``, ``m1``, ...)."""
    return bool(MEMBER_ID.match(source))


LOGIT_SUFFIX = ":logit"
"""Suffix of a source whose maps are signed logits (the CNN ensembler's ``cnn:logit``)."""


def is_logit_source(source: str) -> bool:
    """Whether ``source`` holds signed logit maps (not relevance; the bias audit skips them)."""
    return source.endswith(LOGIT_SUFFIX)


def member_id(index: int) -> str:
    """The id of member number ``index``."""
    if index < 0:
        raise ValueError(f"a member index is >= 0; got {index}")
    return f"m{index}"

Reduction = Literal["sum", "abs_sum", "l2", "max_abs"]
"""How a ``(C, H, W)`` attribution becomes an ``(H, W)`` map."""
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
