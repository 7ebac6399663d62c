"""A tiny real run (synthetic data, two untrained members, stored maps) for the store tests."""

from pathlib import Path

import pytest
import torch

METHODS = ("saliency", "gradcam")


def make_run(root: Path, *, n: int = 32, members: int = 2) -> Path:
    from concilium.data.specs import SyntheticDataset
    from concilium.data.synthetic import SynthConfig, generate
    from concilium.models import MemberCard, create_model, save_member
    from concilium.store import ExplanationStore
    from concilium.store.manifest import RunInfo

    cfg = SynthConfig(n=n, size=32, num_classes=2, seed=0, watermark_class=1, watermark_rate=1.0,
                      split_fractions=(0.5, 0.25, 0.25))
    data = generate(cfg)
    models_dir = root / "models"
    for i in range(members):
        torch.manual_seed(i)
        model = create_model("small-cnn", num_classes=2)
        card = MemberCard(member_id=f"m{i}", arch="small-cnn", num_classes=2,
                          class_names=data.class_names, image_size=(32, 32), seed=i,
                          diversity="seed", val_accuracy=0.5 + 0.1 * i, epochs=0,
                          gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint())
        save_member(model, card, models_dir / f"m{i}")
    run = root / "run"
    store = ExplanationStore(run)
    gen = torch.Generator().manual_seed(0)
    for i in range(members):
        for method in METHODS:
            maps = data.masks.float() * (1 + i) + 0.5 * torch.randn(n, 32, 32, generator=gen)
            params = {"method": method, "method_params": {}, "target": "label",
                      "reduction": "sum", "baseline": "zero", "seed": 0}
            entry = store.entry(f"m{i}", method, params, data.ids, shape=(32, 32), chunk_size=16,
                                meta={"dataset_fingerprint": data.fingerprint()})
            entry.write(0, maps)
    RunInfo(dataset=SyntheticDataset(config=cfg.model_dump(mode="json", exclude_unset=True)),
            dataset_fingerprint=data.fingerprint(), split="all", sample_ids=data.ids,
            models_dir=str(models_dir.resolve()), member_ids=[f"m{i}" for i in range(members)],
            methods=list(METHODS)).save(run)
    return run


@pytest.fixture
def tiny_run(tmp_path):
    return make_run(tmp_path)
