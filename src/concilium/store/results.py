"""The result tables of a run, ``RUN/results/<name>.parquet`` (+ ``.csv``), written atomically.

The tidy metrics table has one row per (sample, source, method, metric): columns
:data:`COLUMNS`; its statistics (mean and interval, Exp-Avg) are in
:mod:`concilium.metrics.tables`. The table is appended to
one finished group at a time, (source, method, entry, metric, params), so a killed
``concilium evaluate`` loses at most the group in flight and a rerun skips what is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from concilium._util import atomic_write
from concilium.metrics.registry import METRICS
from concilium.store.hashing import canonical_json, params_hash

RESULTS_DIR = "results"
"""Result tables live in ``RUN/results/<name>.parquet`` (and ``.csv``)."""
METRICS_TABLE = "metrics"

COLUMNS: tuple[str, ...] = (
    "sample",
    "label",
    "source",
    "method",
    "entry_hash",
    "metric",
    "category",
    "mask",
    "value",
    "params_hash",
    "params",
    "in_sample",
)
"""``in_sample`` is True where the row's map came from an ensembler trained or early-stopped on
that sample (the entry's ``fit_ids``, see :mod:`concilium.jobs.ensemble.cnn`): its score is
optimistic. Tables written before the column existed read as False."""
GROUP_KEY: tuple[str, ...] = ("source", "method", "entry_hash", "metric", "params_hash")

ATTRIBUTES_TABLE = "attributes"
"""The attribute cards (``concilium audit``): ``RUN/results/attributes.parquet`` with
:data:`ATTRIBUTE_COLUMNS`, and their maps in ``attributes.npz``: ``sample_ids (K,)``,
``attribute_names (A,)``, ``class_maps (K, H, W)``, ``attribute_maps (K, A, H, W)``."""

ATTRIBUTE_COLUMNS: tuple[str, ...] = (
    "sample",
    "source",
    "method",
    "predicted",
    "class_probability",
    "attribute",
    "probability",
    "part",
    "relevance_mass",
    "class_relevance_mass",
)
"""One row per (sample, attribute): the member (``source``) and ``method`` that made the maps,
the predicted class name and its softmax probability, the attribute's sigmoid probability, its
part mask (``None`` when the dataset has no mask for it), and the relevance mass of the
attribute's map and of the class map on that part mask (NaN without a part)."""


def metric_params_hash(metric: str, params: Mapping[str, Any], *, mask: str) -> tuple[str, str]:
    """``(hash, canonical json)`` of a metric's resolved parameters (defaults filled in) and the
    mask set, so that a default made explicit hashes the same."""
    spec = METRICS.get(metric)
    resolved = {**spec.params, **dict(params)}
    if spec.needs_mask:
        resolved["__mask__"] = mask
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
    return params_hash(plain), canonical_json(plain)


class ResultsTable:
    """The metrics table of a run directory.

    Args:
        run_dir: the run; the table lives in ``run_dir/results/metrics.parquet`` (and ``.csv``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / RESULTS_DIR
        self.parquet = self.dir / "metrics.parquet"
        self.csv = self.dir / "metrics.csv"

    def load(self) -> pd.DataFrame:
        """The table (empty with :data:`COLUMNS` if nothing was written yet)."""
        if not self.parquet.exists():
            return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS})
        table = pd.read_parquet(self.parquet)
        if "in_sample" not in table.columns:  # written before the column existed
            table["in_sample"] = False
        return table

    def done_groups(self) -> set[tuple[str, ...]]:
        """The finished ``(source, method, entry_hash, metric, params_hash)`` groups."""
        table = self.load()
        return {
            tuple(str(v) for v in row) for row in table[list(GROUP_KEY)].drop_duplicates().values
        }

    def append(self, rows: pd.DataFrame) -> None:
        """Append finished rows; writes the parquet and the csv (temp file + rename each)."""
        missing = [c for c in COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"rows lack the columns {missing}")
        self.dir.mkdir(parents=True, exist_ok=True)
        table = pd.concat([self.load(), rows[list(COLUMNS)]], ignore_index=True)
        write_table(self.dir.parent, METRICS_TABLE, table)


def _dtype(column: str) -> str:
    return {"label": "int64", "value": "float64", "in_sample": "bool"}.get(column, "object")


def group_rows(
    *,
    samples: Iterable[str],
    labels: Iterable[int],
    source: str,
    method: str,
    entry_hash: str,
    metric: str,
    mask: str,
    values: Iterable[float],
    params_hash: str,
    params: str,
    in_sample: Iterable[bool] | None = None,
) -> pd.DataFrame:
    """The rows of one finished group, in :data:`COLUMNS` order; ``in_sample`` per sample
    (default: all False)."""
    samples = list(samples)
    values = np.asarray(list(values), dtype=np.float64)
    if len(samples) != len(values):
        raise ValueError(f"{len(samples)} samples but {len(values)} values")
    n = len(samples)
    flags = np.zeros(n, bool) if in_sample is None else np.asarray(list(in_sample), bool)
    if len(flags) != n:
        raise ValueError(f"{n} samples but {len(flags)} in_sample flags")
    return pd.DataFrame(
        {
            "sample": samples,
            "label": np.asarray(list(labels), dtype=np.int64),
            "source": [source] * n,
            "method": [method] * n,
            "entry_hash": [entry_hash] * n,
            "metric": [metric] * n,
            "category": [METRICS.get(metric).category] * n,
            "mask": [mask if METRICS.get(metric).needs_mask else ""] * n,
            "value": values,
            "params_hash": [params_hash] * n,
            "params": [params] * n,
            "in_sample": flags,
        }
    )



def write_table(run_dir: str | Path, name: str, table: pd.DataFrame) -> Path:
    """Write ``RUN/results/<name>.parquet`` and ``.csv``, each atomically; returns the parquet
    path."""
    out = Path(run_dir) / RESULTS_DIR
    path = atomic_write(out / f"{name}.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write(out / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False))
    return path


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame | None:
    """``RUN/results/<name>.parquet``, or ``None`` when it was not written."""
    path = Path(run_dir) / RESULTS_DIR / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def write_arrays(run_dir: str | Path, name: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``RUN/results/<name>.npz`` (uncompressed, atomically): arrays that go with the table
    of the same name (e.g. the attribute cards' maps); returns its path."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})

    return atomic_write(Path(run_dir) / RESULTS_DIR / f"{name}.npz", write)


def read_arrays(run_dir: str | Path, name: str) -> dict[str, np.ndarray] | None:
    """``RUN/results/<name>.npz`` as ``key -> array``, or ``None`` when it was not written."""
    path = Path(run_dir) / RESULTS_DIR / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``RUN/results/metrics.parquet``.

    Raises:
        FileNotFoundError: not evaluated yet (run ``concilium evaluate RUN`` first).
    """
    table = read_table(run_dir, METRICS_TABLE)
    if table is None:
        path = Path(run_dir) / RESULTS_DIR / f"{METRICS_TABLE}.parquet"
        raise FileNotFoundError(f"{path} not found; run `concilium evaluate {run_dir}` first")
    return table
