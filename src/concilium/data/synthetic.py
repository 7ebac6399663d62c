"""The ground-truth benchmark: procedural "birds" drawn from parts, with exact masks.

Every image shows one bird built from five parts (body, head, beak, wings, tail) at a random
position, scale, rotation and flip on a textured, noisy background. Three parts carry attributes
(beak short/long/hooked, wings plain/striped/spotted, tail fan/forked/pointed); the body colour is
an uninformative attribute. A class is a combination of attribute values of two or three parts
(:data:`CLASS_TABLE`); the parts that define a class are its *evidence*, the others are drawn at
random and carry no information about the class.

Per sample the dataset holds the image, the label, the object mask, one mask per part, the
evidence mask, the watermark mask (empty where none was drawn), the clutter mask and the
multi-hot attributes. Part masks are the *visible* pixels of each part, so they are disjoint and
their union is the object mask.

Drawing is vectorised: every part is a few analytic shapes evaluated with numpy on the pixel
grid, transformed into each bird's own coordinate frame, for a batch of samples at once.
Sample ``i`` draws all its random numbers from its own generator seeded with ``(seed, i)``, so
it does not depend on ``n`` (only the split assignment does).

Example:
    >>> ds = generate(n=16, size=32, seed=0)
    >>> ds.images.shape, ds.parts["evidence"].shape
    (torch.Size([16, 3, 32, 32]), torch.Size([16, 32, 32]))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from concilium.data.dataset import ImageDataset, stratified_splits

PART_NAMES = ("body", "head", "beak", "wings", "tail")
"""The five parts of a bird, each exported as a mask set of the same name."""

PART_VALUES: dict[str, tuple[str, ...]] = {
    "beak": ("short", "long", "hooked"),
    "wings": ("plain", "striped", "spotted"),
    "tail": ("fan", "forked", "pointed"),
}
"""The attribute values of the parts that can define a class."""

BODY_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.18, 0.15),
    "blue": (0.18, 0.32, 0.82),
    "green": (0.20, 0.62, 0.22),
    "purple": (0.55, 0.22, 0.65),
}
"""The uninformative body colours (drawn uniformly, whatever the class)."""

CLASS_TABLE: tuple[dict[str, str], ...] = (
    {"beak": "short", "wings": "plain"},
    {"beak": "long", "tail": "fan"},
    {"beak": "hooked", "wings": "plain", "tail": "fan"},
    {"beak": "short", "wings": "striped"},
    {"beak": "long", "tail": "forked"},
    {"beak": "hooked", "wings": "striped", "tail": "forked"},
    {"beak": "short", "wings": "spotted"},
    {"beak": "long", "tail": "pointed"},
    {"beak": "hooked", "wings": "spotted", "tail": "pointed"},
    {"beak": "hooked", "wings": "plain", "tail": "forked"},
    {"beak": "hooked", "wings": "striped", "tail": "pointed"},
    {"beak": "hooked", "wings": "spotted", "tail": "fan"},
    {"beak": "hooked", "wings": "plain", "tail": "pointed"},
    {"beak": "hooked", "wings": "striped", "tail": "fan"},
    {"beak": "hooked", "wings": "spotted", "tail": "forked"},
)
"""Class definitions: class ``c`` of a ``C``-class benchmark is ``CLASS_TABLE[c]``.

Any two entries share a defined part with different values, so no bird fits two classes.
"""

MAX_CLASSES = len(CLASS_TABLE)

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(
    [f"{part}_{value}" for part, values in PART_VALUES.items() for value in values]
    + [f"body_{colour}" for colour in BODY_COLOURS]
)
"""The multi-hot attribute columns: ``beak_short`` ... ``tail_pointed``, ``body_red`` ..."""

_BEAK_COLOUR = np.array([0.98, 0.66, 0.10], dtype=np.float32)
_EYE_COLOUR = np.array([0.05, 0.05, 0.05], dtype=np.float32)
_WATERMARK_FILL = np.array([1.0, 1.0, 1.0], dtype=np.float32)
_WATERMARK_INK = np.array([1.0, 0.0, 1.0], dtype=np.float32)
# Where each attribute part sits in the bird frame; a distractor part is centred on it.
_PART_CENTRES = {"beak": (1.02, 0.30), "wings": (-0.08, 0.08), "tail": (-0.78, 0.0)}
# The bird point placed at the sampled centre, and a radius around it that holds every bird
# pixel (units), so that no bird leaves the image whatever its rotation.
_BIRD_ORIGIN = (0.15, 0.05)
_BIRD_RADIUS = 1.45
DEFAULT_WATERMARK_RATE = 0.8
DEFAULT_RARE_FRACTION = 0.02
_SQRT12 = float(np.sqrt(12.0))
_NUM_UNIFORMS = 32  # scalar uniforms drawn per sample, in a fixed order


def class_name(definition: dict[str, str]) -> str:
    """The class name of a definition, e.g. ``"beak-short_wings-plain"``."""
    return "_".join(f"{part}-{definition[part]}" for part in PART_VALUES if part in definition)


class SynthConfig(BaseModel):
    """Parameters of the ground-truth benchmark, validated on construction.

    Args:
        n: number of images.
        size: image height and width in pixels, 32 to 224.
        num_classes: number of classes, 2 to 15 (the first entries of :data:`CLASS_TABLE`).
        seed: seed of every random choice; the same config gives byte-identical data.
        clutter: distractor parts (beaks, wings, tails) scattered in the background of every
            image; they are never evidence and are exported as the ``"clutter"`` mask set.
        rotation: largest rotation of a bird, in degrees (uniform in ``[-rotation, rotation]``).
        noise: standard deviation of the zero-mean pixel noise added to every image (uniform,
            independent per pixel and channel: uniform draws are five times cheaper than
            Gaussian ones, and the CNNs and metrics here only see its scale).
        watermark_class: the class that carries a spurious watermark (bottom-right square), or
            ``None`` for no watermark.
        watermark_rate: share of ``watermark_class`` images that get the watermark; 0.8 when
            ``watermark_class`` is given without it, ``None`` without a watermark class.
        rare_class: the class drawn with probability ``rare_fraction``, or ``None`` for
            balanced classes.
        rare_fraction: probability of ``rare_class`` (below ``1 / num_classes``); the other
            classes share the rest equally. 0.02 when ``rare_class`` is given without it,
            ``None`` without a rare class.
        label_noise: probability that a label is replaced by a uniformly drawn other class (the
            image, its masks and its attributes still show the drawn class).
        split_fractions: train, val and test fractions of the stratified seeded split.

    Raises:
        pydantic.ValidationError (a ``ValueError``): on any invalid value, naming the field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1000, ge=1, le=10_000_000)
    size: int = Field(64, ge=32, le=224)
    num_classes: int = Field(8, ge=2, le=MAX_CLASSES)
    seed: int = Field(0, ge=0)
    clutter: int = Field(0, ge=0, le=16)
    rotation: float = Field(30.0, ge=0.0, le=180.0)
    noise: float = Field(0.03, ge=0.0, le=0.3)
    watermark_class: int | None = Field(None, ge=0)
    watermark_rate: float | None = Field(None, ge=0.0, le=1.0)
    rare_class: int | None = Field(None, ge=0)
    rare_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    label_noise: float = Field(0.0, ge=0.0, le=0.5)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    @model_validator(mode="before")
    @classmethod
    def _fill_rates(cls, data: object) -> object:
        """A watermark or rare class given without its rate gets the documented default."""
        if isinstance(data, dict):
            data = dict(data)
            for knob, rate, default in (
                ("watermark_class", "watermark_rate", DEFAULT_WATERMARK_RATE),
                ("rare_class", "rare_fraction", DEFAULT_RARE_FRACTION),
            ):
                if data.get(knob) is not None and data.get(rate) is None:
                    data[rate] = default
        return data

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        for name in ("watermark_class", "rare_class"):
            value = getattr(self, name)
            if value is not None and value >= self.num_classes:
                raise ValueError(
                    f"{name}={value} is not a class of a {self.num_classes}-class benchmark; "
                    f"use 0 to {self.num_classes - 1} or raise num_classes"
                )
        if self.watermark_class is None and self.watermark_rate is not None:
            raise ValueError("watermark_rate needs watermark_class: say which class carries it")
        if self.rare_class is None and self.rare_fraction is not None:
            raise ValueError("rare_fraction needs rare_class: say which class is rare")
        if self.rare_class is not None and self.rare_fraction >= 1.0 / self.num_classes:
            raise ValueError(
                f"rare_fraction={self.rare_fraction} is not rare for {self.num_classes} classes; "
                f"use a value below the balanced share 1/{self.num_classes} = "
                f"{1.0 / self.num_classes:.3f}"
            )
        fr = self.split_fractions
        if min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions must be three non-negative numbers summing to 1; got {fr}"
            )
        return self

    def class_probabilities(self) -> np.ndarray:
        """The probability of drawing each class."""
        c = self.num_classes
        if self.rare_class is None:
            return np.full(c, 1.0 / c)
        p = np.full(c, (1.0 - self.rare_fraction) / (c - 1))
        p[self.rare_class] = self.rare_fraction
        return p


# --------------------------------------------------------------------------------------------
# Analytic shapes on coordinate arrays (X, Y in bird units, y pointing up, bird facing +x)
# --------------------------------------------------------------------------------------------


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) * (1.0 / a)) ** 2 + ((y - cy) * (1.0 / b)) ** 2 <= 1.0


def _triangle(x: np.ndarray, y: np.ndarray, p0, p1, p2) -> np.ndarray:
    """Inside of a triangle (either orientation): on the inner side of all three edges."""
    (ax, ay), (bx, by), (cx, cy) = p0, p1, p2
    if (bx - ax) * (cy - ay) - (by - ay) * (cx - ax) < 0:  # clockwise: make it counter-clockwise
        p1, p2 = p2, p1
    out = None
    for (x0, y0), (x1, y1) in ((p0, p1), (p1, p2), (p2, p0)):
        side = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0.0
        out = side if out is None else out & side
    return out


def _backward_sector(x, y, cx: float, radius: float, slope: float) -> np.ndarray:
    """Points behind ``(cx, 0)`` within ``radius`` and within ``atan(slope)`` of the -x axis."""
    dx = cx - x
    return (dx >= 0.0) & (np.abs(y) <= slope * dx) & (dx * dx + y * y <= radius * radius)


def _beak(value: str, x, y) -> np.ndarray:
    if value == "short":
        return _triangle(x, y, (0.78, 0.12), (1.08, 0.29), (0.78, 0.46))
    if value == "long":
        return _triangle(x, y, (0.78, 0.16), (1.56, 0.30), (0.78, 0.44))
    upper = _triangle(x, y, (0.78, 0.14), (1.22, 0.38), (0.78, 0.46))
    hook = _triangle(x, y, (1.04, 0.46), (1.10, -0.02), (1.28, 0.36))
    return upper | hook


def _wings(x, y) -> np.ndarray:
    return _ellipse(x, y, -0.08, 0.08, 0.46, 0.24)


def _wing_pattern(value: str, x, y) -> np.ndarray:
    """The dark marks of a wing pattern (only meaningful inside the wing)."""
    if value == "plain":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    if value == "striped":
        return np.mod(x + 0.62, 0.34) < 0.15
    spots = None
    for sx, sy in ((-0.34, 0.10), (-0.10, 0.18), (0.16, 0.10), (-0.18, -0.04), (0.06, -0.02)):
        s = (x - sx) ** 2 + (y - sy) ** 2 <= 0.085**2
        spots = s if spots is None else spots | s
    return spots


def _tail(value: str, x, y) -> np.ndarray:
    if value == "fan":
        return _backward_sector(x, y, -0.42, 0.74, 1.73)  # wide: +-60 degrees
    if value == "forked":  # two prongs: a +-45 degree sector less a deep +-20 degree notch
        fan = _backward_sector(x, y, -0.42, 0.82, 1.0)
        notch = _backward_sector(x, y, -0.56, 1.0, 0.36)
        return fan & ~notch
    return _triangle(x, y, (-0.42, -0.13), (-0.42, 0.13), (-1.24, 0.0))  # long and narrow


def _body(x, y) -> np.ndarray:
    return _ellipse(x, y, 0.0, 0.0, 0.62, 0.36)


def _head(x, y) -> np.ndarray:
    return _ellipse(x, y, 0.62, 0.30, 0.27, 0.27)


def _eye(x, y) -> np.ndarray:
    return _ellipse(x, y, 0.70, 0.36, 0.065, 0.065)


# --------------------------------------------------------------------------------------------
# Per-sample parameters
# --------------------------------------------------------------------------------------------


class _Params:
    """The parameters of a batch of samples, one array entry per sample."""

    def __init__(self, b: int, size: int, clutter: int) -> None:
        self.true_class = np.zeros(b, np.int64)
        self.label = np.zeros(b, np.int64)
        self.values = {part: np.zeros(b, np.int64) for part in PART_VALUES}
        self.colour = np.zeros(b, np.int64)
        self.unit = np.zeros(b, np.float32)
        self.angle = np.zeros(b, np.float32)
        self.flip = np.zeros(b, bool)
        self.cx = np.zeros(b, np.float32)
        self.cy = np.zeros(b, np.float32)
        self.watermark = np.zeros(b, bool)
        self.bg = np.zeros((b, 12), np.float32)
        self.noise = np.zeros((b, 3, size, size), np.float32)
        self.clutter = np.zeros((b, clutter, 6), np.float64)


def _drawn_class(config: SynthConfig, u: np.ndarray, cum: np.ndarray) -> int:
    """The class a sample shows, from its first uniform draw ``u[0]``."""
    return min(int(np.searchsorted(cum, u[0], side="right")), config.num_classes - 1)


def _draw(config: SynthConfig, index: int, p: _Params, j: int, cum: np.ndarray) -> None:
    """Draw every random number of sample ``index`` (from its own generator) into row ``j``.

    The draws come in a fixed order whatever the knobs, so turning a knob (watermark, label
    noise, clutter) changes only what that knob controls.
    """
    rng = np.random.default_rng([config.seed, index])
    u = rng.random(_NUM_UNIFORMS)
    c = _drawn_class(config, u, cum)
    p.true_class[j] = c
    p.watermark[j] = c == config.watermark_class and u[1] < (config.watermark_rate or 0.0)
    label = c
    if u[2] < config.label_noise:
        label = (c + 1 + int(u[3] * (config.num_classes - 1))) % config.num_classes
    p.label[j] = label
    definition = CLASS_TABLE[c]
    for k, (part, values) in enumerate(PART_VALUES.items()):
        if part in definition:
            p.values[part][j] = values.index(definition[part])
        else:
            p.values[part][j] = min(int(u[4 + k] * len(values)), len(values) - 1)
    p.colour[j] = min(int(u[7] * len(BODY_COLOURS)), len(BODY_COLOURS) - 1)
    size = config.size
    unit = size * (0.25 + 0.06 * u[8])
    p.unit[j] = unit
    p.angle[j] = np.deg2rad(config.rotation * (2.0 * u[9] - 1.0))
    p.flip[j] = u[10] < 0.5
    margin = _BIRD_RADIUS * unit + 1.0  # keep a free pixel at the border
    p.cx[j] = margin + (size - 2 * margin) * u[11]
    p.cy[j] = margin + (size - 2 * margin) * u[12]
    # background: grey level, tint (3), two texture waves (freq, orientation, phase, amplitude)
    # and a gradient (direction, amplitude)
    p.bg[j] = u[13:25]
    p.noise[j] = rng.random((3, size, size), dtype=np.float32)
    if config.clutter:
        p.clutter[j] = rng.random((config.clutter, 6))


# --------------------------------------------------------------------------------------------
# Rendering a batch
# --------------------------------------------------------------------------------------------


def _background(p: _Params, size: int) -> np.ndarray:
    """Textured background ``(B, 3, S, S)``: tinted grey, two oriented waves and a gradient."""
    bg = p.bg
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = grid[None, :, None], grid[None, None, :]
    grey = (0.35 + 0.3 * bg[:, 0])[:, None, None, None]
    tint = 0.16 * (bg[:, 1:4, None, None] - 0.5)
    texture = np.zeros((bg.shape[0], size, size), np.float32)
    for w in range(2):
        freq = (2.0 + 5.0 * bg[:, 4 + 4 * w])[:, None, None]
        theta = (np.pi * bg[:, 5 + 4 * w])[:, None, None]
        phase = (2 * np.pi * bg[:, 6 + 4 * w])[:, None, None]
        amp = (0.02 + 0.05 * bg[:, 7 + 4 * w])[:, None, None]
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        texture += amp * np.sin(2 * np.pi * freq * proj + phase)
    gdir = (2 * np.pi * bg[:, 8])[:, None, None]
    gamp = (0.15 * bg[:, 9])[:, None, None]
    texture += gamp * ((xx - 0.5) * np.cos(gdir) + (yy - 0.5) * np.sin(gdir))
    return (grey + tint) + texture[:, None]


def _frame(p: _Params, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in each bird's own frame: ``(B, S, S)`` arrays ``X`` and ``Y``."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - p.cx[:, None, None]
    dy = p.cy[:, None, None] - grid[None, :, None]  # y up
    cos = (np.cos(p.angle) / p.unit)[:, None, None]
    sin = (np.sin(p.angle) / p.unit)[:, None, None]
    x = cos * dx + sin * dy
    y = cos * dy - sin * dx
    x = np.where(p.flip[:, None, None], -x, x)
    return x + _BIRD_ORIGIN[0], y + _BIRD_ORIGIN[1]


def _select(value_index: np.ndarray, options: list[np.ndarray]) -> np.ndarray:
    out = options[0].copy()
    for k in range(1, len(options)):
        sel = (value_index == k)[:, None, None]
        out = np.where(sel, options[k], out)
    return out


def _paint(img: np.ndarray, where: np.ndarray, colour: np.ndarray) -> None:
    """Set the pixels ``where`` (B, S, S) of ``img`` (B, 3, S, S) to ``colour`` (B, 3) or (3,)."""
    colour = np.broadcast_to(np.asarray(colour, np.float32), (img.shape[0], 3))
    for ch in range(3):
        np.copyto(img[:, ch], colour[:, ch, None, None], where=where)


def _watermark_mask(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The watermark square (bottom-right corner) and its ink (a cross), ``(S, S)`` bool."""
    side = max(4, round(0.16 * size))
    margin = max(1, round(0.03 * size))
    square = np.zeros((size, size), bool)
    lo, hi = size - margin - side, size - margin
    square[lo:hi, lo:hi] = True
    r = np.arange(size)[:, None] - lo
    c = np.arange(size)[None, :] - lo
    thick = max(1.0, side / 6)
    ink = square & ((np.abs(r - c) < thick) | (np.abs(r + c - (side - 1)) < thick))
    return square, ink


def _render_clutter(p: _Params, img: np.ndarray, clutter: np.ndarray, size: int) -> None:
    """Draw distractor parts (in place) and mark their pixels in ``clutter``."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    colours = np.array(list(BODY_COLOURS.values()), np.float32)
    kinds = [(part, value) for part, values in PART_VALUES.items() for value in values]
    for j in range(p.clutter.shape[0]):
        for u in p.clutter[j]:
            part, value = kinds[min(int(u[0] * len(kinds)), len(kinds) - 1)]
            colour = colours[min(int(u[1] * len(colours)), len(colours) - 1)]
            cx, cy = size * u[2], size * u[3]
            angle = 2 * np.pi * u[4]
            unit = float(p.unit[j]) * (0.8 + 0.4 * u[5])
            dx = grid[None, :] - cx
            dy = cy - grid[:, None]
            ox, oy = _PART_CENTRES[part]
            x = (np.cos(angle) * dx + np.sin(angle) * dy) / unit + ox
            y = (np.cos(angle) * dy - np.sin(angle) * dx) / unit + oy
            if part == "beak":
                shape = _beak(value, x, y)
                _paint(img[j : j + 1], shape[None], _BEAK_COLOUR)
            elif part == "tail":
                shape = _tail(value, x, y)
                _paint(img[j : j + 1], shape[None], 0.6 * colour)
            else:
                shape = _wings(x, y)
                _paint(img[j : j + 1], shape[None], 0.55 * colour + 0.45)
                _paint(img[j : j + 1], (shape & _wing_pattern(value, x, y))[None], 0.15 * colour)
            clutter[j] |= shape


def _render(config: SynthConfig, p: _Params) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images ``(B, 3, S, S)`` uint8 and the visible-pixel masks of every part."""
    size = config.size
    img = _background(p, size).astype(np.float32)
    b = img.shape[0]
    clutter = np.zeros((b, size, size), bool)
    if config.clutter:
        _render_clutter(p, img, clutter, size)
    x, y = _frame(p, size)
    colour = np.array(list(BODY_COLOURS.values()), np.float32)[p.colour]
    masks: dict[str, np.ndarray] = {}
    # draw back to front; each part's mask is what stays visible
    tail = _select(p.values["tail"], [_tail(v, x, y) for v in PART_VALUES["tail"]])
    body = _body(x, y)
    wings = _wings(x, y)
    pattern = _select(p.values["wings"], [_wing_pattern(v, x, y) for v in PART_VALUES["wings"]])
    head = _head(x, y)
    beak = _select(p.values["beak"], [_beak(v, x, y) for v in PART_VALUES["beak"]])
    _paint(img, tail, 0.6 * colour)
    _paint(img, body, colour)
    _paint(img, wings, 0.55 * colour + 0.45)
    _paint(img, wings & pattern, 0.15 * colour)
    _paint(img, head, colour)
    _paint(img, _eye(x, y) & head, _EYE_COLOUR)
    _paint(img, beak, _BEAK_COLOUR)
    masks["beak"] = beak
    masks["head"] = head & ~beak
    masks["wings"] = wings & ~head & ~beak
    masks["body"] = body & ~wings & ~head & ~beak
    masks["tail"] = tail & ~body & ~wings & ~head & ~beak
    obj = beak | head | wings | body | tail
    square, ink = _watermark_mask(size)
    wm = p.watermark[:, None, None] & square[None]
    _paint(img, wm, _WATERMARK_FILL)
    _paint(img, wm & ink[None], _WATERMARK_INK)
    for name in PART_NAMES:
        masks[name] &= ~wm
    masks["watermark"] = wm
    masks["clutter"] = clutter & ~obj & ~wm
    img += (config.noise * _SQRT12) * (p.noise - np.float32(0.5))  # uniform, std = noise
    np.clip(img, 0.0, 1.0, out=img)
    return np.rint(img * 255.0).astype(np.uint8), masks


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def generate(
    config: SynthConfig | None = None,
    *,
    n: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageDataset:
    """Generate the ground-truth benchmark.

    Args:
        config: all generator parameters; ``None`` uses the :class:`SynthConfig` defaults.
        n: overrides ``config.n`` when given.
        size: overrides ``config.size`` when given.
        seed: overrides ``config.seed`` when given.
        progress: called as ``progress(done, total)`` after every batch of samples.

    Returns:
        An :class:`ImageDataset` with images quantised to 8 bits (``k / 255``), the object masks,
        the mask sets ``body, head, beak, wings, tail, evidence, watermark, clutter`` in
        ``parts``, the multi-hot :data:`ATTRIBUTE_NAMES` attributes, ``class_part_values`` and a
        ``card`` holding the generator parameters (plus the ids whose label was flipped by
        label noise under ``"noisy_ids"``).

    Raises:
        TypeError: if ``config`` is not a :class:`SynthConfig`.
        pydantic.ValidationError (a ``ValueError``): if an override is invalid.
    """
    if config is None:
        config = SynthConfig()
    if not isinstance(config, SynthConfig):
        raise TypeError(
            f"config must be a SynthConfig; got {type(config).__name__} "
            "(build one with SynthConfig(n=..., size=...))"
        )
    overrides = {k: v for k, v in (("n", n), ("size", size), ("seed", seed)) if v is not None}
    if overrides:
        config = SynthConfig(**{**config.model_dump(exclude_unset=True), **overrides})
    total, s = config.n, config.size
    batch = max(1, 2**18 // (s * s))
    images = torch.empty((total, 3, s, s), dtype=torch.float32)
    set_names = (*PART_NAMES, "evidence", "watermark", "clutter")
    sets = {name: torch.empty((total, s, s), dtype=torch.bool) for name in set_names}
    labels = np.empty(total, np.int64)
    true_class = np.empty(total, np.int64)
    attributes = np.zeros((total, len(ATTRIBUTE_NAMES)), np.float32)
    cum = np.cumsum(config.class_probabilities())
    defined = {
        part: np.array([part in CLASS_TABLE[c] for c in range(config.num_classes)])
        for part in PART_VALUES
    }
    lut = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)
    for start in range(0, total, batch):
        stop = min(start + batch, total)
        p = _Params(stop - start, s, config.clutter)
        for j, index in enumerate(range(start, stop)):
            _draw(config, index, p, j, cum)
        pixels, masks = _render(config, p)
        images[start:stop] = torch.from_numpy(lut[pixels])
        evidence = np.zeros_like(masks["beak"])
        for part in PART_VALUES:
            evidence |= defined[part][p.true_class][:, None, None] & masks[part]
        masks["evidence"] = evidence
        for name in set_names:
            sets[name][start:stop] = torch.from_numpy(masks[name])
        labels[start:stop] = p.label
        true_class[start:stop] = p.true_class
        rows = np.arange(stop - start)
        offset = 0
        for part, values in PART_VALUES.items():
            attributes[start + rows, offset + p.values[part]] = 1.0
            offset += len(values)
        attributes[start + rows, offset + p.colour] = 1.0
        if progress is not None:
            progress(stop, total)
    obj = sets["body"] | sets["head"] | sets["beak"] | sets["wings"] | sets["tail"]
    width = max(6, len(str(total - 1)))
    ids = [f"s{i:0{width}d}" for i in range(total)]
    definitions = [dict(CLASS_TABLE[c]) for c in range(config.num_classes)]
    card = {
        "source": "concilium.data.synthetic",
        "config": config.model_dump(mode="json"),
        "noisy_ids": [ids[i] for i in np.flatnonzero(labels != true_class).tolist()],
    }
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels),
        masks=obj,
        ids=ids,
        splits=stratified_splits(labels, fractions=config.split_fractions, seed=config.seed),
        class_names=[class_name(d) for d in definitions],
        parts=sets,
        attributes=torch.from_numpy(attributes),
        attribute_names=list(ATTRIBUTE_NAMES),
        class_part_values=definitions,
        card=card,
    )


# --------------------------------------------------------------------------------------------
# Exact one-vs-one ground truth: the minimal counterfactual x*
# --------------------------------------------------------------------------------------------


def render_counterfactuals(
    config: SynthConfig, indices: Tensor | np.ndarray | list[int], targets: Tensor | list[int]
) -> Tensor:
    """The minimal counterfactuals ``x*(i, t)`` of benchmark samples, rendered exactly.

    Sample ``indices[j]`` of the benchmark ``config`` is re-drawn (same bird, pose, scale, body
    colour, background, clutter, watermark and pixel noise) with the defining part values of class
    ``targets[j]`` in place of its own; the parts ``t`` does not define keep the sample's values.
    So ``x*`` is of class ``t`` and of no other (any two classes differ in a defined part), and it
    differs from ``x`` only where a part changes shape or pattern. With ``t`` the sample's own class
    the result is the sample itself, bit for bit.

    Args:
        config: the benchmark's parameters (``ImageDataset.card["config"]`` of generated data).
        indices: ``(N,)`` sample indices ``i`` (sample ids are ``s{i:06d}``).
        targets: ``(N,)`` target classes ``t``.

    Returns:
        ``(N, 3, S, S)`` float32 images quantised to 8 bits, like :func:`generate`'s.

    Raises:
        ValueError: if ``indices`` and ``targets`` differ in length, an index is negative or a
            target is not a class of the benchmark.
    """
    idx = np.asarray(torch.as_tensor(indices).tolist(), dtype=np.int64).reshape(-1)
    tgt = np.asarray(torch.as_tensor(targets).tolist(), dtype=np.int64).reshape(-1)
    if idx.shape != tgt.shape:
        raise ValueError(
            f"indices and targets must have the same length; got {idx.shape[0]} and {tgt.shape[0]}"
        )
    if idx.size and idx.min() < 0:
        raise ValueError(f"sample indices must be >= 0; got {int(idx.min())}")
    if tgt.size and (tgt.min() < 0 or tgt.max() >= config.num_classes):
        raise ValueError(
            f"targets must be classes 0 to {config.num_classes - 1} of this benchmark; got "
            f"[{int(tgt.min())}, {int(tgt.max())}]"
        )
    s = config.size
    out = torch.empty((idx.shape[0], 3, s, s), dtype=torch.float32)
    cum = np.cumsum(config.class_probabilities())
    lut = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)
    batch = max(1, 2**18 // (s * s))
    for start in range(0, idx.shape[0], batch):
        stop = min(start + batch, idx.shape[0])
        p = _Params(stop - start, s, config.clutter)
        for j in range(stop - start):
            _draw(config, int(idx[start + j]), p, j, cum)
            for part, values in PART_VALUES.items():
                value = CLASS_TABLE[int(tgt[start + j])].get(part)
                if value is not None:
                    p.values[part][j] = values.index(value)
        pixels, _ = _render(config, p)
        out[start:stop] = torch.from_numpy(lut[pixels])
    return out


def _benchmark_indices(dataset: ImageDataset) -> tuple[SynthConfig, np.ndarray]:
    """The generating config and the sample index of every row of a benchmark dataset."""
    card = dataset.card or {}
    if card.get("source") != "concilium.data.synthetic" or "config" not in card:
        raise ValueError(
            "counterfactuals need the synthetic benchmark (a dataset whose card records the "
            "generator config, from concilium.data.synthetic.generate or a folder written from "
            f"it); this dataset's card has source {card.get('source')!r}"
        )
    config = SynthConfig(**card["config"])
    try:
        idx = np.array([int(i.lstrip("s")) for i in dataset.ids], dtype=np.int64)
    except ValueError:
        raise ValueError(
            "counterfactuals need the benchmark's sample ids (s000123); this dataset's ids were "
            f"renamed (e.g. {dataset.ids[0]!r})"
        ) from None
    return config, idx


def counterfactuals(dataset: ImageDataset, targets: Tensor, *, check: bool = True) -> Tensor:
    """``x*`` of every image of a benchmark dataset (or a subset) for per-image target classes.

    Args:
        dataset: data made by :func:`generate` (also after ``subset`` or a folder round trip).
        targets: ``(N,)`` target classes, one per image.
        check: also re-render each image with its own class and raise unless it equals the
            stored image exactly (catches data that is not what the card says).

    Returns:
        ``(N, 3, S, S)`` counterfactual images (see :func:`render_counterfactuals`).

    Raises:
        ValueError: if the dataset is not the benchmark, ``targets`` is not ``(N,)``, or (with
            ``check``) the stored images are not the ones the card's config renders.
    """
    config, idx = _benchmark_indices(dataset)
    targets = torch.as_tensor(targets)
    if targets.shape != (len(dataset),):
        raise ValueError(
            f"targets must be ({len(dataset)},) class indices; got {tuple(targets.shape)}"
        )
    if check:
        own = render_counterfactuals(config, idx, _true_classes(config, idx))
        if not torch.equal(own, dataset.images):
            bad = int((own != dataset.images).flatten(1).any(1).sum())
            raise ValueError(
                f"{bad} of {len(dataset)} images differ from what the card's benchmark config "
                "renders for their ids; the images were edited or the card belongs to other data"
            )
    return render_counterfactuals(config, idx, targets)


def _true_classes(config: SynthConfig, indices: np.ndarray) -> np.ndarray:
    """The drawn (shown) class of each sample, whatever its possibly noisy label."""
    cum = np.cumsum(config.class_probabilities())
    out = np.empty(len(indices), np.int64)
    for j, i in enumerate(indices.tolist()):
        out[j] = _drawn_class(config, np.random.default_rng([config.seed, i]).random(1), cum)
    return out


def changed_masks(dataset: ImageDataset, targets: Tensor) -> Tensor:
    """One-vs-one ground truth: the pixels where ``x`` and its counterfactual ``x*(t)`` differ.

    Unlike :meth:`ImageDataset.difference_masks` (the part masks *of x*), this holds exactly the
    pixels a minimal change to class ``t`` touches, including those outside ``x``'s own part
    (a longer beak, a wider tail) and excluding unchanged pixels inside it (wing background).
    A class against itself gives an empty mask.

    Returns:
        ``(N, H, W)`` bool masks.
    """
    return (counterfactuals(dataset, targets) != dataset.images).any(dim=1)
