"""Which samples to show: the report's gallery and the attribute cards of ``concilium audit``
pick the same images with :func:`showcase_rows`, so a card and a gallery figure show one image.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from concilium.data.dataset import ImageDataset


def choose_samples(labels: Sequence[int], n: int) -> list[int]:
    """``n`` row numbers: the first sample of each class in class order, then the next ones in
    order (deterministic, covers as many classes as possible).

    Example:
        >>> choose_samples([1, 1, 0, 2], 2)
        [0, 2]
    """
    first: dict[int, int] = {}
    for i, c in enumerate(labels):
        first.setdefault(int(c), i)
    chosen = [first[c] for c in sorted(first)][:n]
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    return sorted(chosen + rest[: max(0, n - len(chosen))])


def showcase_rows(
    dataset: ImageDataset, n: int, *, scored: Collection[str] | None = None
) -> list[int]:
    """``n`` rows of ``dataset`` to show: held-out (``test``) rows when the dataset has any, the
    ``scored`` sample ids among them when any is scored, then :func:`choose_samples`.

    Args:
        dataset: the explained samples of a run.
        n: how many rows.
        scored: sample ids with per-image scores (the metrics table's ``sample`` column).

    Returns:
        Row numbers into ``dataset``, ascending.
    """
    candidates = list(range(len(dataset)))
    if "test" in dataset.splits:
        candidates = [i for i in candidates if dataset.splits[i] == "test"]
    if scored is not None:
        keep = set(scored)
        candidates = [i for i in candidates if dataset.ids[i] in keep] or candidates
    picked = choose_samples([int(dataset.labels[i]) for i in candidates], n)
    return [candidates[i] for i in picked]
