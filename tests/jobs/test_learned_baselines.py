"""Checks over every learned baseline kind of :data:`LEARNED_BASELINES`: the ``KIND:PATH`` spec
grammar, and refusal of a directory that holds no such baseline before any compute. A new kind is
checked here without editing this file."""

from __future__ import annotations

import pytest
import torch

from concilium.jobs.baselines import (
    LEARNED_BASELINES,
    check_baseline_spec,
    member_baselines,
    split_spec,
)

KINDS = LEARNED_BASELINES.names()


@pytest.mark.parametrize("kind", KINDS)
def test_spec_grammar(kind):
    assert split_spec(f"{kind}:some/dir") == (kind, "some/dir")
    assert split_spec("blur:sigma=4") == (None, "blur:sigma=4")  # a registry spec, not learned
    placeholder = LEARNED_BASELINES.get(kind).placeholder
    assert isinstance(placeholder, str) and placeholder
    with pytest.raises(ValueError, match=f"needs a directory: {kind}:{placeholder}"):
        split_spec(f"{kind}:")


@pytest.mark.parametrize("kind", KINDS)
def test_a_directory_without_the_baseline_is_refused_before_any_compute(kind, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        check_baseline_spec(f"{kind}:{empty}")

    class Explodes(torch.nn.Module):
        def forward(self, x):  # never called: the check comes first
            raise AssertionError("a model was run before the baseline was checked")

    with pytest.raises(FileNotFoundError):
        member_baselines(f"{kind}:{empty}", [(Explodes(), None)], data=None)


def test_a_registry_spec_is_the_same_string_for_every_member():
    class Card:
        def __init__(self, member_id):
            self.member_id = member_id

    members = [(torch.nn.Identity(), Card("m0")), (torch.nn.Identity(), Card("m1"))]
    assert member_baselines("blur:sigma=2", members, data=None) == {"m0": "blur:sigma=2",
                                                                   "m1": "blur:sigma=2"}
    with pytest.raises(ValueError, match="unknown baseline"):
        member_baselines("no-such-baseline", members, data=None)
