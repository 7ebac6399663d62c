"""``RUN/run.json``: what a run explained, so that later stages see exactly the same data.

The explain job writes it; every later job opens the run with :meth:`concilium.store.Run.open`,
which reads this record to rebuild the explained images (in store row order) and the members.

Example:
    >>> info = RunInfo(dataset={"kind": "folder", "path": "/data/birds"},
    ...                dataset_fingerprint="0123abcd", split="test", sample_ids=["a", "b"],
    ...                models=["/models"], member_ids=["m0"], target="label")
    >>> info.n
    2
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

import concilium
from concilium._util import atomic_write_text, read_record
from concilium.data.dataset import ImageDataset
from concilium.data.specs import DatasetSpec
from concilium.vocabulary import SPLITS, Split

RUN_FILE = "run.json"


class RunInfo(BaseModel):
    """The record of a run, saved as ``RUN/run.json``.

    Attributes:
        dataset: how to rebuild the dataset.
        dataset_fingerprint: :meth:`ImageDataset.fingerprint` of the whole dataset.
        split: the split explained (``"all"``: every sample).
        limit: at most this many samples of the split were explained (the first ones, in
            dataset order); ``None``: all.
        sample_ids: the explained sample ids, in store row order.
        models: the member sources, in order (:mod:`concilium.models.sources`: a members
            folder, ``hf:DIR``, ``timm:NAME@WEIGHTS``, ...; paths absolute). Records written
            before sources existed hold ``models_dir``, read as ``models = [models_dir]``.
        member_ids: the explained members, in order.
        member_fingerprints: :func:`concilium._util.state_fingerprint` of each member's weights.
        methods: the method names explained so far.
        device: the device used.
        target: the target spec (``label``, ``pred``, ``<int>``, ``attr:<name>``,
            ``contrast:<t>``).
        seed: the seed of stochastic methods.
        concilium_version: the version that wrote the record.
        created: when the run was first recorded (UTC, ISO 8601).
    """

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetSpec
    dataset_fingerprint: str
    split: Split
    limit: int | None = Field(default=None, ge=1)
    sample_ids: list[str]
    models: list[str] = Field(min_length=1)
    member_ids: list[str]
    member_fingerprints: dict[str, str] = Field(default_factory=dict)
    methods: list[str] = Field(default_factory=list)
    device: str = "cpu"
    target: str = "label"
    seed: int = 0
    concilium_version: str = concilium.__version__
    created: str = Field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )

    @model_validator(mode="before")
    @classmethod
    def _models_dir(cls, values: Any) -> Any:
        if isinstance(values, dict) and "models_dir" in values:
            values = dict(values)
            folder = values.pop("models_dir")
            if "models" in values and values["models"] != [folder]:
                raise ValueError("give models (the member sources) or the older models_dir, "
                                 "not both")
            values["models"] = [folder]
        return values

    @property
    def models_dir(self) -> str:
        """The members folder of a run whose only source is one folder (older runs)."""
        return self.models[0]

    @property
    def n(self) -> int:
        """Number of explained samples."""
        return len(self.sample_ids)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        """Read ``run_dir/run.json``.

        Raises:
            FileNotFoundError: no record (run ``concilium explain ... --out RUN`` first).
            ValueError: the file is not a valid record.
        """
        return read_record(
            Path(run_dir) / RUN_FILE,
            cls,
            what="run record",
            if_missing=f"; run `concilium explain DATA --models MODELS --out {run_dir}` first",
        )

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/run.json`` atomically (creating ``run_dir``); returns the path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / RUN_FILE
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")
        return path

    def merged_with(self, new: RunInfo) -> RunInfo:
        """This record extended by a later call on the same run (more members or methods).

        Raises:
            ValueError: if ``new`` explains other data, another split/limit/target/seed or
                other member sources; the message names the differences (use a new ``--out``).
        """
        fields = ("dataset_fingerprint", "split", "limit", "sample_ids", "models", "target",
                  "seed")
        diff = [f for f in fields if getattr(self, f) != getattr(new, f)]
        if diff:
            shown = "; ".join(
                f"{f}: {_short(getattr(self, f))} -> {_short(getattr(new, f))}" for f in diff
            )
            raise ValueError(
                f"this run directory was made with other settings ({shown}); use a new --out "
                "directory for a different run"
            )
        changed = [
            m
            for m in set(self.member_fingerprints) & set(new.member_fingerprints)
            if self.member_fingerprints[m] != new.member_fingerprints[m]
        ]
        if changed:
            raise ValueError(
                f"members {sorted(changed)} have other weights than when this run was explained "
                "(retrained?); use a new --out directory"
            )
        return self.model_copy(
            update={
                "member_ids": _union(self.member_ids, new.member_ids),
                "member_fingerprints": {**self.member_fingerprints, **new.member_fingerprints},
                "methods": _union(self.methods, new.methods),
                "device": new.device,
            }
        )



def _short(value: object) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} items: {', '.join(map(str, value[:3]))}, ...]"
    return repr(value)


def _union(first: list[str], second: list[str]) -> list[str]:
    return first + [x for x in second if x not in first]


def select_split(dataset: ImageDataset, split: Split, limit: int | None) -> ImageDataset:
    """The samples a run explains: the split (``"all"``: every sample), in dataset order, cut to
    the first ``limit``.

    Raises:
        ValueError: unknown split, a bad limit, or an empty selection (names the split sizes).
    """
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join((*SPLITS, 'all'))}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None; got {limit!r}")
    rows = [i for i, s in enumerate(dataset.splits) if split == "all" or s == split]
    if not rows:
        sizes = ", ".join(f"{s}: {dataset.splits.count(s)}" for s in SPLITS)
        raise ValueError(f"split {split!r} is empty ({sizes}); choose another --split")
    return dataset.subset(rows[:limit] if limit is not None else rows)

