"""The explanation store: ``RUN/explanations.zarr``, one resumable entry per
``(source, method, params_hash)``, plus a small cache of named arrays.

Layout inside the zarr v3 group::

    entries/<source>/<method>/<params_hash>/maps   (N, H, W) float32|float16, chunks (c, H, W)
    entries/<source>/<method>/<params_hash>/done   (ceil(N / c),) uint64 checksum marks, one chunk
    cache/<name>/<key_hash>/data                   any shape; group attr "complete" set last

Sources and method names are percent-encoded in node names (``ens-avg:head`` ->
``ens-avg%3Ahead``) so every name is a portable file name; the true names live in the attributes.
One process writes an entry at a time (the CLI does); concurrent writers to one entry are not
supported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import zarr
from torch import Tensor
from zarr.codecs import BloscCodec

import concilium
from concilium.store.entry import MARK_DTYPE, Entry
from concilium.store.hashing import canonical_json, params_hash

STORE_NAME = "explanations.zarr"
FORMAT_VERSION = 1
IDENTITY_META = ("dataset_fingerprint", "model_fingerprint")
"""``meta`` keys that must match when an existing entry is reopened: maps computed on other data
or another model under the same member id are never silently reused."""

MAPS_CODEC = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
"""Maps are compressed with byte-shuffled zstd at level 1: 0.66x the raw size for smooth maps
(GradCAM), 0.86x for noisy ones (saliency), at about the speed of no compression; zarr's
default (plain zstd) compresses less and writes several times slower."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+\-]")


def _node_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"{what} must be a non-empty printable string; got {name!r}")
    encoded = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)
    if encoded.startswith("__") or encoded in (".", ".."):
        encoded = "%" + f"{ord(encoded[0]):02X}" + encoded[1:]
    return encoded


def library_versions() -> dict[str, str]:
    """Versions of concilium, torch, captum, numpy and zarr, for entry metadata (read from the
    installed distributions: importing captum just for its version costs seconds)."""
    try:
        captum_version = version("captum")
    except PackageNotFoundError:
        captum_version = "not installed"
    return {
        "concilium": concilium.__version__,
        "torch": torch.__version__,
        "captum": captum_version,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
    }


class ExplanationStore:
    """The chunked, resumable store of explanation maps of one run.

    Args:
        run_dir: the run directory; created if needed. The store lives in
            ``run_dir/explanations.zarr``.
        mode: ``"a"`` (read and write, default) or ``"r"`` (read only; the store must exist).

    Example:
        >>> import tempfile
        >>> store = ExplanationStore(tempfile.mkdtemp())
        >>> entry = store.entry("m0", "saliency", {"reduction": "sum"}, ["a", "b", "c"],
        ...                     shape=(4, 4), chunk_size=2)
        >>> entry.missing_chunks()
        [(0, 2), (2, 3)]
        >>> entry.write(0, torch.ones(3, 4, 4))
        >>> entry.complete, tuple(entry.read([2]).shape)
        (True, (1, 4, 4))
    """

    def __init__(self, run_dir: str | Path, *, mode: Literal["a", "r"] = "a") -> None:
        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' (read/write) or 'r' (read only); got {mode!r}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if mode == "r" and not self.path.is_dir():
            raise FileNotFoundError(
                f"no explanation store at {self.path}; run `concilium explain ... --out "
                f"{self.run_dir}` first"
            )
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"run directory {self.run_dir} is a file; pass a directory")
        if mode == "a":
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self._root = zarr.open_group(self.path, mode=mode)
        if mode == "a" and "format" not in self._root.attrs:
            self._root.update_attributes({"format": FORMAT_VERSION, "kind": "concilium explanations"})
        found = self._root.attrs.get("format")
        if found != FORMAT_VERSION:
            raise ValueError(
                f"{self.path} has store format {found!r}; this concilium reads format "
                f"{FORMAT_VERSION}; use a new run directory"
            )

    def __repr__(self) -> str:
        return f"ExplanationStore({str(self.run_dir)!r})"

    # -- entries ------------------------------------------------------------------------------

    def _entry_path(self, source: str, method: str, hash_: str) -> str:
        return f"entries/{_node_name(source, 'source')}/{_node_name(method, 'method')}/{hash_}"

    def entry(
        self,
        source: str,
        method: str,
        params: Mapping[str, Any],
        sample_ids: Sequence[str],
        *,
        shape: tuple[int, int],
        dtype: Literal["float32", "float16"] = "float32",
        chunk_size: int = 64,
        meta: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Get the entry of ``(source, method, hash(params))``, creating it if it does not exist.

        Args:
            source: member id (``"m0"``) or ensemble name (``"ens-avg"``).
            method: explanation method name.
            params: the fully resolved parameters (method params, target spec, reduction,
                baseline, ...), plain JSON values; their hash identifies the entry.
            sample_ids: the ``N`` unique sample ids, in row order.
            shape: ``(H, W)`` of one map.
            dtype: storage type, ``"float32"`` (default) or ``"float16"`` (half the disk;
                values beyond 65504 are refused at write time).
            chunk_size: rows per chunk (default 64); used only when the entry is created.
            meta: extra attributes (dataset fingerprint, model card, seed, ...). Library versions
                and the creation time are added. Keys in :data:`IDENTITY_META` must match an
                existing entry's.

        Returns:
            The :class:`Entry`; check :meth:`Entry.missing_chunks` for the work left.

        Raises:
            ValueError: if an existing entry has other sample ids, shape, dtype or identity
                metadata (use a new run directory), or on bad arguments.
            TypeError: if ``params`` or ``meta`` hold values without a JSON form.
        """
        if self.mode == "r":
            raise ValueError("this store was opened read-only (mode='r'); open it with mode='a'")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16'; got {dtype!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
        if (
            not isinstance(shape, tuple | list)
            or len(shape) != 2
            or not all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise ValueError(f"shape must be (H, W) of positive ints; got {shape!r}")
        if isinstance(sample_ids, str) or not all(isinstance(s, str) for s in sample_ids):
            raise TypeError("sample_ids must be a sequence of str")
        ids = list(sample_ids)
        if not ids:
            raise ValueError("sample_ids is empty; an entry needs at least one sample")
        if len(set(ids)) != len(ids):
            raise ValueError("sample_ids must be unique")
        resolved = _json_roundtrip(params, "params")
        meta_plain = _json_roundtrip(meta or {}, "meta")
        hash_ = params_hash(resolved)
        path = self._entry_path(source, method, hash_)
        h, w = int(shape[0]), int(shape[1])
        if path in self._root and "params_hash" in self._root[path].attrs:
            group = self._root[path]
            _check_same(group.attrs, ids, (len(ids), h, w), dtype, meta_plain)
        else:  # new, or a creation killed before its attributes were written
            attrs = {
                "source": source,
                "method": method,
                "params": resolved,
                "params_hash": hash_,
                "sample_ids": ids,
                "shape": [len(ids), h, w],
                "dtype": dtype,
                "chunk_size": chunk_size,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "versions": library_versions(),
                "meta": meta_plain,
            }
            group = self._root.require_group(path)
            group.update_attributes(attrs)  # one write of zarr.json
        chunk = int(group.attrs["chunk_size"])
        n = len(ids)
        # Arrays are created after the attributes; a kill in between is repaired here.
        if "maps" not in group:
            group.create_array(
                "maps", shape=(n, h, w), chunks=(min(chunk, n), h, w), dtype=dtype,
                fill_value=0, compressors=MAPS_CODEC,
            )
        if "done" not in group:  # one small file, rewritten atomically per finished chunk
            n_chunks = -(-n // chunk)
            group.create_array(
                "done", shape=(n_chunks,), chunks=(n_chunks,), dtype=MARK_DTYPE, fill_value=0
            )
        return Entry(group)

    def lookup(self, source: str, method: str, params: Mapping[str, Any]) -> Entry | None:
        """The existing entry of ``(source, method, hash(params))``, or ``None``; creates nothing."""
        path = self._entry_path(source, method, params_hash(_json_roundtrip(params, "params")))
        if path in self._root:
            group = self._root[path]
            if "params_hash" in group.attrs and "maps" in group and "done" in group:
                return Entry(group)
        return None

    def _entry_groups(self) -> list[zarr.Group]:
        if "entries" not in self._root:
            return []
        out = []
        for _, by_source in sorted(self._root["entries"].groups()):
            for _, by_method in sorted(by_source.groups()):
                for _, group in sorted(by_method.groups()):
                    if "params_hash" in group.attrs and "maps" in group and "done" in group:
                        out.append(group)
        return out

    def entries(self) -> pd.DataFrame:
        """One row per entry.

        Returns:
            Columns ``source, method, params_hash, params`` (canonical JSON text), ``n``,
            ``complete``, ``chunks_done``, ``n_chunks``, ``dtype``, ``created``; sorted by
            source, method, params_hash.
        """
        rows = []
        for group in self._entry_groups():
            e = Entry(group)
            done = e.done_chunks()
            rows.append(
                {
                    "source": e.source,
                    "method": e.method,
                    "params_hash": e.params_hash,
                    "params": canonical_json(e.params),
                    "n": e.n,
                    "complete": bool(done.all()),
                    "chunks_done": int(done.sum()),
                    "n_chunks": e.n_chunks,
                    "dtype": e.dtype,
                    "created": e.created,
                }
            )
        columns = ["source", "method", "params_hash", "params", "n", "complete", "chunks_done",
                   "n_chunks", "dtype", "created"]
        table = pd.DataFrame(rows, columns=columns)
        return table.sort_values(["source", "method", "params_hash"], ignore_index=True)

    def get(self, source: str, method: str, params_hash: str | None = None) -> Entry:
        """The unique existing entry of ``source`` and ``method`` (and hash, or hash prefix).

        Raises:
            ValueError: if nothing or more than one entry matches; the message lists the
                matching hashes with their parameters, or the stored sources and methods.
        """
        table = self.entries()
        sel = table[(table.source == source) & (table.method == method)]
        if params_hash is not None:
            sel = sel[sel.params_hash.str.startswith(params_hash)]
        if len(sel) == 1:
            row = sel.iloc[0]
            return Entry(self._root[self._entry_path(row.source, row.method, row.params_hash)])
        if len(sel) == 0:
            pairs = sorted({f"{s}/{m}" for s, m in zip(table.source, table.method, strict=True)})
            what = f"{source}/{method}" + (f"/{params_hash}" if params_hash else "")
            raise ValueError(
                f"no stored entry {what}; stored: {', '.join(pairs) or 'nothing yet'}"
            )
        options = "; ".join(f"{h}: {p}" for h, p in zip(sel.params_hash, sel.params, strict=True))
        raise ValueError(
            f"{len(sel)} entries match {source}/{method}; pass params_hash= one of: {options}"
        )

    # -- cache of named arrays ----------------------------------------------------------------

    def cache_array(
        self, name: str, key: Mapping[str, Any], compute: Callable[[], Tensor]
    ) -> Tensor:
        """Compute an array once and keep it in the store (e.g. GANMEX baselines).

        The array is stored under ``cache/<name>/<hash(key)>``; the ``complete`` mark is written
        after the data, so an interrupted write is recomputed next time.

        Args:
            name: what the array is (``"ganmex_baselines"``).
            key: plain JSON values identifying it (generator fingerprint, dataset fingerprint,
                targets spec, ...).
            compute: called with no arguments when the array is not stored yet; returns a tensor.

        Returns:
            The tensor (CPU, the dtype ``compute`` returned), read back from the store.

        Raises:
            TypeError: if ``compute`` does not return a tensor.
        """
        plain = _json_roundtrip(key, "key")
        path = f"cache/{_node_name(name, 'name')}/{params_hash(plain)}"
        if path in self._root and self._root[path].attrs.get("complete"):
            return torch.from_numpy(np.asarray(self._root[f"{path}/data"][...]))
        if self.mode == "r":
            raise ValueError(f"cache {name!r} is not stored and the store is read-only")
        value = compute()
        if not isinstance(value, Tensor):
            raise TypeError(f"compute for cache {name!r} must return a Tensor; got {type(value).__name__}")
        array = value.detach().cpu().numpy()
        group = self._root.require_group(path)
        group.update_attributes({"name": name, "key": plain, "complete": False})
        data = group.create_array(
            "data", shape=array.shape, dtype=array.dtype, fill_value=0, overwrite=True
        )
        data[...] = array
        group.update_attributes({"complete": True})
        return torch.from_numpy(np.asarray(data[...]))


def _json_roundtrip(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(canonical_json(value))
    except TypeError as err:
        raise TypeError(f"{what}: {err}") from None


def _check_same(
    attrs: Mapping[str, Any],
    ids: list[str],
    shape: tuple[int, int, int],
    dtype: str,
    meta: Mapping[str, Any],
) -> None:
    where = f"entry {attrs['source']}/{attrs['method']}/{attrs['params_hash']}"
    fix = "write to a new run directory (--out) or delete that entry"
    if list(attrs["sample_ids"]) != ids:
        raise ValueError(f"{where} holds other samples (or another order) than requested; {fix}")
    if tuple(attrs["shape"]) != shape:
        raise ValueError(f"{where} has shape {tuple(attrs['shape'])}, not {shape}; {fix}")
    if attrs["dtype"] != dtype:
        raise ValueError(
            f"{where} is stored as {attrs['dtype']}, not {dtype}; ask for {attrs['dtype']} "
            f"(--float16 on or off as before) or {fix}"
        )
    stored = attrs.get("meta", {})
    for key in IDENTITY_META:
        if key in stored and key in meta and stored[key] != meta[key]:
            raise ValueError(
                f"{where} was computed with {key} {stored[key]!r}, now {meta[key]!r}: the data "
                f"or model changed since; {fix}"
            )
