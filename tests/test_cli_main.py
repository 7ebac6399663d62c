"""The console entry point: clear one-line errors and real exit codes."""

import subprocess
import sys

import pytest

from concilium.cli.app import app
from concilium.cli.main import main
from concilium.report import ReportOptions, write_report


def _run(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["concilium", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr()


def test_unknown_command_is_a_usage_error(monkeypatch, capsys):
    code, out = _run(monkeypatch, capsys, "no-such-command")
    assert code == 2
    assert "No such command" in out.err


def test_value_error_keeps_bracketed_text(monkeypatch, capsys):
    @app.command("_raise-for-test", hidden=True)
    def _raise() -> None:
        raise ValueError("[models] unknown key 'diversty'")

    code, out = _run(monkeypatch, capsys, "_raise-for-test")
    assert code == 2
    assert "[models] unknown key 'diversty'" in out.err
    assert "Traceback" not in out.err


def test_typer_exit_code_reaches_the_shell():
    code = (
        "import sys, typer\n"
        "from concilium.cli.app import app\n"
        "from concilium.cli.main import main\n"
        "@app.command('_exit-three', hidden=True)\n"
        "def _e() -> None:\n"
        "    raise typer.Exit(3)\n"
        "sys.argv = ['concilium', '_exit-three']\n"
        "main()\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3


def test_report_flags_are_the_report_options(monkeypatch, capsys, tmp_path):
    code, out = _run(monkeypatch, capsys, "report", "--help")
    assert code == 0
    for name in ReportOptions.model_fields:
        assert "--" + name.replace("_", "-") in out.out
    code, out = _run(monkeypatch, capsys, "report", str(tmp_path), "--gallery-images", "-1")
    assert code == 2
    assert "the report: --gallery-images: Input should be greater than or equal to 0" in out.err
    code, out = _run(monkeypatch, capsys, "report", str(tmp_path), "--gallery-metrics", ",")
    assert code == 2
    assert "--gallery-metrics is empty" in out.err


@pytest.mark.parametrize("bad", [True, -1, "four"])
def test_report_options_reject_bad_gallery_sizes(tmp_path, bad):
    with pytest.raises(ValueError, match="gallery_images"):
        write_report(tmp_path, {"gallery_images": bad})


def test_an_error_is_one_line_however_long_its_paths(capsys):
    """A clear error is one line, not wrapped at the terminal width (a wrapped path broke the
    words a user or a log search looks for: 'is \\none member')."""
    from concilium.cli.main import _error

    text = "--models /" + "long-folder/" * 12 + "model.safetensors is one member; pass the folder"
    with pytest.raises(SystemExit) as exit_:
        _error(text, 2)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err
