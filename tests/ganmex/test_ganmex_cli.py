"""``concilium ganmex train`` / ``info`` end to end on a tiny folder dataset and member."""

from __future__ import annotations

import csv

import pytest
import torch
from typer.testing import CliRunner

from concilium.cli import ganmex as _ganmex_commands  # noqa: F401  (registers the commands)
from concilium.cli.app import app
from concilium.data import folder
from concilium.data.synthetic import SynthConfig, generate
from concilium.ganmex import GanmexBaseline, load_card
from concilium.models import architectures
from concilium.models import members as checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def data_and_member(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    ds = generate(SynthConfig(n=30, size=SIZE, num_classes=3))
    folder.write_folder(ds, root / "data")
    torch.manual_seed(0)
    model = architectures.create_model("small-cnn", num_classes=ds.num_classes)
    card = checkpoint.MemberCard(
        member_id="m0", arch="small-cnn", num_classes=ds.num_classes,
        class_names=ds.class_names, image_size=(SIZE, SIZE), seed=0, diversity="seed",
        epochs=0, gradcam_layer=model.gradcam_layer, data_fingerprint=ds.fingerprint(),
    )
    checkpoint.save_member(model.eval(), card, root / "models" / "m0")
    return root


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


TINY = ["--batch-size", "4", "--base-channels", "4", "--num-residual", "1", "--val-size", "4"]


def test_train_resume_and_info(data_and_member) -> None:
    root = data_and_member
    gen = root / "gen"
    args = ["ganmex", "train", str(root / "data"), "--model", str(root / "models" / "m0"),
            "--out", str(gen), "--checkpoint-every", "1", *TINY]
    first = _invoke([*args, "--steps", "1"])
    assert first.exit_code == 0, first.output
    assert "step      1" in first.output and "success" in first.output
    card = load_card(gen)
    assert card.step == 1 and card.image_size == (SIZE, SIZE) and card.classifier_card_hash
    second = _invoke([*args, "--steps", "2"])  # resumes from step 1
    assert second.exit_code == 0, second.output
    with (gen / "validation.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]
    shown = _invoke(["ganmex", "info", str(gen)])
    assert shown.exit_code == 0 and "step 2 of 2" in " ".join(shown.output.split())
    provider = GanmexBaseline(gen, classifier_card=root / "models" / "m0")
    images = torch.rand(2, 3, SIZE, SIZE)
    assert provider(images, torch.tensor([1, 2])).shape == images.shape


def test_bad_options_fail_before_loading(data_and_member, tmp_path) -> None:
    root = data_and_member
    base = ["ganmex", "train", str(root / "data"), "--model", str(root / "models" / "m0"),
            "--out", str(tmp_path / "g")]
    both = _invoke([*base, "--steps", "2", "--epochs", "1"])
    assert isinstance(both.exception, ValueError) and "not both" in str(both.exception)
    no_member = _invoke(["ganmex", "train", str(root / "data"), "--model", str(tmp_path),
                         "--out", str(tmp_path / "g")])
    assert isinstance(no_member.exception, FileNotFoundError)
    bad = _invoke([*base, "--lr-g", "-1"])
    assert isinstance(bad.exception, ValueError) and "lr_g" in str(bad.exception)
