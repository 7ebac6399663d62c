"""``concilium train`` end to end on a folder dataset (tiny, one epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from concilium.cli.main import app
from concilium.data.dataset import ImageDataset
from concilium.data.folder import write_folder
from concilium.models import load_members


@pytest.fixture(scope="module")
def folder(tiny_dataset: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tiny_dataset, tmp_path_factory.mktemp("data") / "birds")


def test_train_command_writes_members_and_prints_the_table(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(folder),
            "--out",
            str(out),
            "--members",
            "2",
            "--diversity",
            "seed",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-progress",
            "--attributes",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "m0" in result.output and "m1" in result.output and "val accuracy" in result.output
    members = load_members(out)
    assert [c.member_id for _, c in members] == ["m0", "m1"]
    assert members[0][1].num_attributes > 0


def test_train_command_committee_needs_archs(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", str(folder), "--out", str(tmp_path), "--diversity", "arch"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError)
    assert "--archs" in str(result.exception)


def test_train_command_parses_the_committee(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(folder),
            "--out",
            str(tmp_path),
            "--diversity",
            "arch",
            "--archs",
            "small-cnn, nope",
            "--members",
            "2",
        ],
    )
    assert isinstance(result.exception, ValueError)
    assert "unknown architecture 'nope'" in str(result.exception)
