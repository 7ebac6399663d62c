"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_two_setup_commands_first():
    first_block = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[index], f"README.md python block {index}", "exec"), namespace)
    if index == 0:
        assert (tmp_path / "runs" / "mini" / "report.html").is_file()
        assert (tmp_path / "runs" / "mini" / "summary.json").is_file()
    else:
        assert namespace["maps"].shape == (8, 32, 32)
        assert namespace["scores"].shape == (8,)
        assert namespace["deletion"].shape == (8,)
