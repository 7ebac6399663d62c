"""The report only reads: the jobs write what it shows (the attribute cards included), and the
report of a run whose members are gone still renders every section whose tables exist, without
calling a model, and without importing the computing packages."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from report_helpers import formatted, section_html, table_rows

import concilium.report
from concilium.data.showcase import showcase_rows
from concilium.data.specs import SyntheticDataset
from concilium.data.synthetic import SynthConfig, generate
from concilium.jobs.attributes import run_attribute_cards
from concilium.jobs.audit import run_audit
from concilium.jobs.ensemble import run_ensemble
from concilium.jobs.evaluate import evaluate_run
from concilium.models import MemberCard, create_model, load_members, save_member
from concilium.report import SECTIONS, write_report
from concilium.report.view import fmt
from concilium.store import (
    ATTRIBUTE_COLUMNS,
    ATTRIBUTES_TABLE,
    ExplanationStore,
    Run,
    RunInfo,
    read_arrays,
    read_table,
)

METHODS = ("saliency", "gradcam")
CARDS = 2


def _make_run(root: Path) -> Path:
    """Synthetic data with attributes, two multitask members, random stored maps."""
    cfg = SynthConfig(n=24, size=32, num_classes=2, seed=0, watermark_class=1, watermark_rate=1.0,
                      split_fractions=(0.5, 0.25, 0.25))
    data = generate(cfg)
    models_dir = root / "models"
    for i in range(2):
        torch.manual_seed(i)
        model = create_model("small-cnn", num_classes=2, num_attributes=len(data.attribute_names))
        card = MemberCard(member_id=f"m{i}", arch="small-cnn", num_classes=2,
                          class_names=data.class_names, num_attributes=len(data.attribute_names),
                          attribute_names=list(data.attribute_names), image_size=(32, 32), seed=i,
                          diversity="seed", val_accuracy=0.5 + 0.1 * i, epochs=0,
                          gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint())
        save_member(model, card, models_dir / f"m{i}")
    run = root / "run"
    store = ExplanationStore(run)
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        for method in METHODS:
            maps = data.masks.float() * (1 + i) + 0.5 * torch.randn(len(data), 32, 32,
                                                                     generator=gen)
            params = {"method": method, "method_params": {}, "target": "label",
                      "reduction": "sum", "baseline": "zero", "seed": 0}
            entry = store.entry(f"m{i}", method, params, data.ids, shape=(32, 32), chunk_size=12,
                                meta={"dataset_fingerprint": data.fingerprint()})
            entry.write(0, maps)
    RunInfo(dataset=SyntheticDataset(config=cfg.model_dump(mode="json", exclude_unset=True)),
            dataset_fingerprint=data.fingerprint(), split="all", sample_ids=data.ids,
            models_dir=str(models_dir.resolve()), member_ids=["m0", "m1"],
            methods=list(METHODS)).save(run)
    return run


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory) -> Path:
    """The tiny run after explain (stored maps), ens-avg, evaluate and audit (with cards)."""
    run = _make_run(tmp_path_factory.mktemp("readonly"))
    run_ensemble(run, "ens-avg")
    evaluate_run(run, ["relevance_mass", "pointing_game"], split="test")
    tables = run_audit(run, {"region": "watermark", "attribute_cards": CARDS})
    assert ATTRIBUTES_TABLE in tables
    return run


def test_attribute_cards_job_writes_what_the_member_says(audited_run):
    table = read_table(audited_run, ATTRIBUTES_TABLE)
    arrays = read_arrays(audited_run, ATTRIBUTES_TABLE)
    assert list(table.columns) == list(ATTRIBUTE_COLUMNS)
    ctx = Run.open(audited_run)
    data = ctx.data
    metrics = read_table(audited_run, "metrics")
    rows = showcase_rows(data, CARDS, scored=set(metrics["sample"]))
    assert list(arrays["sample_ids"]) == [data.ids[r] for r in rows]  # the gallery's images
    assert list(dict.fromkeys(table["sample"])) == list(arrays["sample_ids"])
    assert list(arrays["attribute_names"]) == list(data.attribute_names)
    k, a = len(rows), len(data.attribute_names)
    assert arrays["class_maps"].shape == (k, 32, 32)
    assert arrays["attribute_maps"].shape == (k, a, 32, 32)
    model, card = load_members(ctx.info.models_dir)[0]
    with torch.no_grad():
        logits, attr = model.forward_all(data.images[rows])
    for i, sid in enumerate(arrays["sample_ids"]):
        sub = table[table["sample"] == sid].set_index("attribute")
        assert set(sub["source"]) == {card.member_id} and set(sub["method"]) == {"gradcam"}
        assert sub["predicted"].iloc[0] == data.class_names[int(logits[i].argmax())]
        assert sub["class_probability"].iloc[0] == pytest.approx(float(logits[i].softmax(0).max()),
                                                                  abs=1e-6)
        for j, name in enumerate(data.attribute_names):
            assert sub.loc[name, "probability"] == pytest.approx(float(attr[i, j].sigmoid()),
                                                                  abs=1e-6)
            part = name.split("_")[0]
            if part not in data.parts:
                assert sub.loc[name, "part"] is None and math.isnan(sub.loc[name, "relevance_mass"])
                continue
            mask = data.parts[part][rows[i]].numpy()
            for column, saliency in (("relevance_mass", arrays["attribute_maps"][i, j]),
                                     ("class_relevance_mass", arrays["class_maps"][i])):
                s = saliency.astype(np.float64)  # sum(a * s) / sum(a), by hand
                expected = (s * mask).sum() / s.sum() if s.sum() != 0 and mask.any() else math.nan
                assert sub.loc[name, column] == pytest.approx(expected, rel=1e-4, nan_ok=True)


def test_attribute_cards_job_does_nothing_without_attribute_heads(tmp_path):
    run = _make_run(tmp_path)
    for member in (tmp_path / "models").iterdir():
        card = MemberCard.model_validate_json((member / "card.json").read_text())
        model = create_model("small-cnn", num_classes=2)
        save_member(model, card.model_copy(update={"num_attributes": 0, "attribute_names": []}),
                    member)
    assert run_attribute_cards(run, samples=2) is None
    assert read_table(run, ATTRIBUTES_TABLE) is None
    with pytest.raises(ValueError, match="samples must be"):
        run_attribute_cards(run, samples=-1)


def test_report_reads_only_and_needs_no_member(audited_run, monkeypatch):
    models = Path(RunInfo.load(audited_run).models_dir)
    away = models.with_name("models-away")
    models.rename(away)

    def no_forward(*args, **kwargs):
        raise AssertionError("the report ran a model")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_forward)
    try:
        html = write_report(audited_run, {"gallery_images": 2}).read_text()
    finally:
        away.rename(models)
    missing = {s for s in SECTIONS if 'class="missing"' in section_html(html, s)}
    # what the jobs did not write (no member cards, no E*, no studies, no GANMEX) is missing ...
    assert missing == {"models", "per-class", "subsets", "anonymisation", "one-vs-one",
                       "consensus", "recommendation", "glance", "radar"}
    # the tiny run's metrics do not separate its explanations: nothing to recommend or plot
    assert "no metric separates the explanations" in section_html(html, "recommendation")
    assert "No informative metric to plot" in section_html(html, "glance")
    assert "No metric separates the explanations" in section_html(html, "radar")
    # ... and what they wrote is shown with its numbers
    bias = read_table(audited_run, "bias")
    assert table_rows(section_html(html, "bias")) == [formatted(bias)]
    cards = read_table(audited_run, ATTRIBUTES_TABLE)
    shown = table_rows(section_html(html, "attributes"))[0]
    expected = [[str(r.sample), r.attribute, fmt(r.probability), r.part or "",
                 fmt(r.relevance_mass), fmt(r.class_relevance_mass)]
                for r in cards.itertuples()]
    assert sorted(shown) == sorted(expected)
    assert section_html(html, "gallery").count("data:image/png;base64,") == 2
    assert "ens-avg · saliency" in section_html(html, "metrics")


def test_attributes_missing_names_the_command(tmp_path):
    run = _make_run(tmp_path)
    html = write_report(run).read_text()
    assert f"No attribute cards: run `concilium audit {run}`" in section_html(html, "attributes")


def test_report_modules_import_no_computing_package():
    forbidden = ("concilium.explain", "concilium.models", "concilium.jobs", "concilium.ensemble",
                 "concilium.metrics.evaluate", "torch")
    for path in sorted(Path(concilium.report.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                for name in names:
                    assert not name.startswith(forbidden), f"{path.name} imports {name}"
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            nested = [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
            assert not nested, f"{path.name}: {fn.name} imports inside the function"
