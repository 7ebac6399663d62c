"""Every command with missing, wrong or conflicting arguments exits 2 with a message and no
traceback (issue 16). The commands and their parameters are read from the typer app, so a new
command or option is covered unedited; and where a user passes a file inside the folder a
command wants (``RUN/report.html``, ``MODELS/m0/model.safetensors``), the folder is used.
"""

from __future__ import annotations

import pytest
from hostile_world import build_world, commands, invoke, required_args

COMMANDS = commands()
BY_NAME = {c.name: c for c in COMMANDS}
TYPED = [(c.name, p.opts[0], p.kind) for c in COMMANDS for p in c.params
         if not p.argument and p.kind in ("int", "float", "choice")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def _usage_error(outcome, *words: str) -> None:
    assert not outcome.traceback, outcome.escaped or outcome.err
    assert outcome.code == 2, (outcome.code, outcome.out, outcome.err)
    message = outcome.err + outcome.out
    assert message.strip(), "exit 2 without a message"
    for w in words:
        assert w in message, message


def test_the_commands_are_found_from_the_app():
    names = set(BY_NAME)
    assert {"train", "explain", "evaluate", "ensemble", "audit", "report", "run", "synth",
            "demo", "ganmex train", "ganmex info"} <= names
    assert len(TYPED) > 50  # every typed option of every command is exercised below


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_missing_required_arguments(name):
    command = BY_NAME[name]
    if not any(p.required for p in command.params):
        outcome = invoke([*command.path, "unexpected-extra-argument"])
        _usage_error(outcome, "unexpected-extra-argument")
        return
    _usage_error(invoke(list(command.path)), "Missing")


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_unknown_option(name, world, tmp_path):
    command = BY_NAME[name]
    _usage_error(invoke([*command.path, *required_args(command, world, tmp_path),
                         "--no-such-option", "1"]), "--no-such-option")


@pytest.mark.parametrize(("name", "flag", "kind"), TYPED)
def test_wrongly_typed_value(name, flag, kind, world, tmp_path):
    command = BY_NAME[name]
    _usage_error(invoke([*command.path, *required_args(command, world, tmp_path),
                         flag, "not-a-" + kind]), flag.lstrip("-"))


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_input_paths_that_do_not_exist_or_are_the_wrong_kind(name, world, tmp_path):
    command = BY_NAME[name]
    inputs = [p for p in command.params if p.kind == "path" and p.required and p.name != "out"]
    if not inputs:
        pytest.skip(f"{name} reads no input path")
    base = required_args(command, world, tmp_path)
    for p in inputs:
        good = base.index(next(v for v in base if v == _value_of(command, p, world, tmp_path)))
        for bad in (tmp_path / "no-such-thing", world["file"], world["empty"]):
            if p.name == "experiment" and bad == world["file"]:
                continue  # an empty experiment file is the all-defaults experiment
            if p.name in ("out",):
                continue
            argv = list(base)
            argv[good] = str(bad)
            outcome = invoke([*command.path, *argv])
            if name == "report" and bad == world["empty"]:
                _usage_error(outcome, "not a run")
                continue
            _usage_error(outcome)


def _value_of(command, p, world, tmp_path):
    from hostile_world import _valid_value

    return _valid_value(command, p, world, tmp_path)


CONFLICTS = {
    "ensemble": [["--kind", "ens-avg", "--epochs", "3"],  # a flag of another kind
                 ["--kind", "no-such-kind"]],
    "evaluate": [["--metrics", "auc,no_such_metric"], ["--split", "sideways"],
                 ["--metrics", "auc", "--params", "no-such.toml"]],
    "explain": [["--methods", "saliency", "--param", "gradcam.layer=x"],
                ["--methods", "no_such_method"], ["--limit", "0"], ["--size", "0x0"],
                ["--device", "tpu"]],
    "train": [["--diversity", "arch"], ["--members", "0"], ["--device", "cuda:x"]],
    "ganmex train": [["--steps", "5", "--epochs", "1"], ["--until-success", "2"]],
    "audit": [["--rows", "-1"]],
    "report": [["--gallery-images", "-1"], ["--gallery-metrics", ","]],
    "synth": [["--n", "0"], ["--size", "1"]],
    "demo": [["--quick", "--out", "{file}"]],
    "run": [["--out", "{file}"]],
    "ganmex info": [],
}


def test_every_command_has_its_conflicts_listed():
    assert set(CONFLICTS) == set(BY_NAME)


@pytest.mark.parametrize(("name", "extra"), [(n, e) for n, es in CONFLICTS.items() for e in es])
def test_wrong_or_conflicting_values(name, extra, world, tmp_path):
    command = BY_NAME[name]
    extra = [e.replace("{file}", str(world["file"])) for e in extra]
    argv = required_args(command, world, tmp_path)
    if name == "ensemble":  # --kind is given in extra
        i = argv.index("--kind")
        argv = argv[:i] + argv[i + 2:]
    _usage_error(invoke([*command.path, *argv, *extra]))


# --- a file where the folder around it is meant ----------------------------------------------


@pytest.mark.parametrize("inside", ["run.json", "report.html", "explanations.zarr"])
def test_report_accepts_a_file_inside_the_run(world, inside):
    if inside == "report.html":
        assert invoke(["report", world["run"]]).code == 0
    path = world["run"] / inside
    assert path.exists()
    outcome = invoke(["report", path])
    assert outcome.code == 0 and not outcome.traceback, outcome.err
    assert (world["run"] / "report.html").stat().st_size > 1000


def test_explain_accepts_a_file_of_the_data_folder(world, tmp_path):
    outcome = invoke(["explain", world["data"] / "card.json", "--models", world["models"],
                      "--out", tmp_path / "r", "--methods", "saliency", "--batch-size", "8",
                      "--limit", "2"])
    assert outcome.code == 0 and not outcome.traceback, outcome.escaped or outcome.err


def test_explain_refuses_one_member_as_the_models_folder_naming_the_folder(world, tmp_path):
    outcome = invoke(["explain", world["data"], "--models", world["member"] / "model.safetensors",
                      "--out", tmp_path / "r", "--methods", "saliency"])
    _usage_error(outcome, "is one member")
    assert str(world["models"]) in outcome.err.replace("\n", "")


def test_evaluate_accepts_a_file_inside_the_run(world):
    outcome = invoke(["evaluate", world["run"] / "run.json", "--metrics", "relevance_mass"])
    assert outcome.code == 0 and not outcome.traceback, outcome.escaped or outcome.err
    table = world["run"] / "results" / "metrics.parquet"
    assert table.is_file()
    outcome = invoke(["audit", table, "--no-anonymisation", "--region", "outside"])
    assert outcome.code == 0 and not outcome.traceback, outcome.escaped or outcome.err


@pytest.mark.parametrize("section", ["models", "committee.models"])
def test_a_dry_run_of_a_billion_members_is_refused(tmp_path, section):
    """Found by benchmarks/soak_hostile.py (cases 447, 687): a MemoryError traceback before."""
    path = tmp_path / "big.toml"
    path.write_text(f"[{section}]\nmembers = 1000000000\n")
    _usage_error(invoke(["run", path, "--dry-run"]), "members = 1,000,000,000: at most 1,000")


def test_run_accepts_a_folder_with_one_experiment_file(world, tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "mini.toml").write_text("[data]\nkind = 'synthetic'\nn = 50\n")
    outcome = invoke(["run", folder, "--dry-run"])
    assert outcome.code == 0 and not outcome.traceback, outcome.escaped or outcome.err
    assert "runs/mini" in outcome.out
    (folder / "other.toml").write_text("")
    _usage_error(invoke(["run", folder, "--dry-run"]), "mini.toml", "other.toml")


def test_a_member_or_generator_file_gives_its_folder(world, tmp_path):
    from concilium.cli.paths import GENERATOR, MEMBER, folder_of

    member = world["member"]
    assert folder_of(member / "model.safetensors", MEMBER) == member
    assert folder_of(member / "card.json", MEMBER) == member
    assert folder_of(member, MEMBER) == member
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generator.safetensors").write_bytes(b"")
    assert folder_of(gen / "generator.safetensors", GENERATOR) == gen
    assert folder_of(tmp_path / "nothing", GENERATOR) == tmp_path / "nothing"
