"""The result tables under faults: a kill mid-write leaves the old table or the new one, never a
torn one; a full disk or an unwritable folder is a clear error naming the path."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

from concilium._util import StorageError, atomic_write_text
from concilium.store import read_table, write_table


def version(v: int) -> pd.DataFrame:
    """Table number ``v``: big enough that writing it takes a while."""
    rng = np.random.default_rng(v)
    return pd.DataFrame({"sample": [f"s{i}" for i in range(20_000)], "version": v,
                         "value": rng.standard_normal(20_000)})


def _writer(run) -> None:
    v = 1
    while True:
        write_table(run, "metrics", version(v))
        v += 1


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.45, 0.8])
def test_a_kill_mid_write_leaves_a_whole_table(tmp_path, delay):
    write_table(tmp_path, "metrics", version(0))
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(tmp_path,))
    proc.start()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    table = read_table(tmp_path, "metrics")
    v = int(table["version"].iloc[0])
    pd.testing.assert_frame_equal(table, version(v))
    csv = pd.read_csv(tmp_path / "results" / "metrics.csv")
    # the csv is written after the parquet: the same version, or the one before
    assert len(csv) == len(table) and len(set(csv["version"])) == 1
    assert set(csv["version"]) <= {v - 1, v}


def test_an_error_mid_write_keeps_the_old_file_and_no_temp(tmp_path):
    write_table(tmp_path, "metrics", version(0))

    def broken(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    from concilium._util import atomic_write

    with pytest.raises(StorageError, match=r"no space left on the device.*metrics\.parquet.*re-run"):
        atomic_write(tmp_path / "results" / "metrics.parquet", broken)
    pd.testing.assert_frame_equal(read_table(tmp_path, "metrics"), version(0))
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["metrics.csv",
                                                                        "metrics.parquet"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_names_the_path(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=r"cannot write .*results"):
            atomic_write_text(folder / "x.json", "{}")
    finally:
        folder.chmod(0o700)


def test_permission_errors_name_the_path(tmp_path, monkeypatch):
    """The same, by the error the OS gives (for root, which may write anywhere)."""

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "results"))

    monkeypatch.setattr("concilium._util.tempfile.mkstemp", denied)
    with pytest.raises(StorageError, match=r"cannot write .*results \(Permission denied\)"):
        atomic_write_text(tmp_path / "results" / "x.json", "{}")
