"""The store under faults: damaged chunks are found by their checksum and recomputed alone; a
crash at any point of the write path never leaves a chunk marked done with wrong bytes."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr.storage._local as zarr_local

from concilium.data.dataset import ImageDataset
from concilium.jobs.explain import explain_to_store
from concilium.models.architectures import create_model
from concilium.models.members import MemberCard
from concilium.store import ExplanationStore, write_source
from concilium.store.entry import chunk_mark

IDS = [f"s{i:02d}" for i in range(10)]
SHAPE = (5, 6)
MAPS = torch.randn(len(IDS), *SHAPE, generator=torch.Generator().manual_seed(7)) * 3


def new_entry(run: Path, dtype: str = "float32"):
    return ExplanationStore(run).entry("m0", "saliency", {"reduction": "sum"}, IDS, shape=SHAPE,
                                       dtype=dtype, chunk_size=4)


def fill(entry) -> list[int]:
    """Write every missing chunk; the chunk numbers written."""
    written = []
    for start, stop in entry.missing_chunks():
        entry.write(start, MAPS[start:stop])
        written.append(start // entry.chunk_size)
    return written


def chunk_file(run: Path, entry, chunk: int) -> Path:
    root = run / "explanations.zarr" / "entries" / "m0" / "saliency" / entry.params_hash
    return root / "maps" / "c" / str(chunk) / "0" / "0"


def store_files(run: Path) -> dict[str, bytes]:
    root = run / "explanations.zarr"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "/c/" in p.as_posix()}


# -- (a) hand values ----------------------------------------------------------------------------


def test_mark_is_the_crc_of_the_stored_bytes(tmp_path):
    import zlib

    entry = new_entry(tmp_path)
    fill(entry)
    marks = np.asarray(entry._done[:])
    expected = zlib.crc32(MAPS[4:8].numpy().astype(np.float32).tobytes()) | (1 << 32)
    assert int(marks[1]) == expected == chunk_mark(MAPS[4:8].numpy())
    assert entry.checksummed and entry.verify() == []


# -- damaged bytes ------------------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete(path: Path) -> None:
    path.unlink()


def _swap(path: Path) -> None:  # well-formed bytes of another chunk: only the checksum can tell
    path.write_bytes((path.parent.parent.parent / "0" / "0" / "0").read_bytes())


@pytest.mark.parametrize("damage", [_flip, _truncate, _delete, _swap])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_damaged_chunk_is_refused_then_recomputed_alone(tmp_path, damage, dtype):
    clean, run = tmp_path / "clean", tmp_path / "run"
    fill(new_entry(clean, dtype))
    entry = new_entry(run, dtype)
    fill(entry)
    damage(chunk_file(run, entry, 1))
    with pytest.raises(ValueError, match=r"chunk 1 \(rows 4-7\) is damaged on disk.*re-run"):
        new_entry(run, dtype).read()
    assert torch.equal(new_entry(run, dtype).read([0, 9]), new_entry(clean, dtype).read([0, 9]))
    entry = new_entry(run, dtype)
    bad = entry.repair()
    assert [b.chunk for b in bad] == [1] and bad[0].rows == (4, 8)
    assert entry.missing_chunks() == [(4, 8)]  # nothing else is recomputed
    assert fill(entry) == [1]
    assert store_files(run) == store_files(clean)
    assert new_entry(run, dtype).verify() == []


def test_write_source_recomputes_a_damaged_ensemble_chunk(tmp_path):
    store = ExplanationStore(tmp_path)
    entry = write_source(store, "ens-avg", "saliency", MAPS, sample_ids=IDS,
                         params={"k": 1}, chunk_size=4)
    before = store_files(tmp_path)
    path = tmp_path / "explanations.zarr" / "entries" / "ens-avg" / "saliency" / entry.params_hash
    _flip(path / "maps" / "c" / "2" / "0" / "0")
    entry = write_source(store, "ens-avg", "saliency", MAPS, sample_ids=IDS,
                         params={"k": 1}, chunk_size=4)
    assert store_files(tmp_path) == before and torch.equal(entry.read(), MAPS)


# -- a crash at every point of the write path ---------------------------------------------------


class _Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


def _crash_at(monkeypatch, n: int, *, torn: bool) -> list[str]:
    """Make the ``n``-th file write of zarr die; ``torn`` first leaves half the new bytes at
    the final path (a file system without atomic renames)."""
    calls: list[str] = []
    put = zarr_local._put

    def dying_put(path, value, exclusive=False):
        calls.append(str(path))
        if len(calls) == n:
            if torn:
                raw = bytes(value.as_buffer_like())
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_bytes(raw[: max(1, len(raw) // 2)])
            raise _Crash(path)
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", dying_put)
    return calls


def _rewrite_half(entry) -> None:
    """A repair pass: chunks 0 and 1 are rewritten with other values, then with the right ones."""
    entry.write(0, MAPS[0:8] + 1)
    entry.write(0, MAPS[0:8])


@pytest.mark.parametrize("torn", [False, True])
@pytest.mark.parametrize("rewrite", [False, True])
def test_a_crash_at_any_write_never_marks_wrong_bytes(tmp_path, monkeypatch, torn, rewrite):
    """Die at the 1st, 2nd, ... file write of filling an entry (or of rewriting finished chunks
    with other values and back); each time, every chunk still marked holds exactly its bytes, and
    a resumed fill ends with the right maps. ``torn``: the dying write leaves half its bytes at
    the final path, as on a file system without atomic renames."""
    n = 1
    while True:
        run = tmp_path / f"run{n}"
        entry = new_entry(run)
        if rewrite:
            fill(entry)
        calls = _crash_at(monkeypatch, n, torn=torn)
        try:
            _rewrite_half(entry) if rewrite else fill(entry)
        except _Crash:
            pass
        monkeypatch.undo()
        if len(calls) < n:  # the write path has fewer than n file writes: every point is covered
            break
        reopened = new_entry(run)
        reopened.repair()  # what a resumed run does first
        for c in np.flatnonzero(reopened.done_chunks()).tolist():
            start, stop = reopened.chunk_rows(c)
            got = reopened.read(slice(start, stop))  # exactly what one finished write wrote
            assert any(torch.equal(got, v[start:stop]) for v in (MAPS, MAPS + 1)), (n, calls)
        fill(reopened)
        if rewrite:  # the interrupted repair pass, done again
            reopened.write(0, MAPS[0:8])
        assert torch.equal(new_entry(run).read(), MAPS)
        n += 1
    assert n > 6  # data and marks of every chunk were each interrupted


def test_disk_full_names_the_path_and_the_run_resumes(tmp_path, monkeypatch):
    from concilium._util import StorageError

    clean, run = tmp_path / "clean", tmp_path / "run"
    fill(new_entry(clean))
    entry = new_entry(run)
    put = zarr_local._put
    calls = []

    def full(path, value, exclusive=False):
        calls.append(path)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", full)
    with pytest.raises(StorageError, match=r"no space left on the device.*explanations\.zarr"):
        fill(entry)
    monkeypatch.undo()  # space is back
    entry = new_entry(run)
    assert entry.verify() == []
    fill(entry)
    assert store_files(run) == store_files(clean)


# -- the explain job ----------------------------------------------------------------------------


def test_explain_recomputes_only_the_damaged_chunk(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(images=torch.rand(6, 3, 12, 12, generator=g), labels=torch.arange(6) % 2,
                        masks=torch.ones(6, 12, 12, dtype=torch.bool),
                        ids=[f"s{i}" for i in range(6)], splits=["test"] * 6,
                        class_names=["a", "b"])
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = create_model("small-cnn", num_classes=2)
    card = MemberCard(member_id="m0", arch="small-cnn", num_classes=2, class_names=["a", "b"],
                      image_size=(12, 12), seed=1, diversity="seed", epochs=0,
                      gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint())

    def run(store):
        return explain_to_store(store, data, [(model.eval(), card)], ["saliency"], chunk_size=2,
                                batch_size=4)

    clean, damaged = ExplanationStore(tmp_path / "clean"), ExplanationStore(tmp_path / "run")
    run(clean)
    run(damaged)
    entry = damaged.get("m0", "saliency")
    _flip(tmp_path / "run" / "explanations.zarr" / "entries" / "m0" / "saliency"
          / entry.params_hash / "maps" / "c" / "1" / "0" / "0")
    (report,) = run(damaged)
    assert (report.chunks_repaired, report.chunks_computed, report.chunks_reused) == (1, 1, 2)
    assert torch.equal(damaged.get("m0", "saliency").read(), clean.get("m0", "saliency").read())
