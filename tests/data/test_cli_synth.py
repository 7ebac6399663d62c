"""`concilium synth` writes a folder dataset that loads back as the generator's data."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import concilium.cli.main  # noqa: F401  (registers the commands)
from concilium.cli.app import app
from concilium.data import SynthConfig, generate, load_folder

runner = CliRunner()


def test_synth_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "bench"
    args = ["synth", str(out), "--n", "20", "--size", "32", "--seed", "3", "--classes", "4"]
    args += ["--clutter", "1", "--watermark-class", "1", "--watermark-rate", "1.0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "20 images of 32x32" in result.output
    ds = load_folder(out)
    expected = generate(
        SynthConfig(
            n=20, size=32, seed=3, num_classes=4, clutter=1, watermark_class=1, watermark_rate=1.0
        )
    )
    assert torch.equal(ds.images, expected.images)
    assert torch.equal(ds.parts["evidence"], expected.parts["evidence"])
    assert ds.class_part_values == expected.class_part_values
    card = json.loads((out / "card.json").read_text())
    assert card["card"]["config"]["watermark_class"] == 1
    # every class-1 image carries the watermark at rate 1
    marked = ds.parts["watermark"].flatten(1).any(1)
    assert torch.equal(marked, ds.labels == 1)


def test_synth_refuses_a_non_empty_folder_and_bad_knobs(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    result = runner.invoke(app, ["synth", str(tmp_path), "--n", "4", "--size", "32"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError) and "--overwrite" in str(result.exception)
    result = runner.invoke(app, ["synth", str(tmp_path / "o"), "--size", "16"])
    assert isinstance(result.exception, ValueError) and "--size" in str(result.exception)
    result = runner.invoke(app, ["synth", str(tmp_path / "o"), "--rare-fraction", "0.01"])
    assert isinstance(result.exception, ValueError) and "rare_class" in str(result.exception)
    assert not (tmp_path / "o").exists()
