"""One stored explanation: the maps of one source and one method configuration for every sample.

An :class:`Entry` is a zarr group holding

- ``maps``: ``(N, H, W)`` float32 or float16, chunked along samples (``chunk_size`` rows a chunk);
- ``done``: ``(n_chunks,)`` uint64 in one small file: 0 for an unfinished chunk, else the chunk's
  checksum (:func:`chunk_mark`, a CRC-32 of its stored bytes), set only *after* the chunk's maps
  are on disk. Every file is written through zarr's atomic replacement (temporary file, then
  rename), so a process killed at any point leaves every chunk either finished and marked, or
  unmarked (and rewritten on resume); a marked chunk whose bytes were damaged afterwards (disk
  fault, truncated copy) fails its checksum: :meth:`Entry.read` refuses it and
  :meth:`Entry.repair` unmarks it, so the next run recomputes that chunk and nothing else.
  Stores written before checksums (``done`` as bool) are read as before, unverified;
- attributes: ``source``, ``method``, ``params``, ``params_hash``, ``sample_ids``, ``shape``,
  ``dtype``, ``chunk_size``, ``created`` and the caller's ``meta`` (dataset fingerprint, model card,
  seed, library versions, ...).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor

from concilium._checks import check_maps
from concilium._util import storage_errors

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)

RowIndex = int | slice | Sequence[int] | Tensor | np.ndarray | None

MARK_DTYPE = "uint64"
"""dtype of an entry's ``done`` array: 0 unfinished, else :func:`chunk_mark` of the chunk."""


def chunk_mark(array: np.ndarray) -> int:
    """The done mark of a finished chunk: the CRC-32 of its bytes as stored (C order, storage
    dtype) with bit 32 set, so that a mark is never 0 (0 means unfinished)."""
    return zlib.crc32(np.ascontiguousarray(array).tobytes()) | (1 << 32)


@dataclass(frozen=True)
class CorruptChunk:
    """A finished chunk whose stored bytes do not match its mark.

    Attributes:
        chunk: the chunk number.
        rows: its rows ``(start, stop)``.
        reason: ``"checksum mismatch"`` or why it could not be read.
    """

    chunk: int
    rows: tuple[int, int]
    reason: str


class Entry:
    """A handle on one stored ``(source, method, params_hash)`` entry.

    Get one from :meth:`concilium.store.ExplanationStore.entry` (get or create) or
    :meth:`~concilium.store.ExplanationStore.get` (existing only); do not build it directly.

    Attributes:
        source: member id (``"m0"``) or ensemble name (``"ens-avg"``).
        method: explanation method name.
        params: the resolved parameters that were hashed.
        params_hash: 16 hex digits identifying ``params``.
        sample_ids: the ``N`` sample ids, in row order.
        shape: ``(N, H, W)``.
        dtype: ``"float32"`` or ``"float16"`` (storage type; :meth:`read` always gives float32).
        chunk_size: rows per chunk.
        meta: the caller's metadata (dataset fingerprint, model card, seed, versions, ...).
    """

    def __init__(self, group: zarr.Group) -> None:
        attrs = dict(group.attrs)
        self._group = group
        self._maps = group["maps"]
        self._done = group["done"]
        self.source: str = attrs["source"]
        self.method: str = attrs["method"]
        self.params: dict[str, Any] = attrs["params"]
        self.params_hash: str = attrs["params_hash"]
        self.sample_ids: list[str] = list(attrs["sample_ids"])
        self.shape: tuple[int, int, int] = tuple(attrs["shape"])  # type: ignore[assignment]
        self.dtype: str = attrs["dtype"]
        self.chunk_size: int = int(attrs["chunk_size"])
        self.created: str = attrs["created"]
        self.meta: dict[str, Any] = attrs.get("meta", {})

    @property
    def location(self) -> str:
        """The entry's folder on disk (for messages)."""
        root = getattr(self._group.store, "root", None)
        return str(Path(root) / self._group.path) if root is not None else self._group.path

    # -- layout -------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of samples (rows)."""
        return self.shape[0]

    @property
    def n_chunks(self) -> int:
        """Number of chunks along the samples."""
        return -(-self.n // self.chunk_size)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        """Rows ``(start, stop)`` of chunk number ``chunk``."""
        if not 0 <= chunk < self.n_chunks:
            raise ValueError(f"chunk must lie in [0, {self.n_chunks}); got {chunk}")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n)

    def _marks(self) -> np.ndarray:
        """The ``done`` array; an unreadable one (torn by a crash on a file system without
        atomic renames) reads as no chunk finished, so everything is recomputed, never trusted."""
        try:
            return np.asarray(self._done[:])
        except Exception as err:
            log.warning("entry %s/%s/%s: its done marks are unreadable (%s: %s); every chunk "
                        "will be recomputed", self.source, self.method, self.params_hash,
                        type(err).__name__, err)
            return np.zeros(self.n_chunks, dtype=self._done.dtype)

    def done_chunks(self) -> np.ndarray:
        """``(n_chunks,)`` bool: which chunks are finished (marked)."""
        return self._marks() != 0

    @property
    def checksummed(self) -> bool:
        """Whether the done marks carry checksums (every entry written by this version)."""
        return self._done.dtype == np.dtype(MARK_DTYPE)

    def _chunk_problem(self, chunk: int, mark: int, data: np.ndarray | None = None) -> str | None:
        """Why chunk ``chunk`` (marked ``mark``) is damaged, or ``None`` when it is intact."""
        start, stop = self.chunk_rows(chunk)
        if data is None:
            try:
                data = np.asarray(self._maps[start:stop])
            except Exception as err:  # undecodable bytes, a truncated file, ...
                return f"unreadable ({type(err).__name__}: {err})"
        if self.checksummed and chunk_mark(data) != mark:
            return "checksum mismatch"
        return None

    def verify(self) -> list[CorruptChunk]:
        """Read every finished chunk back and check it against its mark.

        Returns:
            The damaged chunks, in order (empty when every finished chunk is intact). An entry
            written before checksums is checked only for readability.
        """
        marks = self._marks()
        out = []
        for chunk in np.flatnonzero(marks).tolist():
            reason = self._chunk_problem(chunk, int(marks[chunk]))
            if reason is not None:
                out.append(CorruptChunk(chunk, self.chunk_rows(chunk), reason))
        return out

    def repair(self) -> list[CorruptChunk]:
        """:meth:`verify`, then unmark every damaged chunk so that it is recomputed (by the job
        that wrote the entry) like a chunk never written; intact chunks are kept.

        Returns:
            The chunks unmarked.
        """
        bad = self.verify()
        if bad:
            marks = self._marks().copy()
            marks[[b.chunk for b in bad]] = 0
            with storage_errors(self.location):
                self._done[:] = marks
        return bad

    def missing_chunks(self) -> list[tuple[int, int]]:
        """Rows ``(start, stop)`` of every unfinished chunk, in order (empty when complete)."""
        return [self.chunk_rows(c) for c in np.flatnonzero(~self.done_chunks()).tolist()]

    @property
    def complete(self) -> bool:
        """Whether every chunk is finished."""
        return bool(self.done_chunks().all())

    # -- writing ------------------------------------------------------------------------------

    def write(self, start: int, maps: Tensor, *, mark: bool = True) -> None:
        """Write whole chunks of maps from row ``start`` on, then mark them finished.

        Args:
            start: first row; must be the start of a chunk (a multiple of ``chunk_size``).
            maps: ``(k, H, W)`` finite floating maps covering whole chunks: ``k`` is a multiple
                of ``chunk_size``, or ``start + k == N`` (the last, possibly short, chunk).
            mark: set the chunks' done markers (default). ``False`` writes the maps only: a
                distributed run's workers write their chunks (each chunk its own file, so no
                lock) and the driver, the single writer of the one-file ``done`` array, marks
                them with :meth:`mark_done` once the write has returned.

        Raises:
            ValueError: on misaligned rows, a wrong shape, NaN/inf values, or (float16 entries)
                values beyond float16's range (store as float32 instead).
            TypeError: if ``maps`` is not a floating tensor.
        """
        check_maps(maps, dims="(k, H, W)", finite=False)  # finiteness below, naming the rows
        k = maps.shape[0]
        if not isinstance(start, int) or isinstance(start, bool):
            raise TypeError(f"start must be an int row index; got {type(start).__name__}")
        if start < 0 or start % self.chunk_size or start >= self.n:
            raise ValueError(
                f"start must be a chunk start (a multiple of {self.chunk_size} below {self.n}); "
                f"got {start}; use the rows from entry.missing_chunks()"
            )
        stop = start + k
        if tuple(maps.shape[1:]) != self.shape[1:]:
            raise ValueError(
                f"maps must be (k, H, W) = (k, {self.shape[1]}, {self.shape[2]}) like the entry; "
                f"got {tuple(maps.shape)}"
            )
        if k == 0 or stop > self.n or (k % self.chunk_size and stop != self.n):
            raise ValueError(
                f"maps must cover whole chunks of {self.chunk_size} rows from row {start} "
                f"(or end at row {self.n}); got {k} rows"
            )
        array = maps.detach().to("cpu", torch.float32).numpy()
        finite = np.isfinite(array).reshape(k, -1).all(1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"maps of rows {(start + bad[:10]).tolist()} contain NaN or infinite values "
                f"(entry {self.source}/{self.method}); check the explanation method"
            )
        if self.dtype == "float16":
            peak = float(np.abs(array).max())
            if peak > FLOAT16_MAX:
                raise ValueError(
                    f"maps reach {peak:.4g}, beyond float16's range ({FLOAT16_MAX:.0f}) in entry "
                    f"{self.source}/{self.method}/{self.params_hash}; store this entry as float32"
                )
            array = array.astype(np.float16)
        first = start // self.chunk_size
        last = -(-stop // self.chunk_size)
        with storage_errors(self.location):
            marks = self._marks().copy()
            if marks[first:last].any():  # rewriting finished chunks: unmark them first
                marks[first:last] = 0
                self._done[:] = marks
            self._maps[start:stop] = array
            if not mark:  # another process marks them (mark_done) once it knows they are whole
                return
            if self.checksummed:
                marks[first:last] = [chunk_mark(array[r0 - start:r1 - start])
                                     for r0, r1 in map(self.chunk_rows, range(first, last))]
            else:
                marks[first:last] = True
            self._done[:] = marks  # the whole (one-chunk) array: never a read-modify-write
        # the marks go after the data: a kill in between leaves these chunks unmarked

    def mark_done(self, start: int, stop: int) -> None:
        """Mark the chunks of rows ``[start, stop)`` finished; call only once their maps are
        written (:meth:`write` with ``mark=False``). The checksum is of the bytes as stored, read
        back here, so a chunk another process wrote is marked with what is on disk."""
        if start % self.chunk_size or not 0 <= start < stop <= self.n:
            raise ValueError(f"rows [{start}, {stop}) are not whole chunks of {self.chunk_size} "
                             f"rows of an entry of {self.n}")
        first = start // self.chunk_size
        last = -(-stop // self.chunk_size)
        with storage_errors(self.location):
            marks = self._marks().copy()
            for chunk in range(first, last):
                r0, r1 = self.chunk_rows(chunk)
                marks[chunk] = chunk_mark(self._maps[r0:r1]) if self.checksummed else True
            self._done[:] = marks

    # -- reading ------------------------------------------------------------------------------

    def _rows(self, index: RowIndex) -> np.ndarray | slice:
        if index is None:
            return slice(0, self.n)
        if isinstance(index, bool):
            raise TypeError("index must be an int, slice, sequence of ints or bool mask; got bool")
        if isinstance(index, int):
            if not -self.n <= index < self.n:
                raise ValueError(f"row {index} is out of range for an entry of {self.n} rows")
            return np.array([index % self.n])
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            return slice(start, stop) if step == 1 else np.arange(start, stop, step)
        rows = index.cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
        if rows.dtype == bool:
            if rows.shape != (self.n,):
                raise ValueError(f"a bool row mask must have shape ({self.n},); got {rows.shape}")
            return np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise TypeError(
                f"index must be an int, slice, 1-D sequence of ints or bool mask; got {rows.dtype} "
                f"of shape {rows.shape}"
            )
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -self.n or rows.max() >= self.n):
            raise ValueError(f"rows must lie in [-{self.n}, {self.n}); got [{rows.min()}, {rows.max()}]")
        return rows % self.n

    def read(self, index: RowIndex = None) -> Tensor:
        """Read maps lazily: only the chunks holding the requested rows are loaded.

        Args:
            index: ``None`` (all rows), an int (one row, still ``(1, H, W)``), a slice, a 1-D
                sequence/array/tensor of row numbers (any order, repeats allowed) or a
                ``(N,)`` bool mask.

        Returns:
            ``(k, H, W)`` float32 on the CPU (float16 entries are widened).

        Raises:
            ValueError: if a requested row lies in an unfinished chunk (finish the entry first,
                e.g. re-run ``concilium explain``), in a chunk whose bytes fail their checksum
                (re-run the command that wrote the entry: it recomputes that chunk), or is out
                of range.
        """
        rows = self._rows(index)
        if isinstance(rows, slice):
            chunks = np.arange(rows.start, rows.stop) // self.chunk_size
        else:
            chunks = rows // self.chunk_size
        if chunks.size:
            done = self.done_chunks()
            missing = np.unique(chunks[~done[chunks]])
            if missing.size:
                raise ValueError(
                    f"entry {self.source}/{self.method}/{self.params_hash} has unfinished chunks "
                    f"{missing.tolist()[:10]} covering requested rows; finish it first (re-run "
                    "`concilium explain` on this run) or read only finished rows"
                )
        marks = self._marks()
        wanted = np.unique(chunks).tolist()
        blocks = {}
        for chunk in wanted:  # whole chunks (zarr decodes whole chunks anyway), each verified
            start, stop = self.chunk_rows(chunk)
            try:
                blocks[chunk] = np.asarray(self._maps[start:stop])
            except Exception as err:
                self._raise_corrupt(chunk, f"unreadable ({type(err).__name__}: {err})")
            reason = self._chunk_problem(chunk, int(marks[chunk]), blocks[chunk])
            if reason is not None:
                self._raise_corrupt(chunk, reason)
        if isinstance(rows, slice):
            rows = np.arange(rows.start, rows.stop)
        if not wanted:
            data = np.zeros((0, *self.shape[1:]), dtype=np.float32)
        else:
            first = wanted[0]
            if wanted == list(range(first, wanted[-1] + 1)):  # contiguous chunks: one block
                data = np.concatenate([blocks[c] for c in wanted])[rows - first * self.chunk_size]
            else:
                data = np.stack([blocks[r // self.chunk_size][r % self.chunk_size] for r in rows])
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))

    def _raise_corrupt(self, chunk: int, reason: str) -> None:
        start, stop = self.chunk_rows(chunk)
        raise ValueError(
            f"entry {self.source}/{self.method}/{self.params_hash}: chunk {chunk} (rows "
            f"{start}-{stop - 1}) is damaged on disk ({reason}); re-run the command that wrote it "
            "(`concilium explain`, or `concilium ensemble` for an ensemble source) on this run: it "
            "recomputes the damaged chunk and keeps the rest"
        )

    def rows_of(self, sample_ids: Sequence[str]) -> list[int]:
        """Row numbers of the given sample ids.

        Raises:
            ValueError: naming the first id that is not in this entry.
        """
        position = {sid: i for i, sid in enumerate(self.sample_ids)}
        out = []
        for sid in sample_ids:
            if sid not in position:
                raise ValueError(f"sample id {sid!r} is not in entry {self.source}/{self.method}")
            out.append(position[sid])
        return out

    def __repr__(self) -> str:
        done = int(self.done_chunks().sum())
        return (
            f"Entry(source={self.source!r}, method={self.method!r}, params_hash={self.params_hash!r}, "
            f"shape={self.shape}, dtype={self.dtype!r}, chunks_done={done}/{self.n_chunks})"
        )
