"""Baseline specs of a run, resolved per member before any compute.

A baseline spec is either a spec of :data:`concilium.explain.BASELINES` (``zero``,
``blur:sigma=4``, ...), the same for every member, or ``KIND:PATH`` where ``KIND`` is a *learned*
baseline registered in :data:`LEARNED_BASELINES` (``ganmex:GEN``): a model trained against one
classifier, so it resolves to one provider per member, checked against that member.

Adding a learned baseline kind: one class with ``check(path)`` and ``for_members(...)``,
registered here with ``@LEARNED_BASELINES.register("kind")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from concilium._registry import Registry
from concilium.data.dataset import ImageDataset
from concilium.explain.baselines import BaselineSpec, parse_baseline
from concilium.ganmex import load_card, parse_baseline_spec
from concilium.store.store import ExplanationStore


class LearnedBaseline(Protocol):
    """A kind of learned baseline stored in a directory (``placeholder``: how the docs name
    that directory, e.g. ``GEN``)."""

    placeholder: str

    def check(self, path: Path) -> None:
        """Cheap check before loading data or models (raise with the fix)."""

    def for_members(self, path: Path, members: Sequence[tuple[nn.Module, Any]],
                    data: ImageDataset, *, device: str | torch.device,
                    store: ExplanationStore | None) -> dict[str, BaselineSpec]:
        """One checked baseline provider per member id."""


LEARNED_BASELINES: Registry[LearnedBaseline] = Registry("learned baseline")


def split_spec(baseline: str) -> tuple[str | None, str]:
    """``("ganmex", "GEN")`` for a learned baseline spec ``ganmex:GEN``; ``(None, spec)`` for a
    registry spec."""
    if not isinstance(baseline, str):
        raise TypeError(f"baseline must be a spec string; got {type(baseline).__name__}")
    kind, sep, rest = baseline.partition(":")
    if sep and kind in LEARNED_BASELINES:
        if not rest:
            placeholder = LEARNED_BASELINES.get(kind).placeholder
            raise ValueError(f"baseline spec '{kind}:' needs a directory: {kind}:{placeholder}")
        return kind, rest
    return None, baseline


def check_baseline_spec(baseline: str) -> None:
    """A cheap check of a baseline spec, before loading data or models: a registry spec must
    parse; a learned one must name its directory (its fit to each member is checked by
    :func:`member_baselines`).

    Raises:
        TypeError: not a string.
        ValueError: on an unknown baseline or parameter, or ``KIND:`` without a directory.
        FileNotFoundError: if the directory holds no such baseline.
    """
    kind, rest = split_spec(baseline)
    if kind is None:
        parse_baseline(baseline)
    else:
        LEARNED_BASELINES.get(kind).check(Path(rest))


def member_baselines(
    baseline: str,
    members: Sequence[tuple[nn.Module, Any]],
    data: ImageDataset,
    *,
    device: str | torch.device = "cpu",
    store: ExplanationStore | None = None,
) -> dict[str, BaselineSpec]:
    """The baseline of each member, resolved and checked before any compute.

    A registry spec is checked and kept as the string for every member; a learned spec becomes
    one provider per member (see the registered kind, e.g. :class:`GanmexBaselines`).

    Args:
        baseline: the baseline spec string.
        members: ``[(model, MemberCard), ...]``.
        data: the samples to explain (class names and image size are checked).
        device: where a learned baseline runs.
        store: the run's store (baseline cache); ``None`` only checks.

    Returns:
        member id -> baseline spec string or provider.
    """
    check_baseline_spec(baseline)
    kind, rest = split_spec(baseline)
    if kind is None:
        return {card.member_id: baseline for _, card in members}
    return LEARNED_BASELINES.get(kind).for_members(Path(rest), members, data, device=device,
                                                   store=store)


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


@LEARNED_BASELINES.register("ganmex")
class GanmexBaselines:
    """``ganmex:GEN``: a trained GANMEX generator (:mod:`concilium.ganmex`).

    A generator is trained against one classifier, so for several members ``GEN`` holds one
    generator per member, ``GEN/<member id>/`` (``concilium ganmex train DATA --model MODELS/m0
    --out GEN/m0``, ...); a ``GEN`` that is itself a generator directory serves every member it
    fits. Each provider is checked against its member's card, the data's classes and image size;
    with a store it caches every baseline ``G(x, t)`` there, so a re-run or a resumed run never
    regenerates one.
    """

    placeholder = "GEN"

    @staticmethod
    def check(path: Path) -> None:
        if not any((d / "card.json").is_file() for d in (path, *_subdirs(path))):
            load_card(path)  # raises FileNotFoundError with the fix

    @staticmethod
    def for_members(path: Path, members: Sequence[tuple[nn.Module, Any]], data: ImageDataset,
                    *, device: str | torch.device,
                    store: ExplanationStore | None) -> dict[str, BaselineSpec]:
        out: dict[str, BaselineSpec] = {}
        for _, card in members:
            own = path / card.member_id
            gen = own if (own / "card.json").is_file() else path
            try:
                out[card.member_id] = parse_baseline_spec(
                    f"ganmex:{gen}", classifier_card=card,
                    class_names=list(data.class_names) or None,
                    image_size=tuple(data.image_size), device=device, store=store,
                )
            except (ValueError, FileNotFoundError) as err:
                hint = (f"; for several members put one generator per member in {path}/<member id>/"
                        if len(members) > 1 and gen == path else "")
                raise type(err)(f"baseline ganmex:{path} for member {card.member_id}: "
                                f"{err}{hint}") from None
        return out
