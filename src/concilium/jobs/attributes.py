"""The attribute cards of a run: for a multitask member, the class map and one map per attribute
on a few showcase images, with the relevance mass of each map on the attribute's part mask.

"Predicted class X because: attribute A (probability p) here [map], ..." needs the member's
predictions and fresh maps of its attribute head; this job computes them once and writes them
under ``RUN/results/`` so that the report only reads:

``attributes.parquet`` (+ ``.csv``), one row per (sample, attribute), and the maps in
``attributes.npz`` (layout: :data:`concilium.store.results.ATTRIBUTES_TABLE`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from concilium.data.showcase import showcase_rows
from concilium.explain import METHODS, explain
from concilium.metrics import evaluate
from concilium.models.base import AttributeView
from concilium.store import (
    ATTRIBUTE_COLUMNS,
    ATTRIBUTES_TABLE,
    Run,
    read_table,
    write_arrays,
    write_table,
)


def run_attribute_cards(
    run_dir: str | Path, *, method: str = "gradcam", samples: int = 3, device: str = "cpu"
) -> pd.DataFrame | None:
    """Explain the attribute head of the run's first multitask member on ``samples`` showcase
    images (those of the report's gallery) and write the cards under ``RUN/results/``.

    Args:
        run_dir: a run made by ``concilium explain`` (evaluated first, the images shown are ones
            with per-image scores).
        method: the explanation method of the class and attribute maps.
        samples: how many images (0: nothing to do).
        device: where the member runs.

    Returns:
        The table written (columns :data:`~concilium.store.results.ATTRIBUTE_COLUMNS`), or ``None`` when there is nothing
        to explain: ``samples == 0``, a dataset without attributes, or no member with an
        attribute head.

    Raises:
        ValueError: unknown method or ``samples < 0``; a run whose data or members changed.
        FileNotFoundError: the run or its members folder is gone.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be an int >= 0; got {samples!r}")
    METHODS.get(method)
    if samples == 0:
        return None
    ctx = Run.open(run_dir, load_models=True, device=device, mode="r")
    data = ctx.data
    multitask = [(m, c) for m, c in ctx.members if getattr(m, "attribute_head", None) is not None]
    if not data.attribute_names or not multitask:
        return None
    model, card = multitask[0]
    metrics = read_table(run_dir, "metrics")
    scored = None if metrics is None or metrics.empty else set(metrics["sample"].astype(str))
    rows = showcase_rows(data, samples, scored=scored)
    images = data.images[rows].to(device)
    with torch.no_grad():
        class_logits, attr_logits = model.forward_all(images)
    pred = class_logits.argmax(1)
    class_prob = class_logits.softmax(1).gather(1, pred[:, None])[:, 0].cpu()
    attr_prob = attr_logits.sigmoid().cpu()
    names = list(data.attribute_names)
    with warnings.catch_warnings():  # Captum's warnings on a model in eval mode, as in the CLI
        warnings.simplefilter("ignore")
        class_maps = explain(model, images, pred, method=method).cpu()
        view = AttributeView(model)
        attr_maps = torch.stack([
            explain(view, images, torch.full((len(rows),), a, device=images.device),
                    method=method).cpu()
            for a in range(len(names))
        ], dim=1)
    table = []
    for a, name in enumerate(names):
        part = name.split("_")[0]
        part = part if part in data.parts else None
        mass = cmass = [math.nan] * len(rows)
        if part is not None:
            pmask = data.parts[part][rows].bool()
            mass = _relevance_mass(attr_maps[:, a], pmask)
            cmass = _relevance_mass(class_maps, pmask)
        for k, row in enumerate(rows):
            table.append({
                "sample": data.ids[row], "source": str(card.member_id), "method": method,
                "predicted": data.class_names[int(pred[k])],
                "class_probability": float(class_prob[k]), "attribute": name,
                "probability": float(attr_prob[k, a]), "part": part,
                "relevance_mass": float(mass[k]), "class_relevance_mass": float(cmass[k]),
            })
    order = {data.ids[row]: k for k, row in enumerate(rows)}
    frame = pd.DataFrame(table, columns=list(ATTRIBUTE_COLUMNS))
    frame = frame.sort_values("sample", key=lambda s: s.map(order), kind="stable")
    frame = frame.reset_index(drop=True)
    write_table(run_dir, ATTRIBUTES_TABLE, frame)
    write_arrays(run_dir, ATTRIBUTES_TABLE, {
        "sample_ids": np.array([data.ids[r] for r in rows]),
        "attribute_names": np.array(names),
        "class_maps": class_maps.numpy(),
        "attribute_maps": attr_maps.numpy(),
    })
    return frame


def _relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Relevance mass (:mod:`concilium.metrics`) of each map on its mask; NaN where undefined
    (an empty mask, a map summing to 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate("relevance_mass", maps.float(), masks=masks).tolist()
