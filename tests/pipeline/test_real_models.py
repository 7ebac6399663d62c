"""Real models at real size, end to end: a folder of 224 px images and masks runs through
``concilium run`` with a transformers ViT (``hf:DIR``) and a timm ResNet (``timm:NAME@WEIGHTS``),
both saved locally with random weights: explain, ensemble (Ens-Avg, Ens-Logit), evaluate
(localisation, complexity, and deletion / IROF on patches and superpixels) and report.

The models are tiny configurations of the real families (a 2-block ViT with 32 px patches, timm's
``test_resnet``) so that the whole run fits in well under a minute of CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from concilium.data.folder import write_folder
from concilium.data.synthetic import SynthConfig, generate
from concilium.models import SourceCard
from concilium.pipeline import parse_config, run
from concilium.store import ResultsTable, Run, RunInfo

SIZE = 224


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 images of 224 px (2 classes, all in the test split) and two saved classifiers."""
    root = tmp_path_factory.mktemp("real")
    data = generate(SynthConfig(n=4, size=SIZE, num_classes=2, seed=0))
    write_folder(data, root / "data")
    (root / "data" / "splits.csv").write_text(
        "id,split\n" + "".join(f"{i},test\n" for i in data.ids))
    names = list(data.class_names)
    torch.manual_seed(0)
    labels = names[::-1]  # the ViT's outputs are in the other order: matched by name
    vit = ViTForImageClassification(ViTConfig(
        image_size=SIZE, patch_size=32, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=2,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}))
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(root / "vit")
    net = timm.create_model("test_resnet", num_classes=2)
    save_file(net.state_dict(), str(root / "resnet.safetensors"),
              metadata={"class_names": json.dumps(names)})
    return {"root": root, "data": root / "data", "vit": root / "vit",
            "resnet": root / "resnet.safetensors"}


def experiment(bench: dict[str, Path]) -> dict:
    return {
        "name": "real models",
        "data": {"kind": "folder", "path": str(bench["data"])},
        "models": {"sources": [f"hf:{bench['vit']}", f"timm:test_resnet@{bench['resnet']}"]},
        "explain": {"methods": ["saliency", "integrated_gradients"], "split": "test",
                    "batch_size": 4, "params": {"integrated_gradients": {"n_steps": 4}}},
        "ensemble": {"kinds": ["ens-avg", "ens-logit"]},
        "evaluate": {"metrics": ["relevance_mass", "sparseness", "deletion", "irof"],
                     "params": {"deletion": {"features": "patch:32", "step": 7},
                                "irof": {"features": "slic:n_segments=12"}}},
        "audit": {"enabled": False},
        "report": {"gallery_images": 2},
    }


def test_concilium_run_with_transformers_and_timm_at_224_px(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(parse_config(experiment(bench)), out)

    info = RunInfo.load(out)
    assert info.models == [f"hf:{bench['vit']}", f"timm:test_resnet@{bench['resnet']}"]
    assert info.member_ids == ["m0", "m1"] and info.n == 4
    opened = Run.open(out, load_models=True)
    cards = [opened.cards[m] for m in info.member_ids]
    assert all(isinstance(c, SourceCard) for c in cards)
    assert cards[0].arch == "hf:ViTForImageClassification"
    assert cards[1].input_size == (160, 160)  # test_resnet's own input size: resized inside
    maps, _ = opened.read_maps("m0", "saliency")
    assert tuple(maps.shape) == (4, SIZE, SIZE)  # maps in the user's pixel grid
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0

    table = ResultsTable(out).load()
    for source in ("m0", "m1", "ens-avg", "ens-logit"):
        rows = table[table["source"] == source]
        assert set(rows["metric"]) >= {"relevance_mass", "sparseness", "deletion", "irof"}, source
    faith = table[table["metric"].isin(["deletion", "irof"])]
    assert faith["value"].notna().mean() > 0.9, faith.groupby("source")["value"].apply(list)
    assert (out / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary  # written by the report stage

    # a re-run reloads the members from the recorded sources and computes nothing
    again = run(parse_config(experiment(bench)), out)
    assert {r.name for r in again if r.action == "ran"} == {"data"}


def test_cli_explain_takes_several_sources(bench: dict, tmp_path: Path) -> None:
    from concilium.cli.explain import run_explain

    reports = run_explain(bench["data"], models=[f"hf:{bench['vit']},"
                                                 f"timm:test_resnet@{bench['resnet']}"],
                          out=tmp_path / "run", quiet=True, methods=["saliency"], limit=2,
                          batch_size=2)
    assert [(r.source, r.method) for r in reports] == [("m0", "saliency"), ("m1", "saliency")]
    with pytest.raises(ValueError, match="needs a local weights file"):
        run_explain(bench["data"], models=["timm:test_resnet"], out=tmp_path / "run2",
                    quiet=True)
    with pytest.raises(ValueError, match="model has 2 classes .* the data has 2 .*only in"):
        bad = bench["root"] / "bad.safetensors"
        save_file(timm.create_model("test_resnet", num_classes=2).state_dict(), str(bad),
                  metadata={"class_names": json.dumps(["x", "y"])})
        run_explain(bench["data"], models=[f"timm:test_resnet@{bad}"], out=tmp_path / "run3",
                    quiet=True)


def test_models_sources_are_checked_with_the_configuration() -> None:
    cfg = parse_config({"models": {"sources": ["hf:/m/vit", "timm:resnet50@/w/r.safetensors"]}})
    assert cfg.models.given == ["hf:/m/vit", "timm:resnet50@/w/r.safetensors"]
    assert parse_config({"models": {"dir": "/m/trained"}}).models.given == ["/m/trained"]
    assert parse_config({}).models.given is None  # train
    for section, match in [
        ({"sources": ["timm:resnet50"]}, r"\[models\] sources: .*needs a local weights file"),
        ({"sources": ["hf:/m/vit"], "epochs": 3}, r"\[models\] sources = .*drop the training "
                                                  r"keys \['epochs'\]"),
        ({"sources": ["hf:/m/vit"], "dir": "/m"}, "give dir .* or sources, not both"),
        ({"sources": []}, "non-empty list of member sources"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_config({"models": section})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="hardware: needs a CUDA device")
def test_concilium_run_with_real_models_on_cuda(bench: dict, tmp_path: Path) -> None:
    config = experiment(bench)
    config["device"] = "cuda"
    out = tmp_path / "run"
    run(parse_config(config), out)
    assert RunInfo.load(out).device == "cuda"
    table = ResultsTable(out).load()
    assert table[table["metric"] == "deletion"]["value"].notna().all()
    assert (out / "report.html").is_file()
