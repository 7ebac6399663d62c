"""Small shared helpers, each defined once: atomic writes and storage errors, JSON records, seed derivation,
fingerprints.

Example:
    >>> derive_seed(0, "m0", 64) == derive_seed(0, "m0", 64)
    True
    >>> derive_seed(0, "m0", 64) != derive_seed(0, "m0", 128)
    True
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

RecordT = TypeVar("RecordT", bound=BaseModel)

MAX_RECORD_BYTES = 16 * 2**20
"""The largest JSON record (card, run record) read: 16 MiB. A record is metadata; a larger
file is not one (or was damaged), and reading it whole could exhaust memory."""

_SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (a hash of ``"|".join(map(str, parts))``).

    Every seeded unit of work (a chunk of maps, a metric chunk, an image) takes its seed from its
    own identity through this function, so that results do not depend on batching or scheduling.
    """
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


class StorageError(OSError):
    """The disk refused a write: no space left, a quota, no permission, a read-only file system.
    The message names the path and the fix; finished work stays on disk, so the same command
    resumes once the cause is gone. The CLI prints it as one line and exits with status 1."""

    cli_exit_status = 1


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


@contextlib.contextmanager
def storage_errors(path: str | Path) -> Iterator[None]:
    """Turn a full disk or an unwritable path met inside the block into a :class:`StorageError`
    naming the path (the failing file's, else ``path``) and what to do; other errors pass."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        where = err.filename or path
        if err.errno in _NO_SPACE:
            raise StorageError(
                err.errno, f"no space left on the device (or disk quota exceeded) writing {where}; "
                "free space there and re-run the same command: finished work is kept and only "
                "the rest is computed", str(where)) from err
        if err.errno in _NO_ACCESS:
            raise StorageError(
                err.errno, f"cannot write {where} ({os.strerror(err.errno)}); make it writable or "
                "choose another output folder, then re-run the same command", str(where)) from err
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to the disk (fsync), then
    rename it onto ``path`` and fsync the folder.

    A reader sees the old file or the new one, never a partial one, even after a kill or a power
    cut mid-write; the temporary file is removed if ``write`` raises. The parent folder is created
    if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        StorageError: the disk is full or the folder is not writable (naming the path).
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync(path.parent)
    return path


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_record(path: Path, model: type[RecordT], *, what: str, if_missing: str) -> RecordT:
    """Read the JSON file ``path`` as a ``model`` (a pydantic model: a card, a run record).

    Args:
        path: the JSON file.
        model: the pydantic model class it holds.
        what: what the file is, for the message of an invalid file ("member card").
        if_missing: the rest of the message after ``"PATH not found"``: how to make the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not valid JSON or not a valid ``model``, or it is larger than
            :data:`MAX_RECORD_BYTES`.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{if_missing}")
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise ValueError(
            f"{path} is {size:,} bytes, more than a {what} may hold ({MAX_RECORD_BYTES:,}); "
            "it is not one, or it was damaged: restore or rewrite it"
        )
    try:
        return model.model_validate_json(path.read_bytes())
    except ValueError as err:
        raise ValueError(f"{path} is not a valid {what}: {_short(str(err))}") from None


def _short(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters (a validation error can quote an enormous value)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit:,} more)"


def state_fingerprint(model: nn.Module) -> str:
    """A short content hash of a model's state dict: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def shape_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state-dict names and shapes only (not values): models of one
    architecture share it, so a cost measured on one holds for the others."""
    state = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def mean_interval(
    x: np.ndarray, *, rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``x`` (NaNs dropped) and its percentile bootstrap
    interval at ``level`` (``rng`` seeds the resampling); fewer than 2 values give no interval
    (NaN bounds)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), math.nan, math.nan
    counts = rng.multinomial(x.size, np.full(x.size, 1.0 / x.size), size=n_boot)
    low, high = np.quantile(counts @ x / x.size, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(low), float(high)
