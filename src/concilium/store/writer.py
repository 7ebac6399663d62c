"""Writing chunks of maps in order, optionally on a background thread."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from torch import Tensor

from concilium.store.entry import Entry


class ChunkWriter:
    """Writes chunks in submission order; with ``background=True`` on one background thread
    while the next chunk is computed (the store's compression and file writes overlap the
    attribution). The explain job uses the thread when the models run on an accelerator;
    on the CPU the attribution already uses every core and a writer thread only competes with
    it (measured 1.22x vs 1.14x of compute-only time for the cheapest methods on 2 cores).

    Each chunk's data and then its marker are written by :meth:`Entry.write` on that thread, so
    the kill-safety order is unchanged. At most ``max_pending`` chunks wait in memory. The first
    failed write cancels the queued ones and is raised in the caller's thread at the next
    :meth:`submit` or at :meth:`close`; an error in the caller (or Ctrl-C) lets the queued writes
    finish first.
    """

    def __init__(self, *, max_pending: int, background: bool = True) -> None:
        self._background = background
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concilium-store")
        self._pending: deque[Future] = deque()
        self._max = max_pending
        self._failed = threading.Event()

    def _write(self, entry: Entry, start: int, maps: Tensor) -> None:
        if self._failed.is_set():  # an earlier write failed: write nothing after it
            raise RuntimeError("skipped: an earlier chunk write failed")
        try:
            entry.write(start, maps)
        except BaseException:
            self._failed.set()
            raise

    def _check(self, *, block: bool) -> None:
        while self._pending and (block or self._pending[0].done()
                                 or len(self._pending) > self._max):
            future = self._pending.popleft()
            try:
                future.result()
            except BaseException:
                for queued in self._pending:
                    queued.cancel()
                self._pending.clear()
                raise

    def submit(self, entry: Entry, start: int, maps: Tensor) -> None:
        if not self._background:
            entry.write(start, maps)
            return
        self._check(block=False)
        self._pending.append(self._pool.submit(self._write, entry, start, maps))
        self._check(block=False)

    def close(self) -> None:
        try:
            self._check(block=True)
        finally:
            self._pool.shutdown(wait=True)
