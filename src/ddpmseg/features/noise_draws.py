"""Each step's activations averaged over K noise draws (config "noise_draws"), inside the extractor.

Draw 0 is the noise a diffusion backbone has always used: the run's shared noise tensor (share_noise),
or fresh noise from the feature_noise stream on every call. So K = 1 is the published extraction, bit
for bit. Draw k >= 1 comes from the seeding table's "noise_draw" stream with index k, on the backbone's
device like feature_noise: with share_noise, one tensor drawn once that serves every image and step (as
draw 0's does); without, a generator that gives every call fresh noise. The mean is taken here, before
the feature store, so the store holds one map per layer and image whatever K is; a call holds two
draws' activations at most (the running sum and the draw being added).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..common.seeding import stream_generator


@dataclass
class NoiseDraw:
    """One draw: its ``shared`` tensor (the same noise for every image and step), or None and the
    ``generator`` that draws fresh noise on each call."""

    shared: torch.Tensor | None
    generator: torch.Generator | None


def extra_draws(seed: int, noise_draws: int, shared_shape: Sequence[int] | None,
                device: str | torch.device = "cpu") -> list[NoiseDraw]:
    """Draws 1 .. noise_draws - 1 of ``seed``: each a shared tensor of ``shared_shape`` (share_noise), or
    (``shared_shape`` None) a generator of fresh noise. Empty for noise_draws 1."""
    draws = []
    for k in range(1, noise_draws):
        g = stream_generator("noise_draw", seed, k, device=device)
        shared = None if shared_shape is None else torch.randn(tuple(shared_shape), generator=g, device=device)
        draws.append(NoiseDraw(shared, g))
    return draws


def mean_over_draws(extract: Callable[[NoiseDraw], list[torch.Tensor]],
                    draws: Sequence[NoiseDraw]) -> list[torch.Tensor]:
    """The mean over ``draws`` of ``extract(draw)`` (a list of maps), map by map: the sum in draw order,
    divided by the number of draws. One draw returns its maps untouched, so K = 1 is today's result."""
    total = extract(draws[0])
    if len(draws) == 1:
        return total
    for draw in draws[1:]:
        for acc, maps in zip(total, extract(draw)):
            acc += maps
    return [acc.div_(len(draws)) for acc in total]
