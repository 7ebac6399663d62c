"""What ensembles reveal about data and models: per-class quality, bias, anonymisation.

* :func:`per_class_quality`: Dice and IoU of the binarised E* against the masks, per class; a
  class far below the others is hard or under-represented.
* :func:`bias_table`: the share of attribution mass on a region that is not evidence (a
  watermark, or everything outside the object), per class, next to the share a uniform map would
  put there; a class whose maps concentrate on the region is flagged.
* :func:`anonymisation_study`: images replaced by ``image * E*`` (or E* alone); a classifier
  trained on them, its accuracy next to one trained on the original images with the same budget,
  over several seeds, beside the information removed (:func:`information_removed`: SSIM and PSNR
  to the original); E* must be out of sample (cross-fitted) and explain the predicted class.

All thresholds are fixed a priori and documented; tables report the raw numbers next to the flags.
Any metric's per-class means from the metrics table are
:func:`concilium.metrics.tables.per_class_metric_means`; the audit job that feeds these measures
from a run is :mod:`concilium.jobs.audit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from concilium._checks import check_labels, check_maps, check_masks
from concilium._util import mean_interval
from concilium.data.dataset import ImageDataset
from concilium.ensemble.cnn import dice_score, iou_score
from concilium.models import create_model
from concilium.models.base import ConciliumNet
from concilium.models.fit import evaluate_accuracy, train_member

AnonymisationMode = Literal["original", "product", "map"]


def per_class_quality(
    probabilities: Tensor,
    masks: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    threshold: float = 0.5,
    flag_below: float | None = None,
    relative: float = 0.9,
    min_count: int = 10,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-class Dice and IoU of E* binarised at ``threshold``, with a bootstrap interval.

    A class is flagged only when the whole bootstrap interval of its mean Dice lies below the
    flag threshold, and only when it has at least ``min_count`` images: a class below the count
    is reported, never flagged (``reason`` says so). Works for any number of classes, 2 included.
    Pass held-out rows only (the test split): E* scored on its own training rows is in-sample.

    Args:
        probabilities: E* ``(N, H, W)`` in ``[0, 1]`` (the CNN ensembler's sigmoid output).
        masks: ``(N, H, W)`` bool.
        labels: ``(N,)`` class indices.
        class_names: the class names (``labels`` index into them).
        threshold: binarisation threshold of E*.
        flag_below: flag classes whose Dice interval lies below this absolute value; ``None``
            (default) uses ``relative`` times the median of the class means.
        relative: see ``flag_below`` (default 0.9).
        min_count: fewest images a class needs to be flagged (default 10).
        n_boot, level: bootstrap resamples and interval level.
        seed: seeds the bootstrap (``np.random.default_rng(seed)``).

    Returns:
        One row per class present: ``label, class, n, dice, dice_low, dice_high, iou,
        flag_threshold, flagged, reason``.
    """
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2 (an interval needs 2 images); got {min_count}")
    probabilities = check_maps(probabilities, "probabilities")
    masks = check_masks(masks, like=probabilities)
    labels = check_labels(labels, probabilities.shape[0], len(class_names))
    pred = probabilities > threshold
    dice, iou = dice_score(pred, masks), iou_score(pred, masks)
    rng = np.random.default_rng(seed)
    rows = []
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        mean, low, high = mean_interval(dice[sel].double().numpy(), rng=rng, n_boot=n_boot,
                                        level=level)
        rows.append({"label": c, "class": class_names[c], "n": int(sel.sum()), "dice": mean,
                     "dice_low": low, "dice_high": high, "iou": float(iou[sel].mean())})
    table = pd.DataFrame(rows)
    limit = flag_below if flag_below is not None else relative * float(table["dice"].median())
    table["flag_threshold"] = limit
    enough = table["n"] >= min_count
    table["flagged"] = enough & (table["dice_high"] < limit)
    table["reason"] = np.where(
        ~enough, f"fewer than {min_count} images: not flagged",
        np.where(table["flagged"], "interval below the threshold",
                 np.where(table["dice_low"] > limit, "interval above the threshold",
                          "interval includes the threshold")))
    return table


def attribution_share(maps: Tensor, region: Tensor, *, mass: Literal["abs", "positive"] = "abs") -> Tensor:
    """Share of each map's attribution mass inside ``region``: ``(N,)`` in ``[0, 1]``.

    ``mass="abs"`` uses ``|a|``, ``"positive"`` only ``max(a, 0)``. A map with no mass gives NaN
    (it attributes nothing anywhere).
    """
    maps = check_maps(maps)
    region = check_masks(region, like=maps, name="region")
    a = maps.abs() if mass == "abs" else maps.clamp(min=0)
    total = a.flatten(1).sum(1).double()
    inside = (a * region).flatten(1).sum(1).double()
    return torch.where(total > 0, inside / total.clamp(min=1e-300), float("nan"))


def bias_table(
    maps: Tensor,
    region: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    factor: float = 1.0,
    mass: Literal["abs", "positive"] = "abs",
    n_perm: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-class attribution share on a non-evidence region against a permutation null.

    Only images whose region is non-empty count (a watermark drawn on a few classes only).
    ``excess = share - area`` is bounded in ``[-1, 1]``: 0 is what a uniform map gives.
    The null: the class's regions laid on maps of images of the *other* classes (drawn at random,
    seeded, ``n_perm`` times); ``p_value`` is the share of null draws whose mean share reaches
    the class's (with the +1 correction), ``null_low``/``null_high`` the null's 2.5/97.5 %
    quantiles. A class is flagged when ``p_value < alpha`` and ``enrichment = share / area``
    is at least ``factor``; with no other class there is no null (NaN, not flagged).

    Args:
        maps: ``(N, H, W)`` explanation maps (non-negative or signed relevance; signed logit
            maps put |logit| mass on confident background and should not be audited).
        region: ``(N, H, W)`` bool: the watermark mask, or ``~object_mask``.
        labels: ``(N,)``.
        class_names: class names.
        factor: smallest enrichment that may flag (default 1: any significant excess).
        mass: ``"abs"`` or ``"positive"`` attribution mass.
        n_perm: null draws.
        alpha: significance level of the flag.
        seed: seeds the null draws.

    Returns:
        ``label, class, n, share, area, excess, enrichment, null_low, null_high, p_value,
        flagged`` for each class with region pixels.
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0; got {factor}")
    if n_perm < 1 or not 0 < alpha < 1:
        raise ValueError(f"n_perm must be >= 1 and alpha in (0, 1); got {n_perm}, {alpha}")
    labels = check_labels(labels, maps.shape[0], len(class_names))
    maps = check_maps(maps)
    region = check_masks(region, like=maps, name="region")
    share = attribution_share(maps, region, mass=mass)
    area = region.flatten(1).double().mean(1)
    has = region.flatten(1).any(1) & ~share.isnan()
    a = (maps.abs() if mass == "abs" else maps.clamp(min=0)).flatten(1).double()
    total = a.sum(1)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in sorted(set(labels[has].tolist())):
        sel = has & (labels == c)
        s, ar = float(share[sel].mean()), float(area[sel].mean())
        others = torch.nonzero((labels != c) & (total > 0)).flatten()
        low = high = p = float("nan")
        if len(others):
            reg = region[sel].flatten(1).double()  # (n_c, P)
            draws = others[torch.randint(len(others), (n_perm, reg.shape[0]), generator=gen)]
            null = ((a[draws] * reg).sum(-1) / total[draws]).mean(1)  # (n_perm,)
            low, high = (float(v) for v in torch.quantile(null, torch.tensor(
                [0.025, 0.975], dtype=null.dtype)))
            p = float(((null >= s).sum() + 1) / (n_perm + 1))
        rows.append({"label": c, "class": class_names[c], "n": int(sel.sum()), "share": s,
                     "area": ar, "excess": s - ar, "enrichment": s / ar, "null_low": low,
                     "null_high": high, "p_value": p,
                     "flagged": bool(p < alpha and s / ar >= factor)})
    return pd.DataFrame(rows, columns=["label", "class", "n", "share", "area", "excess",
                                       "enrichment", "null_low", "null_high", "p_value",
                                       "flagged"])


def anonymise(images: Tensor, emaps: Tensor, mode: AnonymisationMode) -> Tensor:
    """Images replaced by their explanations: ``"product"`` = ``image * E*``, ``"map"`` = E*
    repeated over the channels, ``"original"`` = the images unchanged."""
    if mode == "original":
        return images
    if emaps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"E* maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])} like "
                         f"the images; got {tuple(emaps.shape)}")
    e = emaps.to(images.dtype).clamp(0, 1)[:, None]
    if mode == "product":
        return images * e
    if mode == "map":
        return e.expand_as(images).contiguous()
    raise ValueError(f"mode must be 'original', 'product' or 'map'; got {mode!r}")


def information_removed(original: Tensor, anonymised: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """How much of each image an anonymisation keeps: per image, the SSIM and the PSNR (dB) of
    ``anonymised`` to ``original`` (scikit-image, ``data_range=1``: images in ``[0, 1]``; the
    colour channels as ``channel_axis``). Lower means more removed.

    An unchanged image has SSIM 1 and an infinite PSNR, written ``NaN`` (no finite value says
    "nothing removed"). The SSIM window is 7 px, or the largest odd size the image allows.

    Args:
        original: ``(N, C, H, W)`` images in ``[0, 1]``.
        anonymised: the same shape.

    Returns:
        ``(ssim, psnr)``, each ``(N,)``.

    Raises:
        ValueError: the shapes differ or are not ``(N, C, H, W)``.
    """
    if original.ndim != 4 or original.shape != anonymised.shape:
        raise ValueError(f"original and anonymised images must both be (N, C, H, W); got "
                         f"{tuple(original.shape)} and {tuple(anonymised.shape)}")
    a = original.detach().to("cpu", torch.float64).numpy()
    b = anonymised.detach().to("cpu", torch.float64).numpy()
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    ssim, psnr = np.empty(len(a)), np.empty(len(a))
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape[0] == 1:
            ssim[i] = structural_similarity(x[0], y[0], data_range=1.0, win_size=win)
        else:
            ssim[i] = structural_similarity(x, y, data_range=1.0, win_size=win, channel_axis=0)
        mse = float(np.mean((x - y) ** 2))
        psnr[i] = math.nan if mse == 0 else peak_signal_noise_ratio(x, y, data_range=1.0)
    return ssim, psnr


def anonymisation_study(
    dataset: ImageDataset,
    emaps: Tensor,
    *,
    modes: Sequence[AnonymisationMode] = ("original", "product", "map"),
    arch: str = "small-cnn",
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    in_sample_ids: Collection[str] = (),
    allow_in_sample: bool = False,
    target: str = "",
    device: str | torch.device = "cpu",
    model_factory: Callable[[], ConciliumNet] | None = None,
) -> pd.DataFrame:
    """Train one classifier per mode and seed on the train split, report its val and test
    accuracy beside the information the mode removed (SSIM, PSNR to the original test images).

    E* must be out of sample on every row the study reads: an E* map fitted on its own row is
    close to the mask there, so a classifier trained on train rows of in-sample E* and tested on
    held-out E* compares unlike inputs with ``original`` (review D3). Cross-fit the ensembler
    (``concilium ensemble RUN --kind cnn --crossfit 5``) so that every row's E* is out of fold.
    E* should come from maps of each image's predicted class (``target="pred"``): maps of the
    label put the answer into the anonymised input (review S1); ``target`` is recorded.

    Args:
        dataset: rows of all three splits (train, val, test), images in ``[0, 1]``.
        emaps: E* ``(N, H, W)`` in ``[0, 1]`` for every row of ``dataset``.
        modes: which inputs to compare; ``"original"`` is the reference.
        arch: architecture for :func:`concilium.models.create_model`.
        epochs, lr, batch_size: the same training budget for every mode.
        seeds: one classifier per mode and seed (initialisation and batch order).
        in_sample_ids: sample ids whose E* came from an ensembler fitted on that row.
        allow_in_sample: read such rows anyway (the table's ``in_sample`` column says so).
        target: the explanation target E* was derived from (``"pred (re-derived)"``, ...),
            written in the ``target`` column.
        device: where to train.
        model_factory: builds the classifier instead of ``create_model(arch, ...)``.

    Returns:
        One row per mode and seed: ``mode, seed, target, in_sample, val_accuracy,
        test_accuracy, ssim, psnr, n_train, n_test`` (``ssim``/``psnr``: means over the test
        rows, see :func:`information_removed`); :func:`anonymisation_summary` gives the mean and
        spread over the seeds.

    Raises:
        ValueError: a split is empty, ``emaps`` does not match the dataset, no seeds, or E* is
            in-sample on rows the study reads and ``allow_in_sample`` is False.
    """
    counts = {s: dataset.splits.count(s) for s in ("train", "val", "test")}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"the anonymisation study trains on 'train', stops on 'val' and tests on "
                         f"'test'; splits {empty} are empty (explain the run with --split all)")
    if not len(seeds):
        raise ValueError("pass at least one seed (seeds=[0, 1, 2])")
    fitted = set(in_sample_ids)
    in_sample = [i for i in dataset.ids if i in fitted]
    if in_sample and not allow_in_sample:
        raise ValueError(
            f"E* of {len(in_sample)} of the study's {len(dataset.ids)} rows (e.g. "
            f"{in_sample[:3]}) comes from an ensembler fitted on those rows, so the classifier "
            "would train on in-sample E* and test on held-out E*; cross-fit the ensembler "
            "(`concilium ensemble RUN --kind cnn --crossfit 5`, option crossfit) or pass "
            "allow_in_sample=True (audit option anonymisation_in_sample) to mark it in the table")
    test_rows = torch.tensor([i for i, s in enumerate(dataset.splits) if s == "test"],
                             dtype=torch.long)
    rows = []
    for mode in modes:
        images = anonymise(dataset.images, emaps, mode)
        ssim, psnr = information_removed(dataset.images[test_rows], images[test_rows])
        finite = psnr[np.isfinite(psnr)]
        data = ImageDataset(images=images, labels=dataset.labels, masks=dataset.masks,
                            ids=dataset.ids, splits=dataset.splits, class_names=dataset.class_names)
        test = data.subset("test")
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = model_factory() if model_factory else create_model(
                    arch, num_classes=dataset.num_classes)
            result = train_member(model, data, epochs=epochs, lr=lr, batch_size=batch_size,
                                  seed=int(seed), device=device)
            acc, _ = evaluate_accuracy(model, test.images, test.labels, device=device)
            rows.append({"mode": mode, "seed": int(seed), "target": target,
                         "in_sample": bool(in_sample), "val_accuracy": float(result.val_accuracy),
                         "test_accuracy": float(acc), "ssim": float(ssim.mean()),
                         "psnr": float(finite.mean()) if len(finite) else math.nan,
                         "n_train": counts["train"], "n_test": counts["test"]})
    return pd.DataFrame(rows)


def anonymisation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The mean and spread over the seeds of an :func:`anonymisation_study` table, one row per
    mode (in the table's order): ``mode, target, in_sample, seeds, test_accuracy`` (mean),
    ``test_accuracy_sd`` (sample standard deviation; NaN for one seed), ``test_accuracy_min``,
    ``test_accuracy_max``, ``val_accuracy`` (mean), ``ssim``, ``psnr``, ``n_train``, ``n_test``.
    """
    out = []
    for mode, g in table.groupby("mode", sort=False):
        acc = g["test_accuracy"].to_numpy(float)
        out.append({"mode": mode, "target": g["target"].iloc[0],
                    "in_sample": bool(g["in_sample"].any()), "seeds": len(g),
                    "test_accuracy": float(acc.mean()),
                    "test_accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
                    "test_accuracy_min": float(acc.min()), "test_accuracy_max": float(acc.max()),
                    "val_accuracy": float(g["val_accuracy"].mean()),
                    "ssim": float(g["ssim"].iloc[0]), "psnr": float(g["psnr"].iloc[0]),
                    "n_train": int(g["n_train"].iloc[0]), "n_test": int(g["n_test"].iloc[0])})
    return pd.DataFrame(out)
