"""One writer per run: ``RUN/.lock``, held by the job that writes the run (explain, evaluate,
ensemble, audit, the pipeline).

The lock is an advisory ``flock`` on ``RUN/.lock``; the file holds who took it (pid, host, the
command line, when), so that a second process is refused with a message naming the first. The
kernel drops the ``flock`` when its process dies, however it dies (SIGKILL, a crash, Ctrl-C), so a
lock left by a dead process is stale by construction: the next job takes it over and says so.
The file itself is never deleted (deleting a locked file lets two processes lock two different
files); its contents are cleared on a clean release.

Within one process the lock is re-entrant: the pipeline holds it across its stages, which take it
again.

Example:
    >>> import tempfile
    >>> with run_lock(tempfile.mkdtemp(), command="concilium explain ..."):
    ...     pass
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from concilium._util import storage_errors

LOCK_FILE = ".lock"

log = logging.getLogger(__name__)

_HELD: dict[Path, list[int]] = {}
"""Resolved run dir -> [file descriptor, depth] of the locks this process holds."""
os.register_at_fork(after_in_child=_HELD.clear)  # a forked child is another process: it locks anew

P = ParamSpec("P")
R = TypeVar("R")


class RunLockedError(RuntimeError):
    """Another live process holds the run's lock; the message names it (pid, host, command).
    The CLI prints it as one line and exits with status 1."""

    cli_exit_status = 1


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "a process that left no record"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
            f"{info.get('started', '?')}, running `{info.get('command', '?')}`")


def _read_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        info = json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_info(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def acquire(run_dir: str | Path, *, command: str | None = None) -> None:
    """Take the lock of ``run_dir`` (created if needed) for this process, or one level deeper
    when it already holds it.

    Raises:
        RunLockedError: another live process holds it (named in the message).
        StorageError: the run folder cannot be written.
    """
    run_dir = Path(run_dir)
    with storage_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        key = run_dir.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            return
        path = key / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_info(fd)
        os.close(fd)
        raise RunLockedError(
            f"run folder {run_dir} is in use by another concilium process: "
            f"{_holder_text(holder)}; wait for it to finish, or stop it (kill "
            f"{holder.get('pid', '<pid>')} on {holder.get('host', 'its host')}) and re-run: "
            "finished work is kept. Two jobs must not write one run at once"
        ) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        log.warning("the file system of %s does not support locks; not locking the run (do not "
                    "run two jobs on it at once)", run_dir)
    stale = _read_info(fd)
    if stale:
        log.warning("run folder %s: took over the lock left by %s, which is no longer running",
                    run_dir, _holder_text(stale))
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with storage_errors(path):
        _write_info(fd, info)
    _HELD[key] = [fd, 1]


def release(run_dir: str | Path) -> None:
    """Give back one level of the lock of ``run_dir``; the last one clears and unlocks the file."""
    key = Path(run_dir).resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    fd = held[0]
    del _HELD[key]
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, *, command: str | None = None) -> Iterator[None]:
    """Hold the lock of ``run_dir`` inside the block (see :func:`acquire`). A run folder that the
    lock itself created and that holds nothing else when the block ends (a job refused by its
    own checks) is removed, so a refused command leaves no empty run behind."""
    created = not Path(run_dir).exists()
    acquire(run_dir, command=command)
    try:
        yield
    finally:
        release(run_dir)
        if created and Path(run_dir).resolve() not in _HELD:
            with contextlib.suppress(OSError):
                if os.listdir(run_dir) == [LOCK_FILE]:
                    (Path(run_dir) / LOCK_FILE).unlink()
                    Path(run_dir).rmdir()


def holds_run_lock(job: Callable[P, R]) -> Callable[P, R]:
    """Decorate a job whose first argument is the run folder: it runs holding that run's lock."""

    first = next(iter(inspect.signature(job).parameters))

    @functools.wraps(job)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        run_dir = args[0] if args else kwargs[first]
        with run_lock(run_dir):  # type: ignore[arg-type]
            return job(*args, **kwargs)

    return locked
