"""The GANMEX baseline provider: ``b = G(x, t)``, the closest realistic image of class ``t``.

:class:`GanmexBaseline` implements the ``BaselineProvider`` protocol of
:mod:`concilium.explain` (``provider(images, targets) -> baselines (N, C, H, W)``), so it is
passed as ``baseline=`` to ``concilium.explain.explain`` for integrated gradients, DeepLIFT or
occlusion. For a one-vs-one explanation ("why class c and not t") explain the target
``"contrast:t"`` with ``baseline=provider``: for a contrast target ``concilium.explain`` hands
the provider the contrast classes ``t``, so the baseline is ``G(x, t)``.

Each baseline is computed once: it is kept in memory under a hash of the image's bytes and the
target class, and in the explanation store (``ExplanationStore.cache_array``) when one is given.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from concilium._checks import check_images, check_labels
from concilium.ganmex.checkpoint import (
    GENERATOR_FILE,
    GanmexCard,
    card_hash,
    load_generator,
)

__all__ = [
    "CACHE_NAME",
    "ContrastBaseline",
    "GanmexBaseline",
    "GeneratorBaseline",
    "image_key",
    "parse_baseline_spec",
]

CACHE_NAME = "ganmex_baselines"


class _NotCached(Exception):
    """Raised inside ``cache_array``'s compute to ask the store whether a key is present."""


def image_key(image: Tensor) -> str:
    """A content hash of one image ``(C, H, W)`` (its float32 bytes and shape)."""
    array = image.detach().to("cpu", torch.float32).contiguous().numpy()
    h = hashlib.sha256(str(tuple(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()[:32]


def _card_field(card: Any, name: str) -> Any:
    if isinstance(card, dict):
        return card.get(name)
    return getattr(card, name, None)


class GanmexBaseline:
    """Counterfactual baselines from a trained GANMEX generator.

    Args:
        gen_dir: the generator directory written by ``concilium ganmex train``.
        classifier_card: the member card (``MemberCard``, dict, or path to the member folder or
            its ``card.json``) of the classifier being explained. When given, the generator must
            have been trained against exactly this classifier (same card hash) and its class
            names and image size must match.
        class_names: the class names the explained model uses, in logit order (checked against
            the generator's card when given).
        image_size: ``(H, W)`` of the images to explain (checked when given; every call also
            checks the images it receives).
        device: where the generator runs (``"cpu"`` or ``"cuda"``); baselines are returned on the
            device of the images.
        store: an ``ExplanationStore``; baselines are also cached there, so a later run (or a
            resumed one) does not regenerate them.
        batch_size: images per generator call.

    Raises:
        FileNotFoundError: if ``gen_dir`` is not a generator directory.
        ValueError: if the generator was trained for other classes, another image size, or
            another classifier.

    Example:
        >>> provider = GanmexBaseline("runs/gen", classifier_card="models/m0")  # doctest: +SKIP
        >>> baselines = provider(images, contrast_targets)                      # doctest: +SKIP
    """

    def __init__(
        self,
        gen_dir: str | os.PathLike,
        *,
        classifier_card: Any = None,
        class_names: list[str] | None = None,
        image_size: tuple[int, int] | None = None,
        device: str | torch.device = "cpu",
        store: Any = None,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.gen_dir = Path(gen_dir)
        self.device = torch.device(device)
        self.generator, self.card = load_generator(self.gen_dir, device=self.device)
        self._check_compatible(classifier_card, class_names, image_size)
        self.store = store
        if store is not None and not callable(getattr(store, "cache_array", None)):
            raise TypeError(
                "store must be a concilium.store.ExplanationStore (with cache_array); got "
                f"{type(store).__name__}"
            )
        self.batch_size = batch_size
        weights = hashlib.sha256((self.gen_dir / GENERATOR_FILE).read_bytes()).hexdigest()[:16]
        self.fingerprint = f"{weights}-{self.card.step}"
        self.name = f"ganmex:{self.fingerprint}"
        """Stable, content-based description (used by ``concilium.explain`` in params hashes)."""
        self._memory: dict[tuple[str, int], Tensor] = {}
        self.generated = 0
        """Number of baselines this provider computed with the generator (cache misses)."""

    # -- checks -------------------------------------------------------------------------------

    def _check_compatible(
        self, classifier_card: Any, class_names: list[str] | None, image_size: Any
    ) -> None:
        card: GanmexCard = self.card
        where = f"the GANMEX generator in {self.gen_dir}"
        if classifier_card is not None:
            if isinstance(classifier_card, str | os.PathLike):
                path = Path(classifier_card)
                path = path / "card.json" if path.is_dir() else path
                classifier_card = json.loads(path.read_text())
            names = _card_field(classifier_card, "class_names")
            size = _card_field(classifier_card, "image_size")
            class_names = class_names if class_names is not None else names
            image_size = image_size if image_size is not None else size
            expected = card_hash(classifier_card)
            if card.classifier_card_hash is not None and card.classifier_card_hash != expected:
                raise ValueError(
                    f"{where} was trained against another classifier (card hash "
                    f"{card.classifier_card_hash}, this one {expected}, trained against "
                    f"{card.classifier or 'unknown'}); train a generator for this model with "
                    "`concilium ganmex train DATA --model MEMBER --out GEN`"
                )
        if class_names is not None and list(class_names) != card.class_names:
            raise ValueError(
                f"{where} was trained for the classes {card.class_names}, not {list(class_names)}; "
                "train a generator for this model's classes"
            )
        if image_size is not None and tuple(image_size) != tuple(card.image_size):
            raise ValueError(
                f"{where} was trained on {tuple(card.image_size)} images, not "
                f"{tuple(image_size)}; resize the images or train a generator at this size"
            )

    def _check_call(self, images: Tensor, targets: Tensor) -> Tensor:
        images = check_images(images)
        c, h, w = images.shape[1:]
        if (h, w) != tuple(self.card.image_size) or c != self.card.in_channels:
            raise ValueError(
                f"the GANMEX generator in {self.gen_dir} makes ({self.card.in_channels}, "
                f"{self.card.image_size[0]}, {self.card.image_size[1]}) baselines; got images "
                f"{tuple(images.shape[1:])}; resize them or train a generator at this size"
            )
        if not isinstance(targets, Tensor):
            targets = torch.as_tensor(targets)
        if targets.ndim == 0:
            targets = targets.expand(images.shape[0])
        return check_labels(targets, images.shape[0], self.card.num_classes, "targets")

    # -- the provider -------------------------------------------------------------------------

    def _store_key(self, key: tuple[str, int]) -> dict[str, Any]:
        return {"generator": self.fingerprint, "image": key[0], "target": key[1]}

    def _from_store(self, key: tuple[str, int]) -> Tensor | None:
        def missing() -> Tensor:
            raise _NotCached

        try:
            return self.store.cache_array(CACHE_NAME, self._store_key(key), missing)
        except _NotCached:
            return None

    @torch.no_grad()
    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        """Baselines ``G(x_i, t_i)`` ``(N, C, H, W)``, on the images' device and dtype.

        Args:
            images: ``(N, C, H, W)`` in [0, 1], the generator's image size.
            targets: ``(N,)`` contrast classes ``t`` (an int or a 0-d tensor is broadcast).
        """
        targets = self._check_call(images, targets)
        keys = [(image_key(x), int(t)) for x, t in zip(images, targets.tolist(), strict=True)]
        out: list[Tensor | None] = [self._memory.get(k) for k in keys]
        if self.store is not None:
            for i, k in enumerate(keys):
                if out[i] is None:
                    found = self._from_store(k)
                    if found is not None:
                        self._memory[k] = out[i] = found
        todo = [i for i, v in enumerate(out) if v is None]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            x = images[rows].to(self.device, torch.float32)
            t = targets[rows].to(self.device)
            made = self.generator(x, t).cpu()
            self.generated += len(rows)
            for i, b in zip(rows, made, strict=True):
                if self.store is not None:
                    b = self.store.cache_array(CACHE_NAME, self._store_key(keys[i]),
                                               lambda b=b: b)
                self._memory[keys[i]] = out[i] = b
        return torch.stack(out).to(images.device, images.dtype)  # type: ignore[arg-type]

    def for_contrast(self, images: Tensor, contrast: Tensor) -> ContrastBaseline:
        """A provider that always uses the contrast class of each of ``images``.

        ``concilium.explain`` hands a provider the *explained* classes (the contrast classes
        only for a ``"contrast:<t>"`` target). To explain class ``c`` itself against
        ``G(x, t)``, or with per-image ``t``, this binds each image (by content hash) to its
        ``t``, so the provider works for any batching or subset of these images (e.g. inside a
        randomisation metric).

        Args:
            images: ``(N, C, H, W)`` the images that will be explained.
            contrast: ``(N,)`` their contrast classes ``t``.
        """
        contrast = self._check_call(images, contrast)
        return ContrastBaseline(self, {image_key(x): int(t) for x, t in
                                       zip(images, contrast.tolist(), strict=True)})

    def __repr__(self) -> str:
        return (f"GanmexBaseline({str(self.gen_dir)!r}, classes={self.card.class_names}, "
                f"image_size={tuple(self.card.image_size)}, step={self.card.step})")


class ContrastBaseline:
    """A :class:`GanmexBaseline` bound to one contrast class per image (see
    :meth:`GanmexBaseline.for_contrast`); the ``targets`` it is called with are ignored."""

    def __init__(self, provider: GanmexBaseline, contrast: dict[str, int]) -> None:
        self.provider = provider
        self.contrast = contrast
        digest = hashlib.sha256(repr(sorted(contrast.items())).encode()).hexdigest()[:12]
        self.name = f"{provider.name}:contrast-{digest}"

    def __call__(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        keys = [image_key(x) for x in check_images(images)]
        missing = sum(k not in self.contrast for k in keys)
        if missing:
            raise ValueError(
                f"{missing} of {len(keys)} images were not bound to a contrast class; call "
                "GanmexBaseline.for_contrast(images, contrast) with these images"
            )
        t = torch.tensor([self.contrast[k] for k in keys], dtype=torch.long)
        return self.provider(images, t)

    def __repr__(self) -> str:
        return f"ContrastBaseline({self.provider!r}, {len(self.contrast)} images)"


class GeneratorBaseline:
    """``G(x, t)`` from a generator held in memory (e.g. one fine-tuned for a randomised model by
    :func:`~concilium.ganmex.training.finetune_generator`), without caching or card checks.

    Args:
        generator: a :class:`~concilium.ganmex.networks.Generator`.
        name: shown in metadata and ``repr``.
    """

    def __init__(self, generator: torch.nn.Module, *, name: str = "generator") -> None:
        self.generator = generator
        self.name = name

    @torch.no_grad()
    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        images = check_images(images)
        targets = check_labels(torch.as_tensor(targets), images.shape[0],
                               self.generator.num_classes, "targets")
        device = next(self.generator.parameters()).device
        out = self.generator(images.to(device, torch.float32), targets.to(device))
        return out.to(images.device, images.dtype)

    def __repr__(self) -> str:
        return f"GeneratorBaseline({self.name!r})"


def parse_baseline_spec(
    spec: str,
    *,
    classifier_card: Any = None,
    class_names: list[str] | None = None,
    image_size: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    store: Any = None,
) -> GanmexBaseline | str:
    """Resolve a CLI baseline spec: ``ganmex:GEN`` becomes a :class:`GanmexBaseline`.

    Any other spec (``zero``, ``blur``, ``uniform``, ``mean``, ...) is returned unchanged for the
    ``BASELINES`` registry of :mod:`concilium.explain` to resolve.

    Args:
        spec: ``"ganmex:PATH"`` or a registry baseline name.
        classifier_card: the explained member's card (see :class:`GanmexBaseline`).
        class_names: the explained model's class names.
        image_size: ``(H, W)`` of the images to explain.
        device: where the generator runs.
        store: an ``ExplanationStore`` to cache the baselines in.

    Raises:
        ValueError: on ``ganmex:`` without a path, or a generator unfit for the model.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a baseline spec must be a string; got {type(spec).__name__}")
    if not spec.startswith("ganmex:"):
        return spec
    path = spec[len("ganmex:"):]
    if not path:
        raise ValueError("baseline spec 'ganmex:' needs a generator directory: ganmex:GEN")
    return GanmexBaseline(path, classifier_card=classifier_card, class_names=class_names,
                          image_size=image_size, device=device, store=store)
