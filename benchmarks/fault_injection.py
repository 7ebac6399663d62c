"""Fault injection: kill ``concilium explain``, ``ensemble`` and ``evaluate`` at random points
(SIGKILL, seeded delays), resume each with the same command, and check that the resumed results
equal an uninterrupted run's, bit for bit.

Setup (in a temporary folder): a small image folder and two members with random weights
(small-cnn); the reference is one uninterrupted ``explain`` -> ``ensemble`` -> ``evaluate``,
snapshotted after each command. Each trial takes the snapshot before its command (an empty run
for explain), runs the command in a forked child, SIGKILLs it after a delay drawn uniformly from
``[0, 1.2 x the command's uninterrupted time]`` (so some kills land before any work and some
after the end; a kill after the end gives the command's current full time, which becomes the next
estimate, so the delays follow the machine's load; ``--hits`` runs until that many kills hit a
running command), then runs the same command to completion and compares:

- explain and ensemble: every entry of the store (sources, methods, hashes, finished chunks,
  maps bit-identical, every mark's checksum verified) and every result table;
- evaluate: ``results/metrics.parquet`` (rows sorted by their key; values bit-identical, NaN
  where NaN).

The children are forked from this process after the imports, so a trial costs the command's work
and not Python's start-up (the CLI's ``main`` runs in the child exactly as on the command line;
its output goes to ``trial-XX.log``).

Usage::

    .venv/bin/python benchmarks/fault_injection.py [--kills 50] [--hits] [--seed 0] [--n 32]
        [--metrics localisation,complexity,deletion] [--keep DIR]

Prints one line per trial and a summary: kills, kills that hit the command while it ran,
resumed results equal to the reference (goal: all).

Result (2026-12-02, 2 shared CPU cores under load from other jobs):
``--kills 50 --seed 0`` (32 images): 50 kills, 30 of them while the command ran (explain 4,
ensemble 16, evaluate 10: the explain reference took 48 s under load, later runs ~15 s, so most
explain kills came after the end; hence the adaptive estimate and ``--hits``), 50/50 resumed
runs equal to the uninterrupted run, bit for bit; 2330 s.
``--kills 50 --hits --n 16 --seed 1`` (16 images): 61 kills, 50 of them while the command ran
(explain 17, ensemble 16, evaluate 17), 61/61 resumed runs equal to the uninterrupted run, bit
for bit; 1102 s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from concilium.cli import (  # noqa: F401  (imported before forking: children start warm)
    ensemble as _ensemble_cli,
)
from concilium.cli import (
    evaluate as _evaluate_cli,  # noqa: F401
)
from concilium.cli import (
    explain as _explain_cli,  # noqa: F401
)
from concilium.cli.main import main
from concilium.data.dataset import ImageDataset
from concilium.data.folder import write_folder
from concilium.models.architectures import create_model
from concilium.models.members import MemberCard, save_member
from concilium.store import ExplanationStore, read_table

COMMANDS = ("explain", "ensemble", "evaluate")
METHODS = "saliency,integrated_gradients,gradcam"
METRICS = "localisation,complexity,deletion"


def make_inputs(root: Path, *, n: int, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """An image folder of ``n`` images and two random-weight members; returns (data, models)."""
    g = torch.Generator().manual_seed(seed)
    data = ImageDataset(
        images=(torch.rand(n, 3, size, size, generator=g) * 255).round() / 255,
        labels=torch.arange(n) % 2, masks=torch.rand(n, size, size, generator=g) > 0.6,
        ids=[f"s{i:03d}" for i in range(n)], splits=(["train", "val", "test", "test"] * n)[:n],
        class_names=["a", "b"],
    )
    write_folder(data, root / "data")
    for k in range(2):
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1 + k)
            model = create_model("small-cnn", num_classes=2)
        card = MemberCard(member_id=f"m{k}", arch="small-cnn", num_classes=2,
                          class_names=["a", "b"], image_size=(size, size), seed=seed + 1 + k,
                          diversity="seed", epochs=0, gradcam_layer=model.gradcam_layer,
                          data_fingerprint=data.fingerprint())
        save_member(model.eval(), card, root / "models" / f"m{k}")
    return root / "data", root / "models"


def argv(command: str, run: Path, data: Path, models: Path) -> list[str]:
    """The command line of ``command`` on ``run``."""
    if command == "explain":
        params = (["--param", "integrated_gradients.n_steps=16"]
                  if "integrated_gradients" in METHODS.split(",") else [])
        return ["explain", str(data), "--models", str(models), "--out", str(run), "--methods",
                METHODS, "--split", "all", "--chunk-size", "4", "--batch-size", "8", *params]
    if command == "ensemble":
        return ["ensemble", str(run), "--kind", "ens-avg"]
    return ["evaluate", str(run), "--metrics", METRICS, "--split", "all"]


def _child(args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["concilium", *args]
    try:
        main()
    except SystemExit as err:
        os._exit(err.code if isinstance(err.code, int) else 1)
    os._exit(0)


def run_child(args: list[str], log: Path, *, kill_after: float | None = None
              ) -> tuple[int | None, float, bool]:
    """Run the CLI with ``args`` in a forked child; SIGKILL it after ``kill_after`` seconds.

    Returns:
        ``(exit code or None when killed, seconds, whether the kill hit a running child)``.
    """
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_child, args=(args, str(log)))
    t0 = time.perf_counter()
    proc.start()
    proc.join(kill_after)
    killed = False
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        killed = True
    seconds = time.perf_counter() - t0
    return (None if killed else proc.exitcode), seconds, killed


# -- comparing runs ----------------------------------------------------------------------------


def store_state(run: Path) -> dict[tuple[str, str, str], np.ndarray]:
    """Every entry's maps (finished chunks only; NaN rows where unfinished), all marks verified."""
    store = ExplanationStore(run, mode="r")
    out = {}
    for row in store.entries().itertuples():
        entry = store.get(row.source, row.method, row.params_hash)
        bad = entry.verify()
        if bad:
            raise AssertionError(f"{row.source}/{row.method}: damaged chunks {bad}")
        done = entry.done_chunks()
        maps = np.full(entry.shape, np.nan, dtype=np.float32)
        for c in np.flatnonzero(done).tolist():
            start, stop = entry.chunk_rows(c)
            maps[start:stop] = entry.read(slice(start, stop)).numpy()
        out[(row.source, row.method, row.params_hash)] = maps
    return out


def tables(run: Path) -> dict[str, pd.DataFrame]:
    results = run / "results"
    out = {}
    for path in sorted(results.glob("*.parquet")) if results.is_dir() else []:
        table = read_table(run, path.stem)
        keys = [c for c in table.columns if c != "value" and table[c].dtype == object]
        out[path.stem] = table.sort_values(keys, kind="stable", ignore_index=True) if keys else table
    return out


def same(a: Path, b: Path) -> str | None:
    """``None`` when the runs hold the same maps and tables, else what differs."""
    sa, sb = store_state(a), store_state(b)
    if sa.keys() != sb.keys():
        return f"entries differ: {sorted(set(sa) ^ set(sb))}"
    for key in sa:
        if not np.array_equal(sa[key], sb[key], equal_nan=True):
            diff = np.nanmax(np.abs(sa[key] - sb[key]))
            return f"maps of {'/'.join(key)} differ (max |diff| {diff:.3g})"
    ta, tb = tables(a), tables(b)
    if ta.keys() != tb.keys():
        return f"tables differ: {sorted(set(ta) ^ set(tb))}"
    for name in ta:
        try:
            pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True)
        except AssertionError as err:
            return f"table {name} differs: {str(err).splitlines()[0]}"
    return None


# -- the trials --------------------------------------------------------------------------------


@dataclass
class Trial:
    index: int
    command: str
    delay: float
    hit: bool
    equal: bool
    detail: str
    seconds: float
    run_seconds: float | None = None  # the killed run's time when it ended before the kill


def prepare_reference(work: Path, data: Path, models: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The uninterrupted run, snapshotted before each command; and each command's time."""
    snapshots, durations = {}, {}
    run = work / "reference"
    for command in COMMANDS:
        snap = work / f"before-{command}"
        if run.exists():
            shutil.copytree(run, snap)
        else:
            snap.mkdir()
        snapshots[command] = snap
        code, seconds, _ = run_child(argv(command, run, data, models), work / f"ref-{command}.log")
        if code != 0:
            raise SystemExit(f"reference {command} failed (status {code}); see "
                             f"{work / f'ref-{command}.log'}")
        durations[command] = seconds
    snapshots["reference"] = run
    return snapshots, durations


def trial(index: int, command: str, delay: float, work: Path, snapshots: dict[str, Path],
          data: Path, models: Path) -> Trial:
    run = work / f"trial-{index:02d}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(snapshots[command], run)
    log = work / f"trial-{index:02d}.log"
    t0 = time.perf_counter()
    _, first_seconds, hit = run_child(argv(command, run, data, models), log, kill_after=delay)
    code, _, _ = run_child(argv(command, run, data, models), log)
    if code != 0:
        detail = f"resume failed with status {code} (see {log})"
        equal = False
    else:
        # the reference after this command: the full reference for the last command's outputs
        detail = same(run, _reference_after(command, snapshots)) or "equal"
        equal = detail == "equal"
    seconds = time.perf_counter() - t0
    if equal:
        shutil.rmtree(run, ignore_errors=True)
    return Trial(index, command, delay, hit, equal, detail, seconds,
                 None if hit else first_seconds)


def _reference_after(command: str, snapshots: dict[str, Path]) -> Path:
    following = COMMANDS.index(command) + 1
    return snapshots[COMMANDS[following]] if following < len(COMMANDS) else snapshots["reference"]


def run_trials(kills: int, *, seed: int, n: int, work: Path,
               echo=functools.partial(print, flush=True), hits: bool = False
               ) -> tuple[list[Trial], dict[str, float]]:
    """``kills`` trials (or, with ``hits``, trials until ``kills`` of them killed the command
    while it ran, at most ``3 * kills``). A kill that came after the command ended tells how long
    the whole command took on the machine as it is now: that time replaces the command's
    estimate, so the delays follow the machine's load."""
    data, models = make_inputs(work, n=n, seed=seed)
    snapshots, durations = prepare_reference(work, data, models)
    echo("uninterrupted: " + ", ".join(f"{c} {s:.1f} s" for c, s in durations.items()))
    rng = np.random.default_rng(seed)
    out: list[Trial] = []
    i = 0
    while (sum(t.hit for t in out) if hits else len(out)) < kills and i < (3 if hits else 1) * kills:
        command = COMMANDS[i % len(COMMANDS)]
        delay = float(rng.uniform(0.0, 1.2 * durations[command]))
        t = trial(i, command, delay, work, snapshots, data, models)
        if not t.hit and t.run_seconds is not None:
            durations[command] = t.run_seconds
        echo(f"{i:3d} {command:9s} kill at {delay:6.2f} s ({'hit' if t.hit else 'after the end'}):"
             f" {t.detail} ({t.seconds:.1f} s)")
        out.append(t)
        i += 1
    return out, durations


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=32, help="images (all explained)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    parser.add_argument("--hits", action="store_true",
                        help="count only kills that hit a running command (run until --kills)")
    parser.add_argument("--metrics", default=None, help=f"evaluate's metrics ({METRICS})")
    args = parser.parse_args()
    if args.metrics:
        globals()["METRICS"] = args.metrics
    torch.set_num_threads(1)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else
          tempfile.TemporaryDirectory(prefix="concilium-faults-")) as folder:
        work = Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        trials, _ = run_trials(args.kills, seed=args.seed, n=args.n, work=work, hits=args.hits)
        hits = sum(t.hit for t in trials)
        equal = sum(t.equal for t in trials)
        print(f"\n{len(trials)} kills ({hits} while the command ran), "
              f"{equal}/{len(trials)} resumed runs equal to the uninterrupted run "
              f"({time.perf_counter() - t0:.0f} s)")
        for c in COMMANDS:
            mine = [t for t in trials if t.command == c]
            print(f"  {c}: {sum(t.equal for t in mine)}/{len(mine)} equal, "
                  f"{sum(t.hit for t in mine)} kills mid-run")
        for t in trials:
            if not t.equal:
                print(f"  trial {t.index} ({t.command}, kill at {t.delay:.2f} s): {t.detail}")
        sys.exit(0 if equal == len(trials) else 1)


if __name__ == "__main__":
    main_cli()
