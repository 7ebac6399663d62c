"""Soak the CLI with generated broken inputs: count tracebacks, hangs and wrong exit codes.

Each case copies a small real world (a folder dataset, two saved members, an explained run; see
``tests/cli/hostile_world.py``), breaks one thing in it with a seeded generator (a folder
dataset, a checkpoint or member card, an experiment file, a run folder, or the command line),
and runs the command that reads it: in-process through the console entry point ``main`` (with
an alarm as the hang guard), and every ``--subprocess-every``-th case as a real
``python -m concilium.cli.main`` process with three times the timeout (its imports alone take
tens of seconds on a loaded machine). The goal is zero tracebacks, zero hangs
and zero exit codes other than 0 (the input was handled) or 2 (refused with a message).

Usage::

    nice .venv/bin/python benchmarks/soak_hostile.py [--cases 1000] [--seed 0]
        [--timeout 60] [--subprocess-every 50] [--memory-gb 10] [--log soak.jsonl]

Prints the counts per kind of input and per outcome, and every case that failed the goal with
the command that reproduces it (``--only K`` reruns case K alone).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "cli")]  # this checkout, not another

from hostile_world import build_world, invoke  # noqa: E402

KINDS = ("data", "checkpoint", "card", "config", "run", "argv")


class Hang(Exception):
    """Raised by the alarm when a case runs past its timeout."""


# --- breaking things ------------------------------------------------------------------------


def _any_file(folder: Path, rng: random.Random, pattern: str = "*") -> Path:
    files = sorted(p for p in folder.rglob(pattern) if p.is_file())
    return rng.choice(files)


def _garbage(rng: random.Random, n: int | None = None) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n if n is not None else rng.randint(0, 300)))


def _hostile_value(rng: random.Random):
    return rng.choice([
        None, True, -1, 0, 10**30, -(10**30), 1.5, float("inf"), "", "x" * rng.randint(1, 5000),
        "<script>alert(1)</script>", "../../etc/passwd", "\u202e\u0000nul", [], [1, "a"], {},
        {"a": {"b": [None]}}, "caf\u00e9", "日本",
    ])


def break_data(data: Path, rng: random.Random) -> str:
    images = data / "images"
    choice = rng.randrange(16)
    img = _any_file(images, rng)
    mask = data / "masks" / img.parent.name / (img.stem + ".png")
    if choice == 0:
        raw = img.read_bytes()
        img.write_bytes(raw[: rng.randint(0, len(raw) - 1)])
        return "truncated image"
    if choice == 1:
        img.write_bytes(_garbage(rng))
        return "garbage image"
    if choice == 2:
        raw = bytearray(img.read_bytes())
        for _ in range(rng.randint(1, 10)):
            raw[rng.randrange(len(raw))] = rng.getrandbits(8)
        img.write_bytes(bytes(raw))
        return "byte-flipped image"
    if choice == 3:
        mask.unlink()
        return "missing mask"
    if choice == 4:
        w, h = rng.randint(1, 40), rng.randint(1, 40)
        Image.new(rng.choice(["1", "L", "RGB", "RGBA", "P", "I;16"]), (w, h)).save(mask)
        return "mask of another size/mode"
    if choice == 5:
        mode = rng.choice(["I;16", "P", "RGBA", "LA", "CMYK", "L", "1"])
        arr = np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (16, 16, 3), np.uint8)
        im = Image.fromarray(arr).convert("RGB")
        im = im.convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
        if mode == "CMYK":
            img.unlink()
            im.save(img.with_suffix(".jpg"))
        else:
            im.save(img, format="PNG")
        return f"image in mode {mode}"
    if choice == 6:
        (images / rng.choice(["a", "b"]) / f"{img.stem}.jpg").write_bytes(img.read_bytes())
        return "duplicate id"
    if choice == 7:
        target = os.path.join(os.fsencode(img.parent), b"bad\xff\xfe.png")
        shutil.copy(img, os.fsdecode(target))
        return "non-UTF-8 file name"
    if choice == 8:
        (data / "splits.csv").write_bytes(rng.choice([
            b"", b"id,split\n", b"id,split\ns0,train\n", _garbage(rng), b"id\n" + _garbage(rng),
            b"id,split\n" + b"".join(f"s{i},{rng.choice(['train', 'x', ''])}\n".encode()
                                     for i in range(8)),
        ]))
        return "broken splits.csv"
    if choice == 9:
        (data / "attributes.csv").write_bytes(rng.choice([
            b"id,a\n" + b"".join(f"s{i},{rng.choice(['0', '1', '2', 'x'])}\n".encode()
                                 for i in range(8)),
            b"id\n", _garbage(rng), b"\xff\xfe\x00",
        ]))
        return "broken attributes.csv"
    if choice == 10:
        card = json.loads((data / "card.json").read_text())
        key = rng.choice(["class_names", "class_part_values", "card", "format", "version"])
        card[key] = _hostile_value(rng)
        (data / "card.json").write_text(json.dumps(card))
        return f"card.json {key} wrong"
    if choice == 11:
        (data / "card.json").write_bytes(rng.choice([
            b"", b"[" * 100_000, b"{\"card\": " * 5000, _garbage(rng), b"null", b"1e999",
        ]))
        return "card.json not JSON"
    if choice == 12:
        (images / "stray.png").write_bytes(img.read_bytes())
        return "stray file in images/"
    if choice == 13:
        (images / "empty-class").mkdir()
        return "empty label folder"
    if choice == 14:
        struct_png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
                      + struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0) + b"\0\0\0\0")
        img.write_bytes(struct_png)
        return "decompression bomb header"
    shutil.rmtree(data / "masks")
    return "no masks/"


def _safetensors(header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + body


def break_checkpoint(models: Path, rng: random.Random) -> str:
    member = models / rng.choice(["m0", "m1"])
    weights = member / "model.safetensors"
    raw = weights.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    choice = rng.randrange(12)
    if choice == 0:
        weights.write_bytes(raw[: rng.randint(0, len(raw) - 1)])
        return "truncated safetensors"
    if choice == 1:
        weights.write_bytes(_safetensors(header, body, length=rng.choice([2**63, 2**40, 10**9])))
        return "huge header length"
    if choice == 2:
        weights.write_bytes(_safetensors(raw[8 : 8 + n][: rng.randint(1, n - 1)] + b"}}{", body))
        return "malformed header JSON"
    if choice == 3:
        key = rng.choice(names)
        header[key]["dtype"] = rng.choice(["F64", "I64", "BOOL", "U8", "F16", "BF16", "XYZ", ""])
        weights.write_bytes(_safetensors(header, body))
        return "wrong dtype"
    if choice == 4:
        key = rng.choice(names)
        header[key]["shape"] = rng.choice([[], [0], [10**12], [-1], ["a"], [3, 3, 3, 3, 3]])
        weights.write_bytes(_safetensors(header, body))
        return "wrong shape"
    if choice == 5:
        key = rng.choice(names)
        header[key]["data_offsets"] = rng.choice([[0, 10**12], [5, 1], [-1, 4], [0]])
        weights.write_bytes(_safetensors(header, body))
        return "offsets out of range"
    if choice == 6:
        del header[rng.choice(names)]
        weights.write_bytes(_safetensors(header, body))
        return "missing tensor"
    if choice == 7:
        header["__metadata__"] = {"x": "<b>" * 1000}
        header["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        weights.write_bytes(_safetensors(header, body))
        return "unexpected tensor + markup metadata"
    if choice == 8:
        weights.write_bytes(_garbage(rng))
        return "garbage weights"
    if choice == 9:
        weights.unlink()
        return "missing weights"
    if choice == 10:
        arr = np.frombuffer(body, dtype=np.uint8).copy()
        arr[: len(arr) // 4 * 4].view(np.float32)[:] = rng.choice([np.nan, np.inf, 1e38])
        weights.write_bytes(_safetensors(header, arr.tobytes()))
        return "NaN/inf weights"
    pt = member / "model.pt"
    pt.write_bytes(b"\x80\x04\x95" + _garbage(rng, 40))
    weights.unlink()
    return "pickle instead of safetensors"


def break_card(models: Path, rng: random.Random) -> str:
    card_path = models / rng.choice(["m0", "m1"]) / "card.json"
    card = json.loads(card_path.read_text())
    choice = rng.randrange(5)
    if choice == 0:
        key = rng.choice(sorted(card))
        card[key] = _hostile_value(rng)
        card_path.write_text(json.dumps(card))
        return f"card {key} wrong type/value"
    if choice == 1:
        del card[rng.choice(sorted(card))]
        card_path.write_text(json.dumps(card))
        return "card field missing"
    if choice == 2:
        length, count = rng.choice([(10, 50_000), (10**7, 2), (10**6, 3)])  # 0.6 to 20 MB
        card["class_names"] = ["x" * length] * count
        card_path.write_text(json.dumps(card))
        return "card enormous field"
    if choice == 3:
        card_path.write_bytes(rng.choice([b"", b"[" * 50_000, _garbage(rng), b"\xff\xfe"]))
        return "card not JSON"
    card["gradcam_layer"] = rng.choice(["nope", "", "features.99", "<img src=x onerror=alert(1)>"])
    card_path.write_text(json.dumps(card))
    return "card bad gradcam layer"


SECTIONS = {
    "data": {"kind": ["synthetic", "folder", "nope", 3], "n": [0, -5, "x", 10**12, 40],
             "size": [1, 32, "big", 10**6], "path": ["/nonexistent", 3, ""]},
    "models": {"arch": ["small-cnn", "nope", ""], "members": [0, -1, "two", 10**9],
               "diversity": ["head", "heads", None], "epochs": [-1, 0, 1.5, "x"]},
    "explain": {"methods": [["saliency"], ["nope"], [], "saliency", [3]],
                "split": ["test", "tst"], "limit": [0, -1, "x"], "target": ["label", "zzz"]},
    "evaluate": {"metrics": [["auc"], ["nope"], "auc", []], "mask": ["masks", 3]},
    "report": {"gallery_images": [-1, "x", 2], "title": ["<script>alert(1)</script>", 3]},
    "ensemble": {"kinds": [["ens-avg"], ["nope"], "ens-avg"]},
    "nonsense": {"x": [1]},
}


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '"none"'
    return repr(v)


def break_config(path: Path, rng: random.Random) -> str:
    choice = rng.randrange(6)
    if choice == 0:
        path.write_bytes(_garbage(rng))
        return "garbage config"
    if choice == 1:
        path.write_text(rng.choice(["[data", "data = ", "[data]\nn = \n", "a = [[[[", "x = 1\nx = 2",
                                    "[[data]]\n", "= 3"]))
        return "TOML syntax error"
    if choice == 2:
        path.write_text("a = " + "[" * 5000 + "]" * 5000)
        return "deeply nested TOML"
    lines = []
    for section in rng.sample(sorted(SECTIONS), rng.randint(1, 4)):
        lines.append(f"[{section}]")
        keys = SECTIONS[section]
        for key in rng.sample(sorted(keys), rng.randint(1, len(keys))):
            lines.append(f"{key} = {_toml_value(rng.choice(keys[key]))}")
    path.write_text("\n".join(lines) + "\n")
    return "random config values"


def break_run(run: Path, rng: random.Random) -> str:
    choice = rng.randrange(5)
    record = run / "run.json"
    if choice == 0:
        record.write_bytes(rng.choice([b"", b"{}", _garbage(rng), b"[" * 50_000]))
        return "run.json not a record"
    if choice == 1:
        info = json.loads(record.read_text())
        key = rng.choice(sorted(info))
        info[key] = _hostile_value(rng)
        record.write_text(json.dumps(info))
        return f"run.json {key} wrong"
    if choice == 2:
        shutil.rmtree(rng.choice([p for p in run.iterdir() if p.is_dir()]))
        return "run subfolder removed"
    if choice == 3:
        victim = _any_file(run, rng)
        raw = victim.read_bytes()
        victim.write_bytes(raw[: len(raw) // 2] + _garbage(rng, 16))
        return f"run file corrupted ({victim.name})"
    info = json.loads(record.read_text())
    info["member_ids"] = ["<b>m0</b>", "m0\" onmouseover=\"alert(1)"]
    record.write_text(json.dumps(info))
    return "run.json markup member ids"


ARGV_POOL = ["--methods", "--metrics", "--kind", "--split", "--limit", "--device", "--seed",
             "--batch-size", "--size", "--out", "--models", "--param", "--target", "--baseline",
             "-x", "--", "", " ", "nan", "-1", "1e309", "saliency,,", "cuda:99", "auc,auc",
             "ens-avg", "gradcam.layer=", "x" * 300, "\u00e9", "--help-me"]


def break_argv(rng: random.Random) -> list[str]:
    command = rng.choice([["explain"], ["train"], ["evaluate"], ["ensemble"], ["audit"],
                          ["report"], ["run"], ["ganmex", "train"], ["ganmex", "info"],
                          ["ganmex"], ["nope"], []])
    return command + [rng.choice(ARGV_POOL) for _ in range(rng.randint(0, 6))]


# --- one case -------------------------------------------------------------------------------


def make_case(k: int, seed: int, world: dict[str, Path], work: Path) -> tuple[str, str, list[str]]:
    """``(kind, what was broken, argv)`` for case ``k``; copies what it breaks into ``work``."""
    rng = random.Random(seed * 1_000_003 + k)
    kind = KINDS[k % len(KINDS)]
    out = work / "out"
    explain = ["--methods", "saliency", "--batch-size", "8", "--limit", "2", "--out", str(out)]
    if kind == "data":
        data = shutil.copytree(world["data"], work / "data")
        what = break_data(data, rng)
        return kind, what, ["explain", str(data), "--models", str(world["models"]), *explain]
    if kind in ("checkpoint", "card"):
        models = shutil.copytree(world["models"], work / "models")
        what = (break_checkpoint if kind == "checkpoint" else break_card)(models, rng)
        if rng.random() < 0.2:
            return kind, what, ["ganmex", "info", str(models / "m0")]
        return kind, what, ["explain", str(world["data"]), "--models", str(models), *explain]
    if kind == "config":
        path = work / "experiment.toml"
        what = break_config(path, rng)
        return kind, what, ["run", str(path), "--dry-run", "--out", str(out)]
    if kind == "run":
        run = shutil.copytree(world["run"], work / "run")
        what = break_run(run, rng)
        command = rng.choice([["evaluate", str(run), "--metrics", "relevance_mass"],
                              ["report", str(run)], ["ensemble", str(run), "--kind", "ens-avg"],
                              ["audit", str(run), "--no-anonymisation"]])
        return kind, what, command
    argv = break_argv(rng)
    return kind, "random arguments", argv


def run_in_process(argv: list[str], timeout: int) -> dict:
    def on_alarm(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    try:
        o = invoke(argv)
        result = {"code": o.code, "traceback": o.traceback, "hang": False,
                  "detail": (o.escaped or o.err)[-2000:]}
    except Hang:
        result = {"code": None, "traceback": False, "hang": True, "detail": "timeout"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if result["detail"] and "Hang" in result["detail"] and "raise Hang" in result["detail"]:
        result.update(hang=True, traceback=False)
    result["seconds"] = time.perf_counter() - t0
    return result


def run_subprocess(argv: list[str], timeout: int, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "concilium.cli.main", *argv], cwd=cwd, env=env,
                           capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"code": None, "traceback": False, "hang": True, "detail": "timeout",
                "seconds": time.perf_counter() - t0}
    err = p.stderr.decode("utf-8", "backslashreplace")
    return {"code": p.returncode, "traceback": "Traceback (most recent call last)" in err,
            "hang": False, "detail": err[-2000:], "seconds": time.perf_counter() - t0}


def summarise(logs: list[Path], n: int) -> None:
    """Counts per kind and outcome of cases ``0..n-1`` over the ``--log`` files of shards."""
    seen: dict[int, dict] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record["case"] < n:
                seen.setdefault(record["case"], record)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in seen.values():
        counts[record["kind"]][record["outcome"]] += 1
        counts["all"][record["outcome"]] += 1
        counts["all"]["subprocess" if record["subprocess"] else "in-process"] += 1
    print(f"{len(seen)} of {n} cases logged")
    for kind in (*KINDS, "all"):
        if counts[kind]:
            print(f"  {kind:<11} " + ", ".join(f"{o}: {c}" for o, c in sorted(counts[kind].items())))
    for record in sorted(seen.values(), key=lambda r: r["case"]):
        if record["outcome"] in ("hang", "traceback") or record["outcome"].startswith("wrong"):
            print(f"case {record['case']} ({record['kind']}: {record['what']}): "
                  f"{record['outcome']}: {record['detail'][-300:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0,
                        help="first case (shards: --start 0 --cases 500, --start 500 --cases 1000)")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None,
                        help="print the counts of these --log files (cases 0..N-1, first wins)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--subprocess-every", type=int, default=50)
    parser.add_argument("--only", type=int, nargs="+", default=None,
                        help="run only these cases")
    parser.add_argument("--log", type=Path, default=None, help="one JSON line per case")
    parser.add_argument("--memory-gb", type=float, default=10.0,
                        help="address-space limit of this process and its subprocesses: a case "
                        "that tries to allocate more fails instead of starving the machine")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise, args.cases)
        return
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import torch

    torch.set_num_threads(1)
    base = Path(tempfile.mkdtemp(prefix="concilium-soak-"))
    world = build_world(base / "world")
    cases = args.only if args.only is not None else range(args.start, args.cases)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    log = args.log.open("w") if args.log else None
    t0 = time.perf_counter()
    for k in cases:
        work = base / f"case{k}"
        work.mkdir()
        kind, what, argv = make_case(k, args.seed, world, work)
        sub = args.subprocess_every > 0 and k % args.subprocess_every == 0
        os.chdir(work)  # whatever a command writes to a relative path stays in the case
        # a fresh process imports torch first: tens of seconds on a loaded machine
        r = (run_subprocess(argv, 3 * args.timeout, work) if sub
             else run_in_process(argv, args.timeout))
        outcome = ("hang" if r["hang"] else "traceback" if r["traceback"]
                   else "exit 0" if r["code"] == 0 else "exit 2" if r["code"] == 2
                   else f"wrong exit {r['code']}")
        counts[kind][outcome] += 1
        counts["all"][outcome] += 1
        counts["all"]["subprocess" if sub else "in-process"] += 1
        record = {"case": k, "kind": kind, "what": what, "argv": argv, "outcome": outcome,
                  "subprocess": sub, "seconds": round(r["seconds"], 3)}
        if outcome in ("hang", "traceback") or outcome.startswith("wrong"):
            failures.append({**record, "detail": r["detail"]})
        if log:
            log.write(json.dumps({**record, "detail": r["detail"][-300:]}) + "\n")
            log.flush()
        os.chdir(base)
        shutil.rmtree(work, ignore_errors=True)
        if (k + 1) % 50 == 0:
            print(f"{k + 1} cases, {time.perf_counter() - t0:.0f} s: {dict(counts['all'])}",
                  file=sys.stderr, flush=True)
    shutil.rmtree(base, ignore_errors=True)

    print(f"seed {args.seed}, {len(cases)} cases, {time.perf_counter() - t0:.0f} s")
    for kind in (*KINDS, "all"):
        if counts[kind]:
            print(f"  {kind:<11} " + ", ".join(f"{o}: {c}" for o, c in sorted(counts[kind].items())))
    bad = {o: c for o, c in counts["all"].items()
           if o in ("hang", "traceback") or o.startswith("wrong")}
    print(f"tracebacks {bad.get('traceback', 0)}, hangs {bad.get('hang', 0)}, wrong exit codes "
          f"{sum(c for o, c in bad.items() if o.startswith('wrong'))}")
    for f in failures:
        print(f"\ncase {f['case']} ({f['kind']}: {f['what']}): {f['outcome']}\n  argv: "
              f"{' '.join(f['argv'])}\n  rerun: benchmarks/soak_hostile.py --seed {args.seed} "
              f"--only {f['case']}\n  " + f["detail"][-1200:].replace("\n", "\n  "))


if __name__ == "__main__":
    main()
