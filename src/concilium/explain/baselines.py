"""Reference inputs for path and perturbation methods (what "absent" means).

Every baseline is a :class:`BaselineProvider`: ``provider(images, targets) -> (N, C, H, W)``, one
baseline per image and target, so a learned counterfactual baseline (GANMEX,
:mod:`concilium.ganmex`) plugs in exactly like the built-in ones.

Built-in baselines (registry :data:`BASELINES`, spec strings ``"name"`` or
``"name:key=value,key=value"``):

* ``zero``: all zeros.
* ``black``: the per-image minimum value (black in the image's own range).
* ``blur``: Gaussian blur of the image; ``sigma`` in pixels (default 4.0).
* ``uniform``: uniform noise in ``[low, high]`` (default ``[0, 1]``), seeded by ``seed``
  (default 0) so the same batch shape always gets the same noise; or drawn from a
  ``generator`` passed in (``parse_baseline(spec, generator=g)``: a fresh draw per call, as the
  perturbation metrics need). It is the one *stochastic* baseline (``stochastic = True``).
* ``image_mean``: each image's own mean over all its values (Quantus's ``"mean"``).
* ``mean``: a fixed mean image or per-channel mean (pass the tensor: ``MeanBaseline(mean)``).
* ``tensor``: a user tensor broadcastable to ``(N, C, H, W)`` (``TensorBaseline(t)``, or pass the
  tensor itself as ``baseline=``).

Example:
    >>> b = parse_baseline("blur:sigma=2")
    >>> b(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from concilium._registry import Registry


@runtime_checkable
class BaselineProvider(Protocol):
    """Anything that gives one baseline per image and target.

    ``__call__(images (N, C, H, W), targets (N,)) -> baselines (N, C, H, W)`` on the images'
    device and dtype. ``targets`` are the explained classes, except for a contrast target
    ("why ``c`` and not ``t``", :mod:`concilium.explain.targets`), where they are the contrast
    classes ``t``: a counterfactual baseline such as GANMEX's ``G(x, t)`` is an image of class
    ``t`` (see :attr:`~concilium.explain.targets.Target.baseline_classes`).
    """

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor: ...


#: name -> factory ``(**params) -> BaselineProvider``.
BASELINES: Registry[Callable[..., BaselineProvider]] = Registry("baseline")


def _fill_each(images: Tensor, values: Tensor) -> Tensor:
    """``(N, C, H, W)``: image ``i`` filled with ``values[i]`` everywhere."""
    return values.view(-1, 1, 1, 1).expand_as(images).clone()


class ZeroBaseline:
    """All-zero baselines."""

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        return torch.zeros_like(images)

    def __repr__(self) -> str:
        return "zero"


class BlackBaseline:
    """Each image's own minimum value everywhere (black in the image's range)."""

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        return _fill_each(images, images.flatten(1).amin(1))

    def __repr__(self) -> str:
        return "black"


class BlurBaseline:
    """A Gaussian blur of each image (separable, reflect padding).

    Args:
        sigma: standard deviation in pixels (> 0).
    """

    def __init__(self, *, sigma: float = 4.0) -> None:
        if not sigma > 0:
            raise ValueError(f"blur sigma must be > 0 pixels; got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        c, h, w = images.shape[1:]
        radius = min(int(math.ceil(3 * self.sigma)), max(h, w) - 1)
        x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        k = torch.exp(-0.5 * (x / self.sigma) ** 2)
        k = k / k.sum()
        pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
        out = F.pad(images, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else images
        # a side shorter than the kernel truncates it: renormalise, so a constant stays constant
        kw = k[radius - pad_w : radius + pad_w + 1]
        kw = kw / kw.sum()
        out = F.conv2d(out, kw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else out
        kh = k[radius - pad_h : radius + pad_h + 1]
        kh = kh / kh.sum()
        out = F.conv2d(out, kh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return out

    def __repr__(self) -> str:
        return f"blur:sigma={self.sigma:g}"


class ImageMeanBaseline:
    """Each image's own mean over all its values (channels and pixels), everywhere."""

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        return _fill_each(images, images.flatten(1).mean(1))

    def __repr__(self) -> str:
        return "image_mean"


class UniformBaseline:
    """Uniform noise in ``[low, high]``, from ``seed`` or from a ``generator``.

    Without ``generator`` every call draws (in float64, on the CPU) from a fresh generator seeded
    with ``seed``, so the same batch shape always gets the same noise: a fixed reference for the
    path methods. With ``generator`` every call draws anew from it (in float32 on the
    generator's device): the perturbation metrics' random baseline, reproducible from their
    seeded generator. The global RNG is never used.

    Args:
        low: lower bound (default 0).
        high: upper bound (default 1).
        seed: noise seed (default 0); the same batch shape always gets the same noise.
        generator: draw from this generator instead (``seed`` is then unused).
    """

    stochastic = True

    def __init__(
        self,
        *,
        low: float = 0.0,
        high: float = 1.0,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not high > low:
            raise ValueError(f"uniform baseline needs low < high; got low={low}, high={high}")
        self.low, self.high, self.seed = float(low), float(high), int(seed)
        self.generator = generator

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        if self.generator is not None:
            noise = torch.rand(images.shape, generator=self.generator, device=self.generator.device)
        else:
            g = torch.Generator().manual_seed(self.seed)
            noise = torch.rand(images.shape, generator=g, dtype=torch.float64)
        noise = self.low + (self.high - self.low) * noise
        return noise.to(device=images.device, dtype=images.dtype)

    def __repr__(self) -> str:
        return f"uniform:low={self.low:g},high={self.high:g},seed={self.seed}"


class TensorBaseline:
    """A fixed tensor broadcast to ``(N, C, H, W)``: ``(C, H, W)``, ``(C, 1, 1)``, ``(N, C, H, W)``
    or a scalar tensor.

    Args:
        tensor: the baseline values.
        name: shown in ``repr`` (``"tensor"`` or ``"mean"``).
    """

    def __init__(self, tensor: Tensor, *, name: str = "tensor") -> None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise TypeError(f"a {name} baseline must be a floating-point tensor; got {tensor!r:.60}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"the {name} baseline contains NaN or infinite values")
        self.tensor = tensor.detach()
        self.name = name

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        t = self.tensor.to(device=images.device, dtype=images.dtype)
        if t.ndim == 1 and t.shape[0] == images.shape[1]:
            t = t.view(1, -1, 1, 1)
        try:
            return torch.broadcast_to(t, images.shape).clone()
        except RuntimeError:
            raise ValueError(
                f"the {self.name} baseline of shape {tuple(self.tensor.shape)} does not broadcast "
                f"to the images {tuple(images.shape)}; give (C,), (C, H, W) or (N, C, H, W)"
            ) from None

    def __repr__(self) -> str:
        return self.name


def MeanBaseline(mean: Tensor) -> TensorBaseline:  # noqa: N802 (reads like a class)
    """The training-set mean image ``(C, H, W)`` or per-channel mean ``(C,)``."""
    return TensorBaseline(mean, name="mean")


BASELINES.add("zero", ZeroBaseline)
BASELINES.add("black", BlackBaseline)
BASELINES.add("blur", BlurBaseline)
BASELINES.add("uniform", UniformBaseline)
BASELINES.add("image_mean", ImageMeanBaseline)
BASELINES.add("mean", MeanBaseline)
BASELINES.add("tensor", TensorBaseline)

_SPEC_PARAMS = {"blur": {"sigma": float}, "uniform": {"low": float, "high": float, "seed": int}}


def is_stochastic(baseline: object) -> bool:
    """Whether a baseline (spec string, factory or provider) draws random numbers: its
    ``stochastic`` class attribute (``uniform``)."""
    if isinstance(baseline, str):
        name = baseline.strip().partition(":")[0]
        baseline = BASELINES.get(name) if name in BASELINES else None
    return bool(getattr(baseline, "stochastic", False))


def parse_baseline(spec: str, *, generator: torch.Generator | None = None) -> BaselineProvider:
    """Build a baseline from a spec string ``"name"`` or ``"name:key=value,..."``.

    Args:
        spec: the spec string.
        generator: the random source of a stochastic baseline (``uniform``), which then draws
            anew at every call instead of from its fixed ``seed``; ignored by the others.

    Raises:
        ValueError: on an unknown name, an unknown or malformed parameter, a baseline that
            needs a tensor (``mean``, ``tensor``: construct those in Python), or a ``seed`` given
            together with a ``generator``.
    """
    name, _, rest = spec.strip().partition(":")
    factory = BASELINES.get(name)
    if name in ("mean", "tensor"):
        raise ValueError(
            f"baseline {name!r} needs a tensor; pass MeanBaseline(mean) or the tensor itself as "
            "baseline= instead of a string (each image's own mean is 'image_mean')"
        )
    valid = _SPEC_PARAMS.get(name, {})
    params: dict[str, float | int] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in valid:
            raise ValueError(
                f"bad baseline parameter {item!r} in {spec!r}; {name!r} takes "
                + (", ".join(f"{k}=<{t.__name__}>" for k, t in valid.items()) or "no parameters")
            )
        try:
            params[key] = valid[key](value)
        except ValueError:
            raise ValueError(f"baseline parameter {key} must be a {valid[key].__name__}; got {value!r}") from None
    if generator is not None and is_stochastic(factory):
        if "seed" in params:
            raise ValueError(
                f"baseline {spec!r} draws from the generator passed in; drop seed= (seed the "
                "generator instead)"
            )
        return factory(**params, generator=generator)
    return factory(**params)


BaselineSpec = str | Tensor | BaselineProvider


def as_provider(baseline: BaselineSpec) -> BaselineProvider:
    """Normalise a spec string, tensor or provider to a :class:`BaselineProvider`.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(baseline, str):
        return parse_baseline(baseline)
    if isinstance(baseline, Tensor):
        return TensorBaseline(baseline)
    if callable(baseline):
        return baseline
    raise TypeError(
        f"baseline must be a spec string (e.g. 'zero', 'blur:sigma=4'), a tensor or a "
        f"BaselineProvider; got {type(baseline).__name__}"
    )


def resolve_baselines(baseline: BaselineSpec, images: Tensor, targets: Tensor) -> Tensor:
    """Baselines ``(N, C, H, W)`` for ``images`` and ``targets``, checked.

    Raises:
        ValueError: if a provider returns the wrong shape or non-finite values.
    """
    provider = as_provider(baseline)
    out = provider(images, targets)
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(images.shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"baseline provider {provider!r} must return (N, C, H, W) = {tuple(images.shape)}; got {got}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"baseline provider {provider!r} returned NaN or infinite values")
    return out.to(device=images.device, dtype=images.dtype).detach()


def baseline_name(baseline: BaselineSpec) -> str:
    """A short, stable description of a baseline for metadata and hashing."""
    if isinstance(baseline, str):
        return repr(parse_baseline(baseline))
    if isinstance(baseline, Tensor):
        return f"tensor{tuple(baseline.shape)}"
    return getattr(baseline, "name", None) or repr(baseline)
