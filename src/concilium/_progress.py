"""Progress of long work, one way for every command: rich bars on a terminal, plain lines in a
log.

:func:`progress_display` gives a ``rich.progress.Progress`` when the console is a terminal, and a
:class:`PlainProgress` otherwise (``concilium train ... > train.log 2>&1``, a CI job, ``nohup``),
which prints one plain line per task at a steady pace: whenever another 5% is done or 30 s have
passed, whichever comes first, plus a line when a task starts and when it ends. A line reads::

    [12:03:04] explaining m0 (saliency, gradcam): 640/8000 images (8%), 21.3 images/s, ETA 5m45s

(stage, done/total, rate, time left; a task of unknown size prints done and elapsed time). A
heartbeat thread prints the line of a task that has not moved for 30 s, so a log shows a slow
step is still running rather than hung.

:class:`PlainProgress` takes the calls the commands make on a rich display (``add_task``,
``update``, ``advance``, ``remove_task``, ``console``, ``with``), so call sites are written once
for both.

Example:
    >>> import io
    >>> from rich.console import Console
    >>> with progress_display(console=Console(file=io.StringIO()), unit="steps") as bar:
    ...     task = bar.add_task("training", total=4)
    ...     for _ in range(4):
    ...         bar.advance(task)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_STEP = 0.05
"""A plain line whenever another 5% of a task is done."""
PLAIN_INTERVAL = 30.0
"""... or 30 s have passed since the task's last line."""


def default_columns() -> tuple[ProgressColumn, ...]:
    """The bar of a terminal display: description, bar, done/total, elapsed, time left."""
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())


def format_seconds(seconds: float) -> str:
    """``3h02m``, ``5m45s`` or ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    last_line: float = 0.0
    last_step: int = -1  # the last 5% step reported
    finished: bool = False


class PlainProgress:
    """Plain progress lines for a console that is not a terminal (see the module docstring).

    Args:
        console: where the lines go (stderr for the commands).
        unit: what is counted (``"images"``, ``"steps"``), shown after done/total and in the rate.
        step: a line whenever this fraction more of a task is done (default 5%).
        interval: ... or this many seconds have passed (default 30 s).
        clock: the monotonic clock (tests pass a fake one).
        heartbeat: run the thread that prints a task idle for ``interval`` seconds.
        fields: the task fields shown as ``name value`` (default: all; a task's own ``unit``
            field replaces ``unit`` for it and is never shown).
    """

    def __init__(self, *, console: Console, unit: str = "", step: float = PLAIN_STEP,
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 heartbeat: bool = True, fields: tuple[str, ...] | None = None) -> None:
        self.console = console
        self.unit = unit
        self.fields = fields
        self.step, self.interval, self.clock = step, interval, clock
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = (threading.Thread(target=self._beat, name="concilium-progress", daemon=True)
                        if heartbeat else None)

    # -- the calls of rich.progress.Progress --------------------------------------------------

    def __enter__(self) -> PlainProgress:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for task in self._tasks.values():  # say where each unfinished task stopped
                if not task.finished:
                    task.finished = True
                    self._line(task, note="stopped")

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> TaskID:
        with self._lock:
            now = self.clock()
            task_id = len(self._tasks)
            task = _Task(description, total, float(completed), dict(fields), now, now)
            self._tasks[task_id] = task
            self._line(task, note="started")
            return TaskID(task_id)

    def update(self, task_id: TaskID, *, total: float | None = None,
               completed: float | None = None, advance: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        with self._lock:
            task = self._tasks[int(task_id)]
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = float(completed)
            if advance is not None:
                task.completed += advance
            if description is not None:
                task.description = description
            task.fields.update(fields)
            self._maybe_line(task)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks[int(task_id)]
            if not task.finished:
                task.finished = True
                self._line(task, note="stopped" if task.total and task.completed < task.total
                           else None)

    def finish(self, task_id: TaskID) -> None:
        """Mark a task of unknown size done (prints its last line)."""
        with self._lock:
            task = self._tasks[int(task_id)]
            if not task.finished:
                task.finished = True
                self._line(task, note="done")

    # -- lines --------------------------------------------------------------------------------

    def _maybe_line(self, task: _Task) -> None:
        if task.finished:
            return
        now = self.clock()
        if task.total:
            fraction = min(task.completed / task.total, 1.0)
            if fraction >= 1.0:
                task.finished = True
                self._line(task)
                return
            step = int(fraction / self.step)
            if step > task.last_step or now - task.last_line >= self.interval:
                self._line(task)
        elif now - task.last_line >= self.interval:
            self._line(task)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            with self._lock:
                now = self.clock()
                for task in self._tasks.values():
                    if not task.finished and now - task.last_line >= self.interval:
                        self._line(task)

    def text(self, task: _Task, note: str | None = None) -> str:
        """The line of ``task`` (without the time stamp)."""
        now = self.clock()
        elapsed = max(now - task.started, 1e-9)
        unit = task.fields.get("unit", self.unit)
        unit = f" {unit}" if unit else ""
        parts = []
        if task.total:
            parts.append(f"{task.completed:g}/{task.total:g}{unit} "
                         f"({100 * task.completed / task.total:.0f}%)")
        elif task.completed:  # a step without counts (a heartbeat) shows no "0"
            parts.append(f"{task.completed:g}{unit}")
        if note != "started":
            if task.completed > 0:
                rate = task.completed / elapsed
                parts.append(f"{rate:.3g}{unit or ' items'}/s")
                if task.total and task.completed < task.total:
                    parts.append(f"ETA {format_seconds((task.total - task.completed) / rate)}")
            parts.append(f"elapsed {format_seconds(elapsed)}")
        parts += [f"{k} {v}" for k, v in task.fields.items()
                  if k != "unit" and (self.fields is None or k in self.fields)
                  and v not in (None, "", "-")]
        if note is None and task.total and task.completed >= task.total:
            note = "done"
        return f"{task.description}: " + ", ".join(([note] if note else []) + parts)

    def _line(self, task: _Task, note: str | None = None) -> None:
        now = self.clock()
        task.last_line = now
        if task.total:
            task.last_step = int(min(task.completed / task.total, 1.0) / self.step)
        stamp = datetime.now().strftime("%H:%M:%S")
        self.console.print(f"[{stamp}] {self.text(task, note)}", markup=False, highlight=False,
                           soft_wrap=True)


def progress_display(*columns: ProgressColumn, console: Console | None = None,
                     transient: bool = False, unit: str = "",
                     fields: tuple[str, ...] | None = None) -> Progress | PlainProgress:
    """A progress display for long work: rich bars with ``columns`` (default
    :func:`default_columns`) when ``console`` (default: stderr) is a terminal, else
    :class:`PlainProgress` lines counting ``unit`` and showing the task ``fields`` (default
    all)."""
    console = console if console is not None else Console(stderr=True)
    if console.is_terminal or console.is_jupyter:
        return Progress(*(columns or default_columns()), console=console, transient=transient)
    return PlainProgress(console=console, unit=unit, fields=fields)


@contextlib.contextmanager
def stage_task(display: Progress | PlainProgress, description: str) -> Iterator[TaskID]:
    """A task of unknown size for one step of work that reports no counts (an ensembler, an
    audit): a line when it starts, a heartbeat line every 30 s in a log, and a ``done`` line
    with the elapsed time when the block ends."""
    task = display.add_task(description, total=None)
    yield task
    if isinstance(display, PlainProgress):
        display.finish(task)
    else:
        display.update(task, total=1, completed=1)


@contextlib.contextmanager
def heartbeat(description: str, *, console: Console | None = None,
              spinner: bool = True) -> Iterator[None]:
    """Show that a step without counts is running: in a log, a line when it starts, one every
    30 s and one when it ends (:func:`stage_task`); on a terminal a rich spinner (``spinner``)
    or nothing (when the step shows its own bars: rich allows one live display at a time)."""
    console = console if console is not None else Console(stderr=True)
    if console.is_terminal or console.is_jupyter:
        with console.status(description) if spinner else contextlib.nullcontext():
            yield
        return
    with PlainProgress(console=console) as display, stage_task(display, description):
        yield


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def optional_display(show: bool, *, unit: str = "") -> Progress | PlainProgress | _NoProgress:
    """:func:`progress_display` on stderr when ``show``, else a context that yields ``None``."""
    return progress_display(unit=unit) if show else _NoProgress()


ProgressDisplay = Progress | PlainProgress
"""What a function that adds its own task to a caller's display accepts."""
