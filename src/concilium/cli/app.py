"""The typer application every command module adds its commands to, loaded lazily.

A command module imports the jobs it runs, and with them torch and captum (seconds). The group
below imports a command's module only when that command runs or shows its own help; ``concilium
--help`` lists the commands from their modules' docstrings, read from source, so it stays fast.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from functools import cache
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

#: command -> the module of :mod:`concilium.cli` that registers it (importing it registers it).
COMMAND_MODULES: dict[str, str] = {
    "audit": "audit",
    "demo": "demo",
    "ensemble": "ensemble",
    "evaluate": "evaluate",
    "explain": "explain",
    "ganmex": "ganmex",
    "report": "report",
    "run": "run",
    "synth": "synth",
    "train": "train",
}


@cache
def short_help(command: str) -> str:
    """The first sentence of the command module's docstring, read without importing it
    (``"``concilium explain``: every member x ..."`` -> ``"Every member x ..."``)."""
    spec = importlib.util.find_spec(f"concilium.cli.{COMMAND_MODULES[command]}")
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    first = re.sub(r"^`+concilium[^`]*`+:\s*", "", first)
    first = first.split(". ")[0].rstrip(".").replace("``", "")
    return first[:1].upper() + first[1:]


class LazyGroup(TyperGroup):
    """The ``concilium`` group: each command's module is imported when that command is used."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMAND_MODULES and cmd_name not in self.commands:
            if self._listing:  # the group's own help: a stub with the one-line help
                return typer.core.TyperCommand(cmd_name, help=short_help(cmd_name))
            importlib.import_module(f"concilium.cli.{COMMAND_MODULES[cmd_name]}")
            self.commands[cmd_name] = typer.main.get_command(app).commands[cmd_name]
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="concilium",
    help="Trustworthy saliency explanations: compute, ensemble and measure them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=LazyGroup,
)
