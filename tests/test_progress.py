"""Progress for long jobs: rich bars on a terminal, plain lines at a steady pace in a log."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.progress import Progress

from concilium._progress import PlainProgress, format_seconds, heartbeat, progress_display


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock, **kw) -> tuple[PlainProgress, io.StringIO]:
    out = io.StringIO()
    return PlainProgress(console=Console(file=out, width=300), clock=clock, heartbeat=False,
                         **kw), out


def lines(out: io.StringIO) -> list[str]:
    return [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in out.getvalue().splitlines()]


def test_a_line_every_five_percent():
    clock = Clock()
    bar, out = plain(clock, unit="images")
    with bar:
        task = bar.add_task("explaining m0", total=200)
        for _ in range(200):
            clock.now += 0.01
            bar.advance(task, 1)
    got = lines(out)
    assert got[0] == "explaining m0: started, 0/200 images (0%)"
    assert len(got) == 1 + 19 + 1  # started, 5% .. 95%, done
    assert got[10].startswith("explaining m0: 100/200 images (50%), 100 images/s, ETA 1s")
    assert got[-1].startswith("explaining m0: done, 200/200 images (100%)")


def test_a_line_every_30_seconds_when_slow():
    clock = Clock()
    bar, out = plain(clock, unit="steps")
    with bar:
        task = bar.add_task("training m0", total=10_000)
        for _ in range(20):  # 20 steps of 10 s: 0.2% done, 200 s
            clock.now += 10
            bar.advance(task)
    got = lines(out)
    assert len(got) == 1 + 6 + 1  # started, every 30 s (at 30, 60, ... 180 s), stopped at exit
    assert got[1] == "training m0: 3/10000 steps (0%), 0.1 steps/s, ETA 27h46m, elapsed 30s"
    assert got[-1].startswith("training m0: stopped, 20/10000 steps")


def test_fields_and_units():
    clock = Clock()
    bar, out = plain(clock, fields=("g",))
    with bar:
        task = bar.add_task("train", total=2, g="-", d="-", unit="steps")
        clock.now = 1
        bar.update(task, completed=1, g="0.52", d="+0.1")
        bar.update(task, completed=2)
    got = lines(out)
    assert got[1] == "train: 1/2 steps (50%), 1 steps/s, ETA 1s, elapsed 1s, g 0.52"


def test_the_heartbeat_shows_a_task_that_does_not_move():
    clock = Clock()
    out = io.StringIO()
    bar = PlainProgress(console=Console(file=out, width=300), clock=clock, interval=0.05)
    with bar:
        bar.add_task("ensemble cnn", total=None)
        clock.now = 100
        import time

        time.sleep(0.3)
    got = lines(out)
    assert got[0] == "ensemble cnn: started"  # no count for a step without counts
    assert any(line.startswith("ensemble cnn: elapsed 1m40s") for line in got[1:])
    assert got[-1].startswith("ensemble cnn: stopped")


def test_heartbeat_stage_says_done(tmp_path):
    out = io.StringIO()
    with heartbeat("audit", console=Console(file=out)):
        pass
    got = lines(out)
    assert got[0] == "audit: started" and got[-1].startswith("audit: done, elapsed 0s")


def test_terminal_gets_rich_bars_and_a_log_plain_lines():
    assert isinstance(progress_display(console=Console(file=io.StringIO(), force_terminal=True)),
                      Progress)
    assert isinstance(progress_display(console=Console(file=io.StringIO())), PlainProgress)


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3600 * 3 + 120)] == ["5s", "1m05s", "3h02m"]
