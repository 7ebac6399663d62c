"""Experiment validation: unknown keys name the key (and a close match), bad values list the
choices, registry names and method/metric parameters are checked against the real code."""

from __future__ import annotations

import pytest

from concilium.data import DATASETS
from concilium.jobs.audit import AuditOptions
from concilium.jobs.ensemble import ENSEMBLERS
from concilium.pipeline import load_config, parse_config


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"modelz": {}}, r"\[top level\] unknown key 'modelz' \(did you mean 'models'\?\)"),
        ({"data": {"nn": 10}}, r"\[data\] unknown key 'nn' \(did you mean 'n'\?\); valid keys: .*rare_class"),
        ({"models": {"diversty": "head"}}, r"\[models\] unknown key 'diversty' \(did you mean 'diversity'\?\)"),
        ({"report": {"galery_images": 2}}, r"\[report\] unknown key 'galery_images'"),
        ({"report": {"gallery_images": -1}},
         r"\[report\] gallery_images: Input should be greater than or equal to 0"),
        ({"report": {"members_view": "all"}},
         r"\[report\] members_view: Input should be 'pooled', 'each' or 'both'"),
        ({"audit": {"regoin": "watermark"}}, r"\[audit\] unknown key 'regoin' \(did you mean 'region'\?\)"),
        ({"explain": {"split": "tst"}}, r"\[explain\] split: Input should be 'train', 'val', 'test' or 'all'"),
        ({"models": {"diversity": "heads"}}, r"diversity: Input should be 'head', 'seed', 'bootstrap' or 'arch'"),
        ({"audit": {"region": "sky"}}, r"\[audit\] region: Input should be 'watermark' or 'outside'"),
        ({"explain": {"methods": ["salency"]}}, r"unknown method 'salency'; valid: .*saliency"),
        ({"explain": {"methods": ["saliency"], "params": {"saliency": {"n_steps": 3}}}},
         r"\[explain\] params.saliency: unknown parameter"),
        ({"explain": {"params": {"occlusion": {"window": 4}}}}, r"not in methods"),
        ({"evaluate": {"metrics": ["localisation", "pointing"]}}, r"unknown metric or family 'pointing'"),
        ({"evaluate": {"metrics": ["iou"], "params": {"iou": {"qq": 1}}}}, r"unknown parameter\(s\) qq for metric 'iou'"),
        ({"ensemble": {"kinds": ["ens-avg", "bogus"]}}, r"unknown ensemble kind 'bogus'; valid: .*consensus"),
        ({"ensemble": {"kinds": ["consensus"], "options": {"consensus": {"vote": "max"}}}},
         r"\[ensemble.options.consensus\] vote: Input should be 'mean' or 'rank'"),
        ({"ensemble": {"kinds": ["ens-avg"], "options": {"ens-avg": {"normalization": "l2"}}}},
         r"unknown key 'normalization' \(did you mean 'normalisation'\?\)"),
        # an option of another kind (krr's folds) is an error naming the consensus keys
        ({"ensemble": {"kinds": ["consensus"], "options": {"consensus": {"folds": 3}}}},
         r"\[ensemble.options.consensus\] unknown key 'folds'; valid keys: absolute, "
         r"correct_only, leave_one_out, localisation_metric, members, methods, normalisation, "
         r"similarity, "
         r"source, vote$"),
        ({"committee": {"consensus": {"folds": 3}}}, r"unknown key 'folds'; valid keys: absolute"),
        ({"ensemble": {"kinds": ["cnn"], "options": {"cnn": {"cnn": {"epochs": 3}}}}},
         r"\[ensemble.options.cnn\] unknown key 'cnn'; valid keys: .*epochs"),
        ({"models": {"dir": "x", "epochs": 3}}, r"drop the training keys \['epochs'\]"),
        ({"data": {"kind": "folder"}}, r"needs path"),
        ({"data": {"kind": "images"}}, r"\[data\] kind: unknown dataset kind .images.; valid: folder, synthetic"),
        ({"data": {"n": 10, "size": 8}}, r"\[data\] size: Input should be greater than or equal to 32"),
        ({"device": "gpu"}, r"\[device\]"),
    ],
)
def test_bad_configs_name_the_key_and_the_fix(values, expected):
    with pytest.raises(ValueError, match=expected):
        parse_config(values)


def test_defaults_and_valid_sections():
    cfg = parse_config({
        "data": {"n": 100, "size": 32, "rare_class": 2, "rare_fraction": 0.05},
        "models": {"members": 3, "epochs": 2},
        "explain": {"methods": ["saliency", "integrated_gradients"],
                    "params": {"integrated_gradients": {"n_steps": 8}}},
        "ensemble": {"kinds": ["ens-avg", "consensus"], "options": {"consensus": {"vote": "rank"}}},
        "evaluate": {"metrics": ["localisation", "deletion"], "params": {"deletion": {"step": 10}}},
        "audit": {"region": "outside"},
        "report": {"gallery_images": 2},
    })
    assert cfg.data.options == {"n": 100, "size": 32, "rare_class": 2, "rare_fraction": 0.05}
    assert cfg.models.option("members") == 3 and cfg.models.option("diversity") == "head"
    consensus = cfg.ensemble.options_for("consensus", device="cpu")
    assert type(consensus) is ENSEMBLERS.get("consensus").options and consensus.vote == "rank"
    assert cfg.ensemble.options_for("ens-avg", device="cuda:1").device == "cuda:1"
    assert cfg.audit.options == {"region": "outside"} and cfg.report.options == {"gallery_images": 2}
    assert cfg.audit.options_for(device="cpu") == AuditOptions(region="outside")


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[models]\nmember = 3\n")
    with pytest.raises(ValueError, match=r"(?s)exp.toml: .*unknown key .member."):
        load_config(path)
    path.write_text("[models\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="examples/benchmark.toml"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["benchmark", "folder", "gpu", "real_models"])
def test_examples_validate(name):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples"
    cfg = load_config(root / f"{name}.toml")
    assert cfg.explain.methods


def test_cli_prints_section_names_and_exits_2(tmp_path):
    from typer.testing import CliRunner

    from concilium.cli.main import app

    path = tmp_path / "bad.toml"
    path.write_text('[models]\ndiversty = "head"\n')
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "[models] unknown key 'diversty'" in result.output


def test_explain_baseline_accepts_registry_specs_and_checks_ganmex_paths(tmp_path):
    assert parse_config({"explain": {"baseline": "blur:sigma=2"}}).explain.baseline == "blur:sigma=2"
    with pytest.raises(ValueError, match=r"\[explain\] baseline: .*sharpen"):
        parse_config({"explain": {"baseline": "sharpen"}})
    with pytest.raises(ValueError, match=r"\[explain\] baseline: .*ganmex"):
        parse_config({"explain": {"baseline": f"ganmex:{tmp_path / 'no-generator'}"}})
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "card.json").write_text("{}")  # its fit to each member is checked when explaining
    assert parse_config({"explain": {"baseline": f"ganmex:{gen}"}}).explain.baseline == f"ganmex:{gen}"


def test_the_data_section_takes_every_registered_dataset_kind():
    """[data] kinds come from concilium.data.DATASETS: an unknown kind lists them all, and each
    kind's section keys are what the section accepts for it."""
    with pytest.raises(ValueError) as err:
        parse_config({"data": {"kind": "no-such-kind"}})
    assert all(k in str(err.value) for k in DATASETS.names())
    for kind in DATASETS.names():
        with pytest.raises(ValueError) as err:
            parse_config({"data": {"kind": kind, "no_such_key": 1}})
        assert "no_such_key" in str(err.value)
        assert all(k in str(err.value) for k in DATASETS.get(kind).section_keys())
