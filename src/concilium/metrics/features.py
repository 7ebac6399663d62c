"""Features for the perturbation metrics: what one step of a region metric removes.

A feature spec string names them, one definition for every metric that takes ``features=``:

==================================================  =========================================
spec                                                features
==================================================  =========================================
``"pixels"``                                        every pixel (all channels)
``"patch:8"`` (or ``"patch:size=8"``)               ``8 x 8`` squares on Quantus's grid
``"slic"``, ``"slic:n_segments=50,compactness=5"``  SLIC superpixels of each image
``"felzenszwalb"``, ``"felzenszwalb:scale=100"``    Felzenszwalb's segments of each image
==================================================  =========================================

``slic`` takes ``n_segments`` (100), ``compactness`` (10.0), ``sigma`` (0.0) and ``max_num_iter``
(10): scikit-image's defaults, which Quantus's ``IROF`` uses. Each image is segmented on the CPU
as Quantus's ``get_superpixel_segments`` does it (channels moved last, ``float64``, the last
axis the channel axis, ``start_label=0``, connectivity enforced; an RGB image is converted to Lab
by scikit-image), so the same image gets the same segments as in Quantus. ``felzenszwalb``
(Quantus's other ``segmentation_method``) takes ``scale`` (1.0), ``sigma`` (0.8) and
``min_size`` (20), scikit-image's defaults, on the same channels-last image.

:func:`feature_labels` gives each pixel its feature, ``(N, H, W)`` long with values
``0 .. F_i - 1`` (consecutive, every value used), and ``F_i`` per image. Pixels and patches
(:func:`patch_grid`) have the same ``F`` for every image of a size (:attr:`Features.fixed`); the
number of superpixels depends on the image, and :meth:`Features.count_bound` is an upper bound
of it computed from the size alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.segmentation import felzenszwalb, slic
from skimage.util import regular_grid
from torch import Tensor

from concilium._registry import Registry

Size = tuple[int, int]


def check_patch_size(patch_size: int, size: Size | None = None) -> int:
    """``patch_size``, checked: a positive int, at most the shorter side of ``size`` if given.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int; got {patch_size!r}")
    if size is not None and patch_size > min(size):
        raise ValueError(
            f"patch_size {patch_size} is larger than the image {tuple(size)}; pass a smaller one"
        )
    return patch_size


def patch_grid(h: int, w: int, patch_size: int, device: torch.device | None = None) -> Tensor:
    """``(H, W)`` long: the patch of every pixel on Quantus's grid (the image padded by
    ``floor`` before and ``ceil`` after to a multiple of ``patch_size``; patches row by row)."""
    check_patch_size(patch_size, (h, w))
    pad_h = (-h) % patch_size // 2
    pad_w = (-w) % patch_size // 2
    cols = math.ceil(w / patch_size)
    rows = (torch.arange(h, device=device) + pad_h) // patch_size
    colidx = (torch.arange(w, device=device) + pad_w) // patch_size
    return rows[:, None] * cols + colidx[None, :]


def n_patches(size: Size, patch_size: int) -> int:
    """The number of patches of :func:`patch_grid` on a ``size`` image."""
    return math.ceil(size[0] / patch_size) * math.ceil(size[1] / patch_size)


@dataclass(frozen=True)
class FeatureKind:
    """One kind of feature (an entry of :data:`FEATURE_KINDS`).

    Attributes:
        name: the spec's name (``"slic"``).
        params: parameter name -> default (their types are the defaults' types).
        label: ``label(images (N, C, H, W), params) -> (N, H, W)`` integer labels (any values;
            :func:`feature_labels` renumbers them ``0 .. F_i - 1``).
        count_bound: ``count_bound(size, params) -> int``: at least the number of features of
            any image of ``size`` (exact when ``fixed``).
        fixed: every image of a size has the same number of features.
        description: one line for listings.
        positional: the parameter a bare value sets (``"patch:8"`` sets ``size``).
    """

    name: str
    params: dict[str, Any]
    label: Callable[[Tensor, Mapping[str, Any]], Tensor]
    count_bound: Callable[[Size, Mapping[str, Any]], int]
    fixed: bool
    description: str
    positional: str | None = None


FEATURE_KINDS: Registry[FeatureKind] = Registry("feature kind")


def _pixel_labels(images: Tensor, params: Mapping[str, Any]) -> Tensor:
    n, _, h, w = images.shape
    return torch.arange(h * w, device=images.device).view(h, w).expand(n, h, w)


def _patch_labels(images: Tensor, params: Mapping[str, Any]) -> Tensor:
    n, _, h, w = images.shape
    return patch_grid(h, w, params["size"], images.device).expand(n, h, w)


def _slic_labels(images: Tensor, params: Mapping[str, Any]) -> Tensor:
    arr = images.detach().to("cpu", torch.float64).numpy()
    segs = [
        slic(
            np.moveaxis(img, 0, -1), n_segments=params["n_segments"],
            compactness=params["compactness"], sigma=params["sigma"],
            max_num_iter=params["max_num_iter"], start_label=0,
        )  # fmt: skip
        for img in arr
    ]
    return torch.from_numpy(np.stack(segs)).long()


def _felzenszwalb_labels(images: Tensor, params: Mapping[str, Any]) -> Tensor:
    arr = images.detach().to("cpu", torch.float64).numpy()
    segs = [
        felzenszwalb(
            np.moveaxis(img, 0, -1), scale=params["scale"], sigma=params["sigma"],
            min_size=params["min_size"],
        )  # fmt: skip
        for img in arr
    ]
    return torch.from_numpy(np.stack(segs)).long()


def _felzenszwalb_bound(size: Size, params: Mapping[str, Any]) -> int:
    """scikit-image merges every component smaller than ``min_size`` into a neighbour."""
    pixels = size[0] * size[1]
    return max(1, pixels // max(1, params["min_size"]))


def _slic_bound(size: Size, params: Mapping[str, Any]) -> int:
    """scikit-image seeds SLIC on a regular grid of about ``n_segments`` points and merges every
    connected piece smaller than half the grid cell (``min_size_factor=0.5``) into a neighbour,
    so all segments but the first have at least that many pixels."""
    pixels = size[0] * size[1]
    grid = regular_grid((1, *size), params["n_segments"])
    seeds = math.prod(len(range(*s.indices(d))) for s, d in zip(grid, (1, *size), strict=True))
    min_size = int(0.5 * pixels / seeds)
    return pixels if min_size <= 1 else min(pixels, 1 + (pixels - 1) // min_size)


FEATURE_KINDS.add(
    "pixels",
    FeatureKind(
        name="pixels", params={}, label=_pixel_labels,
        count_bound=lambda size, params: size[0] * size[1], fixed=True,
        description="every pixel (all its channels) is a feature",
    ),  # fmt: skip
)
FEATURE_KINDS.add(
    "patch",
    FeatureKind(
        name="patch", params={"size": 8}, label=_patch_labels,
        count_bound=lambda size, params: n_patches(size, params["size"]), fixed=True,
        description="size x size squares on Quantus's grid (padded half before, half after)",
        positional="size",
    ),  # fmt: skip
)
FEATURE_KINDS.add(
    "slic",
    FeatureKind(
        name="slic",
        params={"n_segments": 100, "compactness": 10.0, "sigma": 0.0, "max_num_iter": 10},
        label=_slic_labels, count_bound=_slic_bound, fixed=False,
        description="SLIC superpixels of each image (scikit-image, as Quantus's IROF)",
    ),  # fmt: skip
)

FEATURE_KINDS.add(
    "felzenszwalb",
    FeatureKind(
        name="felzenszwalb", params={"scale": 1.0, "sigma": 0.8, "min_size": 20},
        label=_felzenszwalb_labels, count_bound=_felzenszwalb_bound, fixed=False,
        description="Felzenszwalb's graph segments of each image (scikit-image, as Quantus)",
    ),  # fmt: skip
)

_FORMS = (
    "'pixels', 'patch:<size>' (e.g. 'patch:8'), 'slic[:n_segments=..,compactness=..,sigma=..,"
    "max_num_iter=..]' or 'felzenszwalb[:scale=..,sigma=..,min_size=..]'"
)


@dataclass(frozen=True)
class Features:
    """A parsed feature spec (:func:`parse_features`).

    Attributes:
        kind: the :class:`FeatureKind`'s name.
        params: its parameters, defaults filled in, as sorted ``(name, value)`` pairs.
    """

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string (every parameter spelt out)."""
        if not self.params:
            return self.kind
        return f"{self.kind}:" + ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def fixed(self) -> bool:
        """Whether every image of a size has the same number of features."""
        return FEATURE_KINDS.get(self.kind).fixed

    def count_bound(self, size: Size) -> int:
        """An upper bound of the number of features of an image of ``size`` (exact when
        :attr:`fixed`).

        Raises:
            ValueError: for patches larger than the image.
        """
        params = dict(self.params)
        if self.kind == "patch":
            check_patch_size(params["size"], size)
        return FEATURE_KINDS.get(self.kind).count_bound(size, params)


def _convert(kind: FeatureKind, key: str, value: str, spec: str) -> Any:
    default = kind.params[key]
    try:
        out = type(default)(value.strip())
    except ValueError:
        raise ValueError(
            f"feature parameter {key} in {spec!r} must be a {type(default).__name__}; got {value!r}"
        ) from None
    low_ok = out >= 0 if key == "sigma" else (out > 0 if isinstance(out, float) else out >= 1)
    if not low_ok:
        bound = ">= 0" if key == "sigma" else "positive"
        raise ValueError(f"feature parameter {key} in {spec!r} must be {bound}; got {value!r}")
    return out


def parse_features(spec: str | Features) -> Features:
    """Parse a feature spec string (the forms of the module docstring).

    Raises:
        TypeError: for a spec that is not a string.
        ValueError: for an unknown kind or parameter or a bad value; the message lists the valid
            forms.

    Example:
        >>> parse_features("patch:4").spec
        'patch:size=4'
        >>> parse_features("slic:n_segments=50").spec
        'slic:compactness=10.0,max_num_iter=10,n_segments=50,sigma=0.0'
    """
    if isinstance(spec, Features):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"features must be a spec string, {_FORMS}; got {type(spec).__name__}")
    name, _, rest = spec.strip().partition(":")
    if name not in FEATURE_KINDS:
        raise ValueError(f"unknown features {spec!r}; valid: {_FORMS}")
    kind = FEATURE_KINDS.get(name)
    params = dict(kind.params)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq and kind.positional is not None and len(rest.split(",")) == 1:
            key, value = kind.positional, item
        elif not eq or key not in kind.params:
            valid = ", ".join(f"{k}={v!r}" for k, v in kind.params.items()) or "no parameters"
            raise ValueError(
                f"bad feature parameter {item!r} in {spec!r}; {name!r} takes {valid}; "
                f"valid forms: {_FORMS}"
            )
        params[key] = _convert(kind, key, value, spec)
    return Features(kind=name, params=tuple(sorted(params.items())))


def feature_labels(features: str | Features, images: Tensor) -> tuple[Tensor, Tensor]:
    """The feature of every pixel of each image.

    Args:
        features: a spec string or :class:`Features`.
        images: ``(N, C, H, W)``.

    Returns:
        ``(labels (N, H, W) long, counts (N,) long)`` on the images' device: ``labels[i]``
        takes the values ``0 .. counts[i] - 1``, each on at least one pixel (superpixels keep
        scikit-image's numbering, renumbered without gaps; patches and pixels row by row).
        Deterministic: the same images give the same labels.

    Raises:
        ValueError: for a bad spec, or patches larger than the image.
    """
    parsed = parse_features(features)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got {tuple(images.shape)}")
    n, _, h, w = images.shape
    kind = FEATURE_KINDS.get(parsed.kind)
    params = dict(parsed.params)
    if kind.fixed:
        count = parsed.count_bound((h, w))
        labels = kind.label(images, params)
        return labels, torch.full((n,), count, dtype=torch.long, device=images.device)
    raw = kind.label(images, params).cpu().flatten(1)
    out, counts = torch.empty_like(raw), torch.empty(n, dtype=torch.long)
    for i, row in enumerate(raw):  # consecutive 0 .. F-1, in the order of the raw labels
        values, out[i] = torch.unique(row, return_inverse=True)
        counts[i] = len(values)
    return out.view(n, h, w).to(images.device), counts.to(images.device)
