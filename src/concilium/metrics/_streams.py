"""Per-image random streams: every draw a metric makes for an image (noise, subsets, a random
baseline, the order of tied pixels) comes from a generator seeded by that image's own stream, so
a stochastic score depends on its image, its parameters and the seed, never on the image's
position in the batch or on the chunking, and the global RNG is never used.

The stream of image ``i`` is ``derive_seed(base, <sha256 of the image's values>)``, ``base`` one
draw from the caller's generator (0 without one); a draw inside the stream is keyed by what it
is for and its index (``derive_seed(stream, "noise", s)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

from concilium._util import derive_seed

_BASE_BOUND = 2**62


def base_seed(generator: torch.Generator | None) -> int:
    """One draw from ``generator`` (0 without one): the base of every per-image stream."""
    if generator is None:
        return 0
    draw = torch.randint(0, _BASE_BOUND, (1,), generator=generator, device=generator.device)
    return int(draw.item())


def image_streams(generator: torch.Generator | None, images: Tensor) -> list[int]:
    """The seed of each image's stream: ``derive_seed(base_seed(generator), sha256(image))``.

    Two equal images get the same stream (and so the same score); an image gets the same stream
    alone and in any batch.
    """
    base = base_seed(generator)
    values = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return [derive_seed(base, hashlib.sha256(row.tobytes()).hexdigest()) for row in values]


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def draw_rows(
    seeds: list[int], draw: Callable[[torch.Generator], Tensor], device: torch.device
) -> Tensor:
    """``stack([draw(seeded(s)) for s in seeds])`` on ``device``: one independent draw per row
    (draws are made on ``device``'s type, so a CUDA metric draws on the GPU)."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    return torch.stack([draw(seeded(s, gen_device)) for s in seeds]).to(device)


def tie_break_keys(streams: list[int], n_pixels: int, device: torch.device) -> Tensor:
    """``(N, P)``: a random permutation of the pixels per image (its ``"ties"`` stream), the
    secondary sort key that orders tied pixels at random instead of by raster order."""
    return draw_rows(
        [derive_seed(s, "ties") for s in streams],
        lambda g: torch.randperm(n_pixels, generator=g, device=g.device),
        device,
    )
