"""The one rule that lets images of any size and aspect meet a backbone of one square working side S.

An image is scaled (bilinear, antialiased: ``image_transform``) so that its short side is S, its label
by nearest neighbour to the same size, and the scaled image is covered by S x S windows that overlap
along the long side (``window_starts``). Training takes every window as one training image (a pixel in
an overlap trains once per window it lies in, with that window's context); evaluation and
``ddpmseg segment`` predict every window, average the windows' per-pixel class distributions where
they overlap and resize the result bilinearly to the image's own H x W, where it is scored against
the image's own label. An S x S image is one window with no resizing: exactly the square computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

# Neighbouring windows share half their width: every pixel away from the two ends is seen by two
# windows, so no window's border (where a U-Net has the least context) decides a pixel alone.
WINDOW_OVERLAP = 0.5


def window_starts(length: int, size: int, overlap: float = WINDOW_OVERLAP) -> list[int]:
    """Start offsets of ``size``-wide windows covering ``length`` pixels, evenly spaced, first at 0 and
    last at ``length - size``, neighbours overlapping by at least ``overlap`` of a window."""
    if length <= size:
        return [0]
    count = math.ceil((length - size) / (size * (1 - overlap))) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def scaled_hw(width: int, height: int, side: int) -> tuple[int, int]:
    """(H, W) of a ``width`` x ``height`` image once its short side is ``side``: torchvision's
    ``Resize(side)`` rule (the long side truncated), so it equals ``image_transform``'s output shape."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


@dataclass(frozen=True)
class Tiling:
    """The S x S windows (top, left) of one image scaled to ``height`` x ``width`` (short side S)."""

    height: int
    width: int
    size: int

    @property
    def windows(self) -> list[tuple[int, int]]:
        return [(t, l) for t in window_starts(self.height, self.size) for l in window_starts(self.width, self.size)]

    def crops(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The windows of ``x`` [..., height, width], in ``windows`` order."""
        s = self.size
        for top, left in self.windows:
            yield x[..., top:top + s, left:left + s]

    def merge(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """[C, height, width]: the mean of the windows' [C, S, S] ``maps`` (in ``windows`` order) at each
        pixel over the windows that cover it."""
        s = self.size
        total = torch.zeros(maps[0].shape[0], self.height, self.width, dtype=maps[0].dtype)
        cover = torch.zeros(self.height, self.width, dtype=maps[0].dtype)
        for (top, left), m in zip(self.windows, maps):
            total[:, top:top + s, left:left + s] += m
            cover[top:top + s, left:left + s] += 1
        return total / cover
