"""GANMEX baselines in ``concilium explain``: ``--baseline ganmex:GEN --target contrast:t``.

The contrast target hands the provider the contrast classes ``t`` (the counterfactual is
``G(x, t)``), every member gets its own checked provider, baselines are cached in the run's store
and a generator unfit for a member is refused before any compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

from concilium.explain import explain, explain_many
from concilium.explain.targets import resolve_target
from concilium.ganmex import GanmexOptions, card_hash, train_ganmex
from concilium.ganmex.networks import Generator

from .conftest import TINY, TinyClassifier, colour_images

SIZE = 16
N = 6
METHODS = "integrated_gradients,deeplift,occlusion"


# -- the explanation engine hands a provider t for a contrast target ---------------------------


class RecordingBaseline:
    """A provider that records the classes it is asked for and returns zeros."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        self.calls.append(targets.tolist())
        return torch.zeros_like(images)


def test_contrast_target_gives_the_provider_the_contrast_classes() -> None:
    model = TinyClassifier().eval()
    images, labels = colour_images(4, size=8)  # labels 0, 1, 2, 0
    rec = RecordingBaseline()
    maps = explain(model, images, "contrast:2", labels=labels, method="integrated_gradients",
                   baseline=rec, n_steps=4)
    assert rec.calls == [[2, 2, 2, 2]] and torch.isfinite(maps).all()
    rec.calls.clear()
    explain_many(model, images, "contrast:1", {"deeplift": {}, "occlusion": {}}, labels=labels,
                 baseline=rec)
    assert rec.calls == [[1, 1, 1, 1]]
    rec.calls.clear()
    explain(model, images, "label", labels=labels, method="deeplift", baseline=rec)
    assert rec.calls == [labels.tolist()]  # other targets: the explained classes


def test_target_baseline_classes() -> None:
    model = TinyClassifier().eval()
    images, labels = colour_images(3, size=8)
    contrast = resolve_target(model, images, "contrast:1", labels=labels)
    assert contrast.classes.tolist() == labels.tolist()
    assert contrast.baseline_classes.tolist() == [1, 1, 1]
    plain = resolve_target(model, images, "label", labels=labels)
    assert plain.baseline_classes is plain.classes


# -- the CLI end to end ------------------------------------------------------------------------


def _train(out: Path, *, classes: list[str], size: int, card=None, classifier=None) -> Path:
    images, labels = colour_images(8, size=size)
    train_ganmex(
        classifier if classifier is not None else TinyClassifier(len(classes)), images,
        labels % len(classes), out_dir=out, class_names=classes,
        options=GanmexOptions(steps=1, checkpoint_every=1, **{**TINY, "val_size": 4}),
        classifier_card_hash=None if card is None else card_hash(card),
    )
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder dataset, two members and a generator per member trained against it."""
    from concilium.data.dataset import ImageDataset
    from concilium.data.folder import write_folder
    from concilium.models.architectures import create_model
    from concilium.models.members import MemberCard, load_member, save_member

    root = tmp_path_factory.mktemp("ganmex_explain")
    images, labels = colour_images(N, size=SIZE, seed=4)
    data = ImageDataset(
        images=(images * 255).round() / 255, labels=labels,
        masks=torch.zeros(N, SIZE, SIZE, dtype=torch.bool), ids=[f"s{i}" for i in range(N)],
        splits=["test"] * N, class_names=["red", "green", "blue"],
    )
    write_folder(data, root / "data")
    for k in range(2):
        torch.manual_seed(k)
        model = create_model("small-cnn", num_classes=3)
        card = MemberCard(
            member_id=f"m{k}", arch="small-cnn", num_classes=3, class_names=data.class_names,
            image_size=(SIZE, SIZE), seed=k, diversity="seed", epochs=0,
            gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint(),
        )
        save_member(model.eval(), card, root / "models" / f"m{k}")
        model, card = load_member(root / "models" / f"m{k}")
        _train(root / "gens" / f"m{k}", classes=data.class_names, size=SIZE, card=card,
               classifier=model)
    return root


def invoke(args: list) -> object:
    from concilium.cli.main import app

    return CliRunner().invoke(app, ["explain", *map(str, args), "--batch-size", "8"])


@pytest.fixture
def generator_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images per GANMEX generator forward call (baselines actually generated)."""
    calls: list[int] = []
    real = Generator.forward

    def counting(self, x, t):
        calls.append(x.shape[0])
        return real(self, x, t)

    monkeypatch.setattr(Generator, "forward", counting)
    return calls


def test_cli_ganmex_contrast_end_to_end_then_cached(setup, tmp_path, generator_calls) -> None:
    from concilium.store import ExplanationStore

    run = tmp_path / "run"
    args = [setup / "data", "--models", setup / "models", "--out", run, "--split", "all",
            "--baseline", f"ganmex:{setup / 'gens'}", "--target", "contrast:2",
            "--chunk-size", "4", "--param", "integrated_gradients.n_steps=4",
            "--param", "occlusion.window=4", "--param", "occlusion.stride=4"]
    first = invoke([*args, "--methods", "integrated_gradients,occlusion"])
    assert first.exit_code == 0, first.output
    assert sum(generator_calls) == 2 * N  # one G(x, t) per member and image, reused by methods
    store = ExplanationStore(run)
    names = set()
    for member in ("m0", "m1"):
        for method in ("integrated_gradients", "occlusion"):
            entry = store.get(member, method)
            maps = entry.read()
            assert maps.shape == (N, SIZE, SIZE) and torch.isfinite(maps).all()
            assert maps.abs().sum() > 0
            assert entry.params["baseline"].startswith("ganmex:")
            names.add(entry.params["baseline"])
    assert len(names) == 2  # each member's own generator, by content
    cache = run / "explanations.zarr" / "cache" / "ganmex_baselines"
    cached = [d for d in cache.iterdir() if d.is_dir()]
    assert len(cached) == 2 * N
    # a re-run computes nothing; a new method reuses the stored baselines
    generator_calls.clear()
    again = invoke([*args, "--methods", METHODS])
    assert again.exit_code == 0, again.output
    assert "2 computed, 0 resumed, 4 reused" in again.output
    assert generator_calls == []
    deeplift = store.get("m0", "deeplift").read()
    assert torch.isfinite(deeplift).all()


def test_baselines_are_g_of_x_and_t(setup, tmp_path) -> None:
    """The stored IG map equals explain() with G(x, t) given as a tensor baseline."""
    from concilium.data.folder import load_folder
    from concilium.ganmex import GanmexBaseline
    from concilium.models.members import load_member
    from concilium.store import ExplanationStore

    run = tmp_path / "run"
    result = invoke([setup / "data", "--models", setup / "models", "--out", run, "--split", "all",
                     "--baseline", f"ganmex:{setup / 'gens'}", "--target", "contrast:1",
                     "--methods", "integrated_gradients", "--param",
                     "integrated_gradients.n_steps=4"])
    assert result.exit_code == 0, result.output
    data = load_folder(setup / "data")
    model, _ = load_member(setup / "models" / "m1")
    with torch.no_grad():
        g = GanmexBaseline(setup / "gens" / "m1")
        b = g.generator(data.images, torch.full((N,), 1))
    expected = explain(model, data.images, "contrast:1", labels=data.labels,
                       method="integrated_gradients", baseline=b, batch_size=8, n_steps=4)
    stored = ExplanationStore(run).get("m1", "integrated_gradients").read()
    torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unfit", ["size", "classes", "classifier"])
def test_unfit_generator_is_refused_before_compute(setup, tmp_path, unfit,
                                                   generator_calls) -> None:
    if unfit == "size":
        gen = _train(tmp_path / "gen", classes=["red", "green", "blue"], size=8)
        words = "(8, 8) images"
    elif unfit == "classes":
        gen = _train(tmp_path / "gen", classes=["cat", "dog"], size=SIZE)
        words = "trained for the classes ['cat', 'dog']"
    else:
        gen = setup / "gens" / "m0"  # trained against m0, asked for m1 too
        words = "member m1"
    run = tmp_path / "run"
    generator_calls.clear()  # (training the unfit generator called it)
    result = invoke([setup / "data", "--models", setup / "models", "--out", run,
                     "--split", "all", "--baseline", f"ganmex:{gen}", "--target", "contrast:2",
                     "--methods", METHODS])
    assert isinstance(result.exception, ValueError), result.output
    assert words in str(result.exception)
    if unfit == "classifier":
        assert "another classifier" in str(result.exception)
    assert generator_calls == [] and not run.exists()


def test_missing_generator_is_refused_before_loading(setup, tmp_path) -> None:
    result = invoke([setup / "data", "--models", setup / "models", "--out", tmp_path / "run",
                     "--baseline", f"ganmex:{tmp_path / 'nothing'}", "--methods", METHODS])
    assert isinstance(result.exception, FileNotFoundError)
    assert "ganmex train" in str(result.exception)
    empty = invoke([setup / "data", "--models", setup / "models", "--out", tmp_path / "run",
                    "--baseline", "ganmex:", "--methods", METHODS])
    assert isinstance(empty.exception, ValueError) and "ganmex:GEN" in str(empty.exception)
