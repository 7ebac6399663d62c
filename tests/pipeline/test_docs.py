"""The Python API example of docs/pipeline.md (copied into the README) runs as written; its
``run`` call is replaced by a stand-in that records the config (the real run is the quick demo
test's job)."""

from __future__ import annotations

import re
from pathlib import Path

import concilium.pipeline as pipeline

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"


def test_python_api_example_runs(monkeypatch, tmp_path, capsys):
    text = DOC.read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda config, out: seen.update(config=config, out=out))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(DOC), "exec"), {})
    assert seen["out"] == "runs/mini" and seen["config"].models.option("members") == 3
    assert "to run: about" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # the dry run wrote nothing
