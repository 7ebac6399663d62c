"""The machinery of the run-level ensemblers: the options every kind takes, the field types
several kinds share (their help text written once), the registry :data:`ENSEMBLERS` of
:class:`EnsemblerSpec`, the helpers the kinds share, and :func:`run_ensemble`.

A kind is one module of this package: an options model deriving from
:class:`EnsembleOptionsBase` and a run function registered with :func:`ensembler`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from concilium._options import validate_options
from concilium._registry import Registry
from concilium.ensemble.normalise import NormalisationName
from concilium.ensemble.reduce import ReducerName
from concilium.store import Entry, Run, available_methods, read_maps, write_source, write_table
from concilium.store.lock import holds_run_lock


class EnsembleOptionsBase(BaseModel):
    """Options every ensembler takes; each kind's model adds its own (``extra="forbid"``: an
    option of another kind is an error naming the valid ones)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] | None = Field(
        None, description="methods to ensemble (default: every method all the inputs have)")
    source: str | None = Field(
        None, description="output source name (default: the kind; e.g. ens-avg:head to keep "
                          "several)")
    device: str = Field("cpu", description="where models run: cpu, cuda or cuda:<k>")


Members = Annotated[list[str] | None, Field(
    description="member sources to combine (default: the run's members)")]
FromSource = Annotated[str | None, Field(
    description="source whose methods are combined (default: the first member; ens-avg for the "
                "members' averaged maps)")]
Normalisation = Annotated[NormalisationName, Field(
    description="per-image normalisation applied to every map first")]
Reducer = Annotated[ReducerName, Field(description="how the normalised maps are combined")]
Absolute = Annotated[bool, Field(description="use |map| (drop the sign) before combining")]
Trim = Annotated[float, Field(ge=0, lt=0.5,
                              description="fraction cut from each end by the trimmed_mean reducer")]


@dataclass
class EnsembleResult:
    """What a run-level ensembler wrote: store entries and result tables (name -> table)."""

    entries: list[Entry] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsemblerSpec:
    """A registered ensembler.

    Attributes:
        options: the kind's options model.
        run: ``run(run, options) -> EnsembleResult``; writes the kind's sources into the store.
        needs_models: the run is opened with its members' models loaded.
    """

    options: type[EnsembleOptionsBase]
    run: Callable[[Run, Any], EnsembleResult]
    needs_models: bool = False

    @property
    def summary(self) -> str:
        """The first paragraph of the run function's docstring, on one line."""
        return " ".join(inspect.cleandoc(self.run.__doc__ or "").split("\n\n")[0].split())


ENSEMBLERS: Registry[EnsemblerSpec] = Registry("ensembler")


def ensembler(name: str, *, options: type[EnsembleOptionsBase], needs_models: bool = False
              ) -> Callable[[Callable[[Run, Any], EnsembleResult]],
                            Callable[[Run, Any], EnsembleResult]]:
    """Register a run function as the ensembler ``name`` with its options model (a decorator).

    Args:
        name: the kind's name (``concilium ensemble RUN --kind NAME``).
        options: the kind's options model, a subclass of :class:`EnsembleOptionsBase`.
        needs_models: open the run with the members' models loaded.

    Raises:
        TypeError: ``options`` is not such a subclass.
        ValueError: ``name`` is already registered.
    """
    if not (isinstance(options, type) and issubclass(options, EnsembleOptionsBase)):
        raise TypeError(f"ensembler {name!r}: options must be a subclass of EnsembleOptionsBase")

    def decorator(fn: Callable[[Run, Any], EnsembleResult]) -> Callable[[Run, Any], EnsembleResult]:
        ENSEMBLERS.add(name, EnsemblerSpec(options=options, run=fn, needs_models=needs_models))
        return fn

    return decorator


def ensemble_options(kind: str, options: EnsembleOptionsBase | Mapping[str, Any] | None = None
                     ) -> EnsembleOptionsBase:
    """``kind``'s options model filled from ``options`` (a mapping, the model itself, or
    ``None`` for the defaults).

    Raises:
        ValueError: unknown kind, or an option ``kind`` does not take (naming its options).
        TypeError: ``options`` is another kind's model.
    """
    spec = ENSEMBLERS.get(kind)
    return validate_options(spec.options, options, what=f"ensembler {kind!r}")


@holds_run_lock
def run_ensemble(run_dir: str | Path, kind: str,
                 options: EnsembleOptionsBase | Mapping[str, Any] | None = None) -> EnsembleResult:
    """Run one ensembler on a run: write its sources into the store and its tables under
    ``RUN/results/``.

    Args:
        run_dir: a run made by ``concilium explain``.
        kind: a name from :data:`ENSEMBLERS`.
        options: the kind's options model, or a mapping of its fields (default: its defaults).

    Raises:
        ValueError: unknown kind (lists the valid ones), an option the kind does not take
            (lists its options), or any input problem of the kind.
    """
    spec = ENSEMBLERS.get(kind)
    opts = ensemble_options(kind, options)
    run = Run.open(run_dir, load_models=spec.needs_models, device=opts.device)
    result = spec.run(run, opts)
    for name, table in result.tables.items():
        write_table(run_dir, name, table)
    return result


# ----------------------------------------------------------------------------- shared helpers


def member_sources(run: Run, members: list[str] | None) -> list[str]:
    """The member sources to combine (default: all), each checked to be in the run."""
    members = members or run.member_ids
    unknown = [m for m in members if m not in run.member_ids]
    if unknown:
        raise ValueError(f"members {unknown} are not in this run; valid: {run.member_ids}")
    return members


def complete_methods(run: Run, sources: list[str], methods: list[str] | None) -> list[str]:
    """``methods`` (default: every method all ``sources`` have), each checked to be complete
    for every source."""
    have = available_methods(run.store, sources)
    if methods is None:
        if not have:
            raise ValueError(f"no method has complete entries for all of {sources}; run "
                             "`concilium explain` first")
        return have
    missing = [m for m in methods if m not in have]
    if missing:
        raise ValueError(f"methods {missing} have no complete entry for every one of {sources}; "
                         f"available: {have}")
    return list(methods)


def source_maps(run: Run, from_source: str | None, methods: list[str] | None
                ) -> tuple[str, list[str], dict[str, torch.Tensor], dict[str, str]]:
    """The maps of a method ensemble's input: ``(source, methods, method -> maps,
    method -> params hash)``; the source defaults to the first member."""
    src = from_source or run.member_ids[0]
    names = complete_methods(run, [src], methods)
    maps, hashes = {}, {}
    for m in names:
        maps[m], entry = read_maps(run.store, src, m, run.data.ids)
        hashes[m] = entry.params_hash
    return src, names, maps, hashes


def write_entry(
    run: Run, kind: str, method: str, maps: torch.Tensor, *, source: str | None,
    params: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
) -> Entry:
    """Write the maps ``(N, H, W)`` of ensembler ``kind`` as the entry ``(source, method)`` of the
    run's store, one map per sample of the run.

    Args:
        run: the run.
        kind: the ensembler (recorded first in the params and in the metadata).
        method: the entry's method (a method, or ``"+"``-joined methods).
        maps: the ensembled maps.
        source: the output source (default: ``kind``).
        params: what made the maps (hashed into the entry).
        meta: metadata added to the dataset fingerprint and the kind.
    """
    return write_source(run.store, source or kind, method, maps, sample_ids=run.data.ids,
                        params={"kind": kind, **params},
                        meta={"dataset_fingerprint": run.fingerprint, "ensemble_kind": kind,
                              **(meta or {})})
