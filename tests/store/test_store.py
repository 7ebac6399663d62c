"""The explanation store: hand values, resumability, laziness, identity and bad inputs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from concilium.store import ExplanationStore, canonical_json, params_hash

IDS = [f"s{i:02d}" for i in range(10)]
SHAPE = (5, 6)


def maps_for(start: int, stop: int) -> torch.Tensor:
    """Deterministic stand-in maps: row r is a function of r only."""
    g = torch.Generator().manual_seed(1234)
    full = torch.randn(len(IDS), *SHAPE, generator=g) * 3
    return full[start:stop]


def fill(entry, compute, *, fail_after: int | None = None) -> int:
    """Fill the missing chunks like the CLI does; raise after ``fail_after`` chunks."""
    calls = 0
    for start, stop in entry.missing_chunks():
        if fail_after is not None and calls == fail_after:
            raise RuntimeError("simulated kill")
        entry.write(start, compute(start, stop))
        calls += 1
    return calls


def new_entry(run, *, params=None, dtype="float32", chunk=4, meta=None):
    store = ExplanationStore(run)
    return store.entry("m0", "saliency", params or {"reduction": "sum"}, IDS, shape=SHAPE,
                       dtype=dtype, chunk_size=chunk, meta=meta)


def chunk_files(run: Path) -> dict[str, bytes]:
    root = run / "explanations.zarr"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "/c/" in p.as_posix()
    }


# -- (a) hand values ----------------------------------------------------------------------------


def test_params_hash_is_sha256_of_canonical_json():
    params = {"steps": 50, "baseline": "zero", "nested": {"b": [1, 2], "a": True}}
    text = '{"baseline":"zero","nested":{"a":true,"b":[1,2]},"steps":50}'
    assert canonical_json(params) == text
    assert params_hash(params) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_write_then_read_round_trip(tmp_path):
    entry = new_entry(tmp_path)
    assert entry.missing_chunks() == [(0, 4), (4, 8), (8, 10)]
    assert not entry.complete
    entry.write(0, maps_for(0, 8))  # two chunks in one call
    entry.write(8, maps_for(8, 10))  # the short last chunk
    assert entry.complete and entry.missing_chunks() == []
    assert torch.equal(entry.read(), maps_for(0, 10))
    assert entry.read().dtype == torch.float32


def test_source_names_are_encoded_but_kept(tmp_path):
    store = ExplanationStore(tmp_path)
    entry = store.entry("ens-avg:head", "gradcam", {}, IDS, shape=SHAPE)
    assert (tmp_path / "explanations.zarr" / "entries" / "ens-avg%3Ahead").is_dir()
    assert store.get("ens-avg:head", "gradcam").params_hash == entry.params_hash


# -- (b) properties: resumability, no recomputation, identity -------------------------------------


def test_kill_and_resume_is_byte_identical(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    fill(new_entry(clean), maps_for)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fill(new_entry(killed), maps_for, fail_after=1)
    entry = new_entry(killed)
    assert entry.missing_chunks() == [(4, 8), (8, 10)]
    assert fill(entry, maps_for) == 2
    assert chunk_files(clean) == chunk_files(killed)
    assert torch.equal(new_entry(killed).read(), new_entry(clean).read())


_KILLER = """
import os, signal, zlib, numpy as np, zarr
group = zarr.open_group({path!r}, mode="r+")
maps = np.load({npy!r})
group["maps"][0:4] = maps[0:4]
group["done"][0] = zlib.crc32(maps[0:4].tobytes()) | (1 << 32)  # the mark: chunk_mark
group["maps"][4:8] = maps[4:8]   # chunk 1's data reaches the disk, its marker does not
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_between_data_and_marker_resumes(tmp_path):
    """A real SIGKILL (a lean child process writing the store's layout with zarr alone)."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    entry = new_entry(killed)
    np.save(tmp_path / "maps.npy", maps_for(0, 10).numpy())
    path = killed / "explanations.zarr" / "entries" / "m0" / "saliency" / entry.params_hash
    code = _KILLER.format(path=str(path), npy=str(tmp_path / "maps.npy"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    entry = new_entry(killed)
    assert entry.missing_chunks() == [(4, 8), (8, 10)]
    fill(entry, maps_for)
    fill(new_entry(clean), maps_for)
    assert chunk_files(clean) == chunk_files(killed)


def test_rerun_computes_nothing(tmp_path):
    calls = []

    def compute(start, stop):
        calls.append(start)
        return maps_for(start, stop)

    fill(new_entry(tmp_path), compute)
    assert calls == [0, 4, 8]
    assert fill(new_entry(tmp_path), compute) == 0
    assert calls == [0, 4, 8]


def test_changed_params_make_a_new_entry(tmp_path):
    a = new_entry(tmp_path, params={"reduction": "sum"})
    fill(a, maps_for)
    b = new_entry(tmp_path, params={"reduction": "abs_sum"})
    c = new_entry(tmp_path, params={"reduction": "sum"})
    assert b.params_hash != a.params_hash and c.params_hash == a.params_hash
    assert len(b.missing_chunks()) == 3 and c.complete
    assert len(ExplanationStore(tmp_path).entries()) == 2


def test_lookup_finds_only_existing_entries(tmp_path):
    store = ExplanationStore(tmp_path)
    assert store.lookup("m0", "saliency", {"reduction": "sum"}) is None
    assert not (tmp_path / "explanations.zarr" / "entries").exists()  # lookup creates nothing
    made = new_entry(tmp_path)
    found = store.lookup("m0", "saliency", {"reduction": "sum"})
    assert found is not None and found.params_hash == made.params_hash
    assert store.lookup("m0", "saliency", {"reduction": "l2"}) is None


def test_key_order_and_tuples_do_not_change_the_hash():
    assert params_hash({"a": 1, "b": (1, 2)}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_float16_option(tmp_path):
    entry = new_entry(tmp_path, dtype="float16")
    fill(entry, maps_for)
    assert entry.dtype == "float16"
    assert ExplanationStore(tmp_path)._root["entries/m0/saliency"][entry.params_hash]["maps"].dtype == np.float16
    out = entry.read()
    assert out.dtype == torch.float32
    assert torch.equal(out, maps_for(0, 10).half().float())
    assert not torch.equal(out, maps_for(0, 10))  # really rounded


def test_float16_overflow_is_refused(tmp_path):
    entry = new_entry(tmp_path, dtype="float16")
    with pytest.raises(ValueError, match="float16's range"):
        entry.write(0, torch.full((4, *SHAPE), 1e6))
    assert entry.missing_chunks()[0] == (0, 4)


def test_lazy_read_touches_only_requested_chunks(tmp_path):
    entry = new_entry(tmp_path)
    fill(entry, maps_for)
    root = tmp_path / "explanations.zarr" / "entries" / "m0" / "saliency" / entry.params_hash
    for chunk in ("1", "2"):  # corrupt every chunk but the first: reading them would fail
        (root / "maps" / "c" / chunk / "0" / "0").write_bytes(b"garbage")
    assert torch.equal(entry.read([3, 0, 3]), maps_for(0, 10)[[3, 0, 3]])
    assert torch.equal(entry.read(slice(1, 3)), maps_for(1, 3))
    assert torch.equal(entry.read(2), maps_for(2, 3))
    with pytest.raises(Exception):  # noqa: B017  (zstd's own error type)
        entry.read([5])


def test_read_by_mask_and_sample_id(tmp_path):
    entry = new_entry(tmp_path)
    fill(entry, maps_for)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 9]] = True
    assert torch.equal(entry.read(mask), maps_for(0, 10)[[1, 9]])
    assert entry.rows_of(["s09", "s01"]) == [9, 1]
    assert torch.equal(entry.read(slice(None, None, -3)), maps_for(0, 10)[[9, 6, 3, 0]])
    assert entry.read([]).shape == (0, *SHAPE)
    assert torch.equal(entry.read(torch.tensor([-1])), maps_for(9, 10))


def test_entries_table(tmp_path):
    fill(new_entry(tmp_path, params={"k": 1}), maps_for)
    half = new_entry(tmp_path, params={"k": 2})
    half.write(0, maps_for(0, 4))
    table = ExplanationStore(tmp_path).entries()
    assert list(table.columns[:6]) == ["source", "method", "params_hash", "params", "n", "complete"]
    by_params = table.set_index("params")
    assert by_params.loc['{"k":1}', "complete"] and not by_params.loc['{"k":2}', "complete"]
    assert by_params.loc['{"k":2}', "chunks_done"] == 1 and by_params.loc['{"k":2}', "n"] == 10
    assert ExplanationStore(tmp_path / "empty").entries().empty


def test_metadata_is_recorded(tmp_path):
    entry = new_entry(tmp_path, meta={"dataset_fingerprint": "abc", "seed": 3})
    attrs = dict(ExplanationStore(tmp_path)._root[f"entries/m0/saliency/{entry.params_hash}"].attrs)
    assert attrs["meta"] == {"dataset_fingerprint": "abc", "seed": 3}
    assert set(attrs["versions"]) >= {"concilium", "torch", "captum", "numpy"}
    assert attrs["sample_ids"] == IDS and attrs["created"]


def test_cache_array_computes_once(tmp_path):
    store = ExplanationStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    first = store.cache_array("baselines", {"gen": "x"}, compute)
    again = ExplanationStore(tmp_path).cache_array("baselines", {"gen": "x"}, compute)
    other = store.cache_array("baselines", {"gen": "y"}, compute)
    assert len(calls) == 2 and torch.equal(first, again) and torch.equal(other, first)


# -- errors ---------------------------------------------------------------------------------------


def test_get_unique_ambiguous_and_missing(tmp_path):
    a = new_entry(tmp_path, params={"k": 1})
    b = new_entry(tmp_path, params={"k": 2})
    store = ExplanationStore(tmp_path)
    with pytest.raises(ValueError, match="2 entries match m0/saliency") as err:
        store.get("m0", "saliency")
    assert a.params_hash in str(err.value) and b.params_hash in str(err.value)
    assert store.get("m0", "saliency", a.params_hash[:6]).params == {"k": 1}
    with pytest.raises(ValueError, match="stored: m0/saliency"):
        store.get("m1", "saliency")


def test_reopen_with_other_samples_dtype_or_model_raises(tmp_path):
    new_entry(tmp_path, meta={"model_fingerprint": "aaa"})
    store = ExplanationStore(tmp_path)
    with pytest.raises(ValueError, match="other samples"):
        store.entry("m0", "saliency", {"reduction": "sum"}, IDS[::-1], shape=SHAPE)
    with pytest.raises(ValueError, match="stored as float32"):
        new_entry(tmp_path, dtype="float16")
    with pytest.raises(ValueError, match="model_fingerprint"):
        new_entry(tmp_path, meta={"model_fingerprint": "bbb"})
    with pytest.raises(ValueError, match="shape"):
        store.entry("m0", "saliency", {"reduction": "sum"}, IDS, shape=(6, 5))


def test_reading_unfinished_rows_raises(tmp_path):
    entry = new_entry(tmp_path)
    entry.write(4, maps_for(4, 8))
    assert torch.equal(entry.read(slice(4, 8)), maps_for(4, 8))
    with pytest.raises(ValueError, match=r"unfinished chunks \[0, 2\]"):
        entry.read()


@pytest.mark.parametrize(
    ("start", "maps", "match"),
    [
        (1, torch.zeros(4, *SHAPE), "chunk start"),
        (0, torch.zeros(3, *SHAPE), "whole chunks"),
        (8, torch.zeros(4, *SHAPE), "whole chunks"),
        (0, torch.zeros(4, 6, 5), "like the entry"),
        (0, torch.full((4, *SHAPE), float("nan")), "NaN"),
        (0, torch.zeros(4, 1, *SHAPE), "reduce the channel axis"),
    ],
)
def test_bad_writes_raise(tmp_path, start, maps, match):
    entry = new_entry(tmp_path)
    with pytest.raises(ValueError, match=match):
        entry.write(start, maps)
    assert entry.done_chunks().sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"params": {"t": torch.zeros(2)}}, TypeError, "has type Tensor"),
        ({"params": {"x": float("nan")}}, ValueError, "finite"),
        ({"sample_ids": ["a", "a"]}, ValueError, "unique"),
        ({"sample_ids": []}, ValueError, "empty"),
        ({"shape": (5,)}, ValueError, "shape must be"),
        ({"dtype": "float64"}, ValueError, "dtype must be"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"source": ""}, ValueError, "source must be"),
    ],
)
def test_bad_entry_arguments_raise(tmp_path, kwargs, error, match):
    args = {"source": "m0", "method": "saliency", "params": {}, "sample_ids": IDS, "shape": SHAPE}
    args.update(kwargs)
    store = ExplanationStore(tmp_path)
    with pytest.raises(error, match=match):
        store.entry(args.pop("source"), args.pop("method"), args.pop("params"),
                    args.pop("sample_ids"), **args)


def test_read_only_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="concilium explain"):
        ExplanationStore(tmp_path / "nothing", mode="r")
    fill(new_entry(tmp_path), maps_for)
    store = ExplanationStore(tmp_path, mode="r")
    assert store.get("m0", "saliency").complete
    with pytest.raises(ValueError, match="read-only"):
        store.entry("m0", "x", {}, IDS, shape=SHAPE)
    assert not os.path.exists(tmp_path / "nothing")


class _Recorder:
    """Entry stand-in for the background writer: records writes, can fail or be slow."""

    def __init__(self, log, *, fail_at=None, delay=0.0):
        self.log, self.fail_at, self.delay = log, fail_at, delay

    def write(self, start, maps):
        import time

        time.sleep(self.delay)
        if start == self.fail_at:
            raise OSError("disk full")
        self.log.append(start)


def test_background_writer_keeps_order_and_finishes_on_close():
    from concilium.store.writer import ChunkWriter

    log = []
    writer = ChunkWriter(max_pending=2)
    for start in range(6):
        writer.submit(_Recorder(log, delay=0.01), start, torch.zeros(1, 2, 2))
    writer.close()
    assert log == list(range(6))


def test_background_writer_fails_fast_and_drops_queued_writes():
    from concilium.store.writer import ChunkWriter

    log = []
    writer = ChunkWriter(max_pending=10)
    writer.submit(_Recorder(log, fail_at=0, delay=0.05), 0, torch.zeros(1, 2, 2))
    for start in range(1, 4):
        writer.submit(_Recorder(log), start, torch.zeros(1, 2, 2))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert log == []  # queued writes after the failure were cancelled
