"""The folders the commands take, accepted the way users naturally point at them.

A command that takes a folder (a run, a dataset, a member, a generator) also accepts a file or
folder inside it (``RUN/report.html``, ``RUN/results/metrics.parquet``, ``DATA/card.json``,
``DATA/images``, ``MODELS/m0/model.safetensors``, ``GEN/generator.safetensors``): the nearest
folder around it that holds the folder's marker file is used. A path that holds its marker
itself, or that lies in no such folder, is returned unchanged (the command's own check then
says what is missing).

Example:
    >>> from pathlib import Path
    >>> folder_of(Path("no/such/run"), RUN)
    PosixPath('no/such/run')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from concilium.data.io import shown


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder: what it is called and the entry that marks it."""

    what: str
    marker: str


RUN = FolderKind("run directory", "run.json")
DATA = FolderKind("data folder", "images")
MEMBER = FolderKind("member folder", "model.safetensors")
GENERATOR = FolderKind("generator folder", "generator.safetensors")

#: How far up from a file the marker is looked for (DATA/images/<label>/<id>.png is 3 levels).
_LEVELS = 3


def folder_of(path: Path, kind: FolderKind) -> Path:
    """``path``, or the nearest folder around it (up to three levels) that holds
    ``kind.marker``; unchanged when it holds the marker itself or lies in no such folder."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and (path / kind.marker).exists()):
        return path
    for parent in list(path.parents)[:_LEVELS]:
        if (parent / kind.marker).exists():
            return parent
    return path


def models_folder(path: Path) -> Path:
    """The ``--models`` folder (``MODELS`` holding ``m0/``, ``m1/``...). A member folder, or a
    file in one, is refused with the folder to pass instead (one member or all of them would
    be a guess)."""
    path = Path(path)
    member = folder_of(path, MEMBER)
    if (member / MEMBER.marker).is_file():
        raise FileNotFoundError(
            f"--models {shown(path)} is one member; pass the models folder around it, "
            f"{shown(member.parent)} (it holds m0/, m1/, ...)"
        )
    return path
