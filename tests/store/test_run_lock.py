"""One writer per run: a second process is refused with a message naming the first; a lock left
by a dead process is taken over; the lock is re-entrant within a process."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from concilium.cli.main import main
from concilium.jobs.evaluate import evaluate_run
from concilium.store.lock import LOCK_FILE, RunLockedError, run_lock


def _hold(run: Path, ready) -> None:
    with run_lock(run, command="concilium explain DATA --out RUN"):
        ready.set()
        time.sleep(120)


def _holder(run: Path) -> multiprocessing.Process:
    """Another process holding the run's lock (forked: no second import of torch)."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(run, ready), daemon=True)
    proc.start()
    assert ready.wait(60)
    return proc


def test_a_second_process_is_refused_naming_the_first(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as err, run_lock(tmp_path):
            pass
        text = str(err.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in text
        assert "`concilium explain DATA --out RUN`" in text and str(tmp_path) in text
        # a job refuses before touching the run
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            evaluate_run(tmp_path, ["pointing_game"])
    finally:
        proc.kill()
        proc.join()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind
    with caplog.at_level(logging.WARNING), run_lock(tmp_path, command="mine"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["command"] == "mine"
    assert f"took over the lock left by pid {proc.pid}" in caplog.text
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release clears the record


def test_a_stale_record_with_no_holder_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": 999999, "host": "elsewhere", "command": "concilium evaluate RUN", "started": "x"}))
    with caplog.at_level(logging.WARNING), run_lock(tmp_path):
        pass
    assert "pid 999999 on host elsewhere" in caplog.text


def test_the_lock_is_reentrant_and_released(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        pass
    proc = _holder(tmp_path)  # free again: another process takes it
    proc.kill()
    proc.join()


def test_the_cli_reports_a_locked_run_with_status_1(tmp_path, monkeypatch, capsys):
    proc = _holder(tmp_path)
    try:
        monkeypatch.setattr(sys, "argv", ["concilium", "evaluate", str(tmp_path)])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in " ".join(err.split()) and "Traceback" not in err
    finally:
        proc.kill()
        proc.join()
