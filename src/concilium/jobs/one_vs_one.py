"""The one-vs-one study of a run: a GANMEX generator per member, then "why c and not t" maps
with the GANMEX baseline and the classic ones, scored against the benchmark's exact
counterfactuals (:mod:`concilium.metrics.one_vs_one`).

On disk (``RUN/``)::

    ganmex/<member>/                 the member's generator (GEN/, resumable: see concilium.ganmex)
    ganmex/<member>/one_vs_one.parquet  its per-image scores, with the options hash they belong to
    results/one_vs_one.parquet       summary: one row per member, method and baseline (report)
    results/one_vs_one_claims.parquet  the paper's claims, one verdict per member, method, score
    results/one_vs_one_generator.parquet  the generator's quality on the same images

Each member's generator resumes where it stopped and its scores are reused while the options
are unchanged, so an interrupted study continues where it was.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from concilium._util import atomic_write
from concilium.data import ImageDataset, counterfactuals
from concilium.explain import MeanBaseline
from concilium.ganmex import (
    GanmexBaseline,
    GanmexOptions,
    GeneratorBaseline,
    card_hash,
    finetune_generator,
    load_card,
    train_ganmex,
)
from concilium.metrics.contrast import PairedBaseline
from concilium.metrics.one_vs_one import claim_verdicts, one_vs_one_scores, summarise_one_vs_one
from concilium.models import load_members
from concilium.store import write_table

__all__ = [
    "GANMEX_DIR",
    "OneVsOneOptions",
    "contrast_pairs",
    "member_scores",
    "run_one_vs_one",
    "train_generator",
]

GANMEX_DIR = "ganmex"
"""Where a run keeps its generators: ``RUN/ganmex/<member>/``."""
_SCORES = "one_vs_one.parquet"
_SCORES_KEY = "one_vs_one.json"


class OneVsOneOptions(BaseModel):
    """Options of the one-vs-one study (``[ganmex]`` of an experiment).

    Attributes:
        preset: GANMEX option preset (``default`` or ``reference``).
        generator: GANMEX training options on top of the preset (``steps``, ``l_sim``, ...).
        methods: attribution methods (those that take a baseline: IG, DeepLIFT, occlusion).
        params: per method, its parameters.
        seeds: each seed draws its own images and contrast classes (and uniform baseline).
        limit: images per seed (correctly classified, with a partner class).
        split: where the images come from.
        pairs: ``one_part``: contrasts that differ from the class in exactly one part (the
            cleanest ground truth); ``all``: any other class.
        step: contrast-AOPC step, percent of the pixels.
        max_percent: contrast-AOPC deletes up to this percent.
        randomisation: run the cascading randomisation test (the costliest score).
        regenerate_steps: for the randomisation test, fine-tune the generator this many steps
            against every randomised model (``finetune_generator``) and explain with it; 0
            declares GANMEX's randomisation score untestable (its baseline is made for the
            trained model).
        members: member ids to study (default all).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "default"
    generator: dict[str, Any] = Field(default_factory=dict)
    methods: list[str] = Field(default_factory=lambda: ["integrated_gradients"])
    params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"integrated_gradients": {"n_steps": 32}})
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    limit: int = Field(48, ge=1)
    split: Literal["train", "val", "test"] = "test"
    pairs: Literal["one_part", "all"] = "one_part"
    step: float = Field(0.5, gt=0, le=100)
    max_percent: float = Field(20.0, gt=0, le=100)
    randomisation: bool = True
    regenerate_steps: int = Field(0, ge=0)
    members: list[str] | None = None

    def ganmex_options(self) -> GanmexOptions:
        """The generator's training options (raises ``ValueError`` on a bad preset or key)."""
        return GanmexOptions.preset(self.preset, **self.generator)

    def scores_key(self) -> str:
        """A hash of what the scores depend on (not the generator's training options)."""
        fields = self.model_dump(exclude={"preset", "generator", "members"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def train_generator(
    model: nn.Module,
    card: Any,
    dataset: ImageDataset,
    gen_dir: Path,
    options: GanmexOptions,
    *,
    device: str = "cpu",
    on_validation: Callable[[Any], None] | None = None,
) -> Path:
    """Train (or resume, or keep) the GANMEX generator of one member in ``gen_dir``.

    Validates on the val split against the exact counterfactuals when the data is the
    benchmark (``|G - x*|`` and the in-region share in ``validation.csv``).
    """
    train, val = dataset.subset("train"), dataset.subset("val")
    val = val.subset(list(range(min(options.val_size, len(val)))))
    refs = None
    if dataset.card.get("source") == "concilium.data.synthetic" and len(val):
        def refs(t: torch.Tensor) -> torch.Tensor:
            return counterfactuals(val, t)
    # a finished generator resumes to no step at all (and other settings are refused)
    train_ganmex(model, train.images, train.labels, out_dir=gen_dir,
                 class_names=list(card.class_names), options=options,
                 val_images=val.images if len(val) else None,
                 val_labels=val.labels if len(val) else None, val_counterfactuals=refs,
                 classifier_card_hash=card_hash(card), classifier_name=str(card.member_id),
                 data_fingerprint=dataset.fingerprint(), device=device,
                 on_validation=on_validation)
    return gen_dir


def _partners(dataset: ImageDataset, pairs: str) -> dict[int, list[int]]:
    cpv = dataset.class_part_values
    if cpv is None:
        raise ValueError("the one-vs-one study needs per-class part definitions (the benchmark)")
    out: dict[int, list[int]] = {}
    for c, a in enumerate(cpv):
        for t, b in enumerate(cpv):
            differing = [p for p in set(a) | set(b) if a.get(p) != b.get(p)]
            if t != c and (pairs == "all" or len(differing) == 1):
                out.setdefault(c, []).append(t)
    return out


def contrast_pairs(
    model: nn.Module, data: ImageDataset, *, seed: int, limit: int, pairs: str = "one_part"
) -> tuple[list[int], torch.Tensor]:
    """Up to ``limit`` rows of ``data`` (drawn by ``seed``) that the model classifies correctly
    and whose class has a partner, and one partner class ``t`` per row (drawn by ``seed``)."""
    partners = _partners(data, pairs)
    with torch.no_grad():
        pred = torch.cat([model(data.images[i:i + 256]).argmax(1).cpu()
                          for i in range(0, len(data), 256)])
    rng = random.Random(seed)
    eligible = [i for i, (c, p) in enumerate(zip(data.labels.tolist(), pred.tolist(),
                                                 strict=True)) if c == p and c in partners]
    rows = sorted(rng.sample(eligible, min(limit, len(eligible))))
    contrast = torch.tensor([rng.choice(partners[int(data.labels[i])]) for i in rows],
                            dtype=torch.long)
    return rows, contrast


def member_scores(
    model: nn.Module,
    gen_dir: Path,
    dataset: ImageDataset,
    options: OneVsOneOptions,
    *,
    classifier_card: Any = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Per-image one-vs-one scores of one member for every seed (rows of
    :func:`~concilium.metrics.one_vs_one.one_vs_one_scores` with ``seed``), plus the
    generator's quality on the same images: ``success`` (``C(G(x, t)) = t``), ``l1``
    (``|x - G|``), ``counterfactual_l1`` (``|G - x*|``) and ``in_region`` as metrics of the
    ``ganmex`` row of method ``generator``."""
    model.eval()
    data = dataset.subset(options.split)
    train = dataset.subset("train")
    train_mean = train.images.mean(0)
    ganmex = GanmexBaseline(gen_dir, classifier_card=classifier_card, device=device)
    regenerate = {}
    if options.regenerate_steps:
        made: dict[tuple[float, ...], GeneratorBaseline] = {}

        def remake(randomised: nn.Module) -> GeneratorBaseline:
            # the randomised copy is changed in place layer after layer: key on its weights
            key = tuple(float(p.detach().double().sum()) for p in randomised.parameters())
            if key not in made:
                tuned = finetune_generator(ganmex.generator, randomised, train.images,
                                           train.labels, options=ganmex.card.options,
                                           steps=options.regenerate_steps)
                made[key] = GeneratorBaseline(tuned, name=f"ganmex-regenerated-{len(made)}")
            return made[key]

        regenerate["ganmex"] = remake
    frames = []
    for seed in options.seeds:
        rows, t = contrast_pairs(model, data, seed=seed, limit=options.limit, pairs=options.pairs)
        if not rows:
            raise ValueError(f"no correctly classified {options.split} image has a partner class")
        part = data.subset(rows)
        x, c = part.images, part.labels
        x_star = counterfactuals(part, t)
        baselines = {"x*": PairedBaseline(x, x_star, name="x*"), "ganmex": ganmex,
                     "zero": "zero", "blur": "blur", "uniform": f"uniform:seed={seed}",
                     "mean": MeanBaseline(train_mean)}
        scores = one_vs_one_scores(
            model, x, c, t, x_star, baselines=baselines, methods=options.methods,
            method_params=options.params, model_dependent=("ganmex",), regenerate=regenerate,
            step=options.step,
            max_percent=options.max_percent, randomisation=options.randomisation, seed=seed)
        with torch.no_grad():
            g = ganmex(x, t)
            hit = (model(g.to(device)).argmax(1).cpu() == t).float()
        edit = (x - g).abs()
        changed = (x_star != x).any(1, keepdim=True)
        quality = {"success": hit, "l1": edit.mean((1, 2, 3)),
                   "counterfactual_l1": (g - x_star).abs().mean((1, 2, 3)),
                   "in_region": (edit * changed).sum((1, 2, 3)) / edit.sum((1, 2, 3))}
        scores += [{"method": "generator", "baseline": "ganmex", "metric": name, "image": i,
                    "value": float(v)} for name, values in quality.items()
                   for i, v in enumerate(values.tolist())]
        frame = pd.DataFrame(scores)
        frame["seed"] = seed
        frame["sample_id"] = frame["image"].map(lambda i, ids=part.ids: ids[i])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_one_vs_one(
    run_dir: str | Path,
    *,
    dataset: ImageDataset,
    models_dir: str | Path,
    options: OneVsOneOptions,
    device: str = "cpu",
    on_validation: Callable[[str, Any], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Train (or resume) a generator per member, score it and write the study's tables.

    Returns:
        ``{"one_vs_one": summary, "one_vs_one_claims": verdicts, "one_vs_one_generator":
        quality}`` as written under ``RUN/results/``.
    """
    run = Path(run_dir)
    gan_options = options.ganmex_options()
    frames = []
    for model, card in load_members(models_dir, device=device):
        if options.members is not None and card.member_id not in options.members:
            continue
        gen_dir = run / GANMEX_DIR / card.member_id
        report = None if on_validation is None else (
            lambda rec, m=card.member_id: on_validation(m, rec))
        train_generator(model, card, dataset, gen_dir, gan_options, device=device,
                        on_validation=report)
        key = json.dumps({"scores": options.scores_key(), "step": load_card(gen_dir).step,
                          "generator": card_hash(load_card(gen_dir))})
        cached = gen_dir / _SCORES
        if cached.is_file() and (gen_dir / _SCORES_KEY).is_file() and \
                (gen_dir / _SCORES_KEY).read_text() == key:
            frame = pd.read_parquet(cached)
        else:
            frame = member_scores(model, gen_dir, dataset, options, classifier_card=card,
                                  device=device)
            atomic_write(cached, lambda tmp, f=frame: f.to_parquet(tmp, index=False))
            atomic_write(gen_dir / _SCORES_KEY, lambda tmp, k=key: tmp.write_text(k))
        frame["member"] = card.member_id
        frames.append(frame)
    if not frames:
        raise ValueError(f"no member of {models_dir} matches members={options.members}")
    rows = pd.concat(frames, ignore_index=True)
    maps = rows[rows["method"] != "generator"]
    tables = {"one_vs_one": summarise_one_vs_one(maps),
              "one_vs_one_claims": claim_verdicts(maps),
              "one_vs_one_generator": summarise_one_vs_one(rows[rows["method"] == "generator"])}
    tables["one_vs_one"]["source"] = tables["one_vs_one"]["member"]
    for name, table in tables.items():
        write_table(run, name, table)
    return tables
