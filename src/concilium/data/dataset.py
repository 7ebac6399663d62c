"""The in-memory dataset every stage of concilium consumes.

Benchmark data (:mod:`concilium.data.synthetic`) and folder datasets
(:mod:`concilium.data.folder`) both produce an :class:`ImageDataset`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from concilium.vocabulary import SPLITS


def stratified_splits(
    labels: Tensor | np.ndarray | list[int],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> list[str]:
    """A deterministic, seeded, class-stratified train/val/test assignment.

    Every class is spread over the splits in proportion to ``fractions`` (to within one sample)
    and the global split sizes are exact: ``round(N * fractions[0])`` train samples, then
    ``round(N * (fractions[0] + fractions[1]))`` train plus val samples, the rest test.

    Args:
        labels: ``N`` class indices.
        fractions: train, val and test fractions; non-negative, summing to 1.
        seed: seed of the random order; the same labels and seed give the same splits.

    Returns:
        ``N`` split names from :data:`SPLITS`.

    Raises:
        ValueError: if the fractions are negative or do not sum to 1.

    Example:
        >>> stratified_splits([0, 0, 1, 1], fractions=(0.5, 0.0, 0.5), seed=0).count("train")
        2
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1; "
            f"got {fractions}"
        )
    y = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    n = y.shape[0]
    rng = np.random.default_rng([int(seed), 0x5E1])
    key = np.empty(n, dtype=np.float64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank = rng.permutation(idx.shape[0])
        key[idx] = (rank + rng.random()) / idx.shape[0]
    order = np.lexsort((rng.random(n), key))
    n_train = round(n * fr[0])
    n_train_val = max(n_train, round(n * (fr[0] + fr[1])))
    out = [""] * n
    for pos, i in enumerate(order.tolist()):
        out[i] = "train" if pos < n_train else "val" if pos < n_train_val else "test"
    return out


@dataclass
class ImageDataset:
    """Images with labels and ground-truth regions.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices.
        masks: ``(N, H, W)`` bool, the region a good explanation should point at (the object).
        ids: ``N`` unique sample ids (strings, used as keys in the explanation store).
        splits: ``N`` split names, each one of ``"train"``, ``"val"``, ``"test"``.
        class_names: the ``C`` class names; ``labels`` index into it.
        parts: named extra mask sets, each ``(N, H, W)`` bool: ``"evidence"``, one per part
            (``"beak"``, ``"wings"``, ...), ``"watermark"``.
        attributes: ``(N, A)`` float32 multi-hot attribute vectors, or ``None``.
        attribute_names: the ``A`` attribute names.
        class_part_values: per class, the defining ``{part: attribute value}``; lets
            :meth:`difference_masks` build one-vs-one ground truth. ``None`` for folder data.
        card: free-form description of where the data came from (generator parameters, folder).
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    ids: list[str]
    splits: list[str]
    class_names: list[str]
    parts: dict[str, Tensor] = field(default_factory=dict)
    attributes: Tensor | None = None
    attribute_names: list[str] = field(default_factory=list)
    class_part_values: list[dict[str, str]] | None = None
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W); got {tuple(self.images.shape)}")
        h, w = self.images.shape[-2:]
        if self.masks.shape != (n, h, w):
            raise ValueError(
                f"masks must be {(n, h, w)} like the images; got {tuple(self.masks.shape)}"
            )
        for name, m in self.parts.items():
            if m.shape != (n, h, w):
                raise ValueError(f"part masks {name!r} must be {(n, h, w)}; got {tuple(m.shape)}")
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise ValueError("ids must be N unique strings")
        if len(self.splits) != n or not set(self.splits) <= set(SPLITS):
            raise ValueError(f"splits must be N names from {SPLITS}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},); got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[-2], self.images.shape[-1])

    def mask_set(self, name: str = "masks") -> Tensor:
        """The ground-truth masks called ``name``: ``"masks"`` (object) or a key of ``parts``."""
        if name in ("masks", "object", "default"):
            return self.masks
        if name not in self.parts:
            raise ValueError(
                f"unknown mask set {name!r}; valid: masks, {', '.join(sorted(self.parts))}"
            )
        return self.parts[name]

    def subset(self, index: Tensor | list[int] | str) -> ImageDataset:
        """A new dataset of the given rows, or of one split by name."""
        if isinstance(index, str):
            if index not in SPLITS:
                raise ValueError(f"unknown split {index!r}; valid: {', '.join(SPLITS)}")
            index = [i for i, s in enumerate(self.splits) if s == index]
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        return ImageDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            masks=self.masks[idx],
            ids=[self.ids[i] for i in rows],
            splits=[self.splits[i] for i in rows],
            class_names=list(self.class_names),
            parts={k: v[idx] for k, v in self.parts.items()},
            attributes=None if self.attributes is None else self.attributes[idx],
            attribute_names=list(self.attribute_names),
            class_part_values=self.class_part_values,
            card=dict(self.card),
        )

    def difference_masks(self, targets: Tensor) -> Tensor:
        """One-vs-one ground truth: for sample i of class c and target class t = ``targets[i]``,
        the union of the part masks whose defining attribute values differ between c and t.

        A class against itself gives an empty mask. A part defined by only one of the two
        classes counts as differing.

        Args:
            targets: ``(N,)`` target class indices, one per sample.

        Returns:
            ``(N, H, W)`` bool masks.

        Raises:
            ValueError: if the dataset has no ``class_part_values`` (folder datasets without a
                card), a defining part has no mask set, or ``targets`` is not ``(N,)`` class
                indices.
        """
        if self.class_part_values is None:
            raise ValueError(
                "this dataset has no per-class part definitions; difference masks "
                "need the synthetic benchmark or class_part_values"
            )
        targets = torch.as_tensor(targets)
        n, c = len(self), len(self.class_part_values)
        if targets.shape != (n,) or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets must be ({n},) integer class indices; got {tuple(targets.shape)} "
                f"{targets.dtype}"
            )
        if n and (targets.min() < 0 or targets.max() >= c):
            raise ValueError(
                f"targets must lie in [0, {c}); got [{targets.min()}, {targets.max()}]"
            )
        names = sorted({part for d in self.class_part_values for part in d})
        missing = [p for p in names if p not in self.parts]
        if missing:
            raise ValueError(
                f"class_part_values name the parts {missing} but the dataset has no such mask "
                f"sets (it has {sorted(self.parts)}); add them to parts"
            )
        # table[c, t, k]: does part k differ between classes c and t
        table = torch.tensor(
            [
                [[a.get(p) != b.get(p) for p in names] for b in self.class_part_values]
                for a in self.class_part_values
            ],
            dtype=torch.bool,
        ).reshape(c, c, len(names))
        differ = table[self.labels.long(), targets.long()]  # (N, P)
        out = torch.zeros_like(self.masks)
        for k, part in enumerate(names):
            out |= differ[:, k, None, None] & self.parts[part]
        return out

    def fingerprint(self) -> str:
        """A short content hash of images, labels and ids (identifies the data in stores)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()[:16]
