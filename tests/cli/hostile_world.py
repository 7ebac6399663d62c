"""A tiny but real world for the CLI's hostile-input checks: a folder dataset, two saved members
and an explained run, each made by concilium itself (no mocks), plus the list of every command
of the typer app with its parameters, found from the app (never a hand list).

Shared by ``tests/cli/`` and ``benchmarks/soak_hostile.py``.
"""

from __future__ import annotations

import enum
import io
import sys
import traceback
import types
import typing
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

N, HW = 8, 16


@dataclass(frozen=True)
class Param:
    """One parameter of a command: its name, flags, kind and whether it is required."""

    name: str
    opts: tuple[str, ...]
    kind: Literal["int", "float", "choice", "bool", "path", "text", "list"]
    required: bool
    argument: bool
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A leaf command: ``path`` is its words after ``concilium`` (``("ganmex", "train")``)."""

    path: tuple[str, ...]
    params: tuple[Param, ...]

    @property
    def name(self) -> str:
        return " ".join(self.path)


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return "list", ()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice", tuple(str(m.value) for m in annotation)
    return {bool: "bool", int: "int", float: "float", Path: "path"}.get(annotation, "text"), ()


def commands() -> list[Command]:
    """Every leaf command of the ``concilium`` app, with its parameters."""
    import typer.main

    import concilium.cli.main  # noqa: F401 - registers the root callback
    from concilium.cli.app import app

    found: list[Command] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(None):
                sub = cmd.get_command(None, name)
                if not getattr(sub, "hidden", False):
                    walk(sub, (*path, name))
            return
        params = []
        for p in cmd.params:
            kind, choices = _kind(p.type_descriptor.annotation)
            if kind == "text":  # flags made from an options model say their type in the metavar
                kind = {"INT": "int", "FLOAT": "float", "CHOICE": "choice"}.get(
                    getattr(p, "metavar", None) or "", kind)
            params.append(Param(
                name=p.name, opts=tuple(p.opts), kind=kind, required=bool(p.required),
                argument=type(p).__name__.endswith("Argument"), choices=choices,
            ))  # fmt: skip
        found.append(Command(path, tuple(params)))

    walk(typer.main.get_command(app), ())
    return found


def build_world(root: Path) -> dict[str, Path]:
    """``{"data", "models", "member", "run", "file", "empty"}`` under ``root``: a folder dataset
    of 8 images, two members, a run explained with saliency, an empty file and an empty folder."""
    from concilium.cli.explain import run_explain
    from concilium.data.dataset import ImageDataset
    from concilium.data.folder import write_folder
    from tiny_members import save_small_cnn_members

    g = torch.Generator().manual_seed(0)
    data = ImageDataset(
        images=(torch.rand(N, 3, HW, HW, generator=g) * 255).round() / 255,
        labels=torch.arange(N) % 2,
        masks=torch.rand(N, HW, HW, generator=g) > 0.5,
        ids=[f"s{i}" for i in range(N)],
        splits=["train", "train", "val", "val"] + ["test"] * (N - 4),
        class_names=["a", "b"],
    )
    write_folder(data, root / "data")
    save_small_cnn_members(data, root / "models")
    run_explain(root / "data", models=root / "models", out=root / "run", methods="saliency",
                batch_size=8, quiet=True)
    (root / "file.txt").write_text("")
    (root / "empty").mkdir()
    return {"data": root / "data", "models": root / "models", "member": root / "models" / "m0",
            "run": root / "run", "file": root / "file.txt", "empty": root / "empty"}


@dataclass
class Outcome:
    """What one CLI call did: exit code, output, and the traceback of an escaped exception."""

    code: int | None
    out: str
    err: str
    escaped: str | None = None

    @property
    def traceback(self) -> bool:
        return self.escaped is not None or "Traceback (most recent call last)" in self.err


def invoke(argv: list[str]) -> Outcome:
    """Run ``concilium ARGV`` in-process through the console entry point (``main``), as the
    shell would: the exit code, stdout and stderr, and any exception that escaped ``main``."""
    from concilium.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["concilium", *map(str, argv)]
    code: int | None = 0
    escaped = None
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - what escapes is the finding
        code, escaped = None, "".join(traceback.format_exception(exc))
    finally:
        sys.argv = saved
    return Outcome(code, out.getvalue(), err.getvalue(), escaped)


def required_args(command: Command, world: dict[str, Path], tmp: Path) -> list[str]:
    """Valid values for the command's required parameters (the world's folders; a new folder
    for an output)."""
    argv: list[str] = []
    for p in command.params:
        if not p.required:
            continue
        value = _valid_value(command, p, world, tmp)
        argv += [value] if p.argument else [p.opts[0], value]
    return argv


def _valid_value(command: Command, p: Param, world: dict[str, Path], tmp: Path) -> str:
    name = p.name
    if name == "out":
        return str(tmp / "out")
    if name in ("run", "run_dir"):
        return str(world["run"])
    if name == "data":
        return str(world["data"])
    if name == "models":
        return str(world["models"])
    if name == "model":
        return str(world["member"])
    if name == "gen":
        return str(world["empty"])
    if name == "experiment":
        return str(world["file"])
    if name == "kind":
        return "ens-avg"
    if p.choices:
        return p.choices[0]
    return {"int": "1", "float": "0.5"}.get(p.kind, str(tmp / name))
