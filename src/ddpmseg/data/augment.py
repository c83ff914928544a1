"""Joint image + mask augmentation for training, and the views of test-time augmentation.

The training pipeline is the regularised fork's (matosjan/ddpm-segmentation-coursework, with
albumentations), rebuilt on torchvision.transforms.v2 so that the image and its label map go through one call and every
geometric transform moves both alike: masks are resampled with nearest neighbour, and pixels
that a transform invents (rotation corners, crop borders, dropout holes) get ``fill_label``,
which the trainer skips. A mirror also exchanges left/right classes (``flip_pairs``). Every
copy is drawn from its own seed, so a run is reproducible and copy k of image i is the same
however many copies are made.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..common.config import TTA_VIEWS
from ..common.seeding import stream_seed

# The fork's values: colour jitter strengths, crop scale range, rotation limit (albumentations'
# default +-90 degrees), 2..4 holes of 40..60 px at 256 px (scaled with the image size).
JITTER = dict(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
CROP_SCALE = (0.3, 0.6)
ROTATION_DEGREES = 90.0
HOLES = (2, 4)
HOLE_FRACTION = (40 / 256, 60 / 256)


class CoarseDropout(v2.Transform):
    """Black out 2-4 random rectangles of the image; the mask gets ``fill_label`` there."""

    def __init__(self, fill_label: int, holes: tuple[int, int] = HOLES,
                 side_fraction: tuple[float, float] = HOLE_FRACTION):
        super().__init__()
        self.fill_label, self.holes, self.side_fraction = fill_label, holes, side_fraction

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        n = int(torch.randint(self.holes[0], self.holes[1] + 1, ()).item())
        lo, hi = (max(1, round(f * min(h, w))) for f in self.side_fraction)
        boxes = []
        for _ in range(n):
            bh, bw = (int(torch.randint(lo, hi + 1, ()).item()) for _ in range(2))
            y, x = int(torch.randint(0, h - bh + 1, ()).item()), int(torch.randint(0, w - bw + 1, ()).item())
            boxes.append((y, x, bh, bw))
        return {"boxes": boxes}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        out = inpt.as_subclass(torch.Tensor).clone()
        fill = self.fill_label if isinstance(inpt, tv_tensors.Mask) else 0
        for y, x, bh, bw in params["boxes"]:
            out[..., y:y + bh, x:x + bw] = fill
        # Plain tensor ops drop the Image/Mask type; re-wrap so later transforms still see a mask.
        return tv_tensors.wrap(out, like=inpt)


def class_permutation(num_classes: int, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Class order of a mirrored score map: class a reads b and b reads a for each pair."""
    perm = torch.arange(num_classes)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def swap_classes(mask: torch.Tensor, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """``mask`` with the two ids of every pair exchanged (e.g. left eye <-> right eye)."""
    out = mask.clone()
    for a, b in pairs:
        out[mask == a], out[mask == b] = b, a
    return out


class HorizontalFlipSwap(v2.Transform):
    """Mirror image and mask; in the mask, left/right classes (``pairs``) trade ids, because the
    mirrored left eye is a right eye. Without the swap, flips teach contradictory labels."""

    def __init__(self, pairs: Sequence[Sequence[int]] = ()):
        super().__init__()
        self.pairs = [tuple(p) for p in pairs]

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        out = inpt.as_subclass(torch.Tensor).flip(-1)
        if isinstance(inpt, tv_tensors.Mask):
            out = swap_classes(out, self.pairs)
        return tv_tensors.wrap(out, like=inpt)


def training_pipeline(size: int, p: float, fill_label: int, flip_pairs: Sequence[Sequence[int]] = ()) -> v2.Compose:
    """The regularised fork's transforms, each applied with probability ``p``, on [0, 1] images."""
    fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: fill_label}
    maybe = lambda t: v2.RandomApply([t], p=p)  # noqa: E731
    return v2.Compose([
        maybe(v2.ColorJitter(**JITTER)),
        v2.RandomGrayscale(p=p),
        maybe(HorizontalFlipSwap(flip_pairs)),
        maybe(CoarseDropout(fill_label)),
        maybe(v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True)),
        maybe(v2.RandomRotation(ROTATION_DEGREES, fill=fill)),
        # torchvision's default strength; albumentations' defaults (the fork's) move pixels
        # by far less than one pixel, i.e. hardly at all.
        maybe(v2.ElasticTransform(fill=fill)),
    ])


def augment_pair(image: torch.Tensor, label: torch.Tensor, seed: int, p: float, fill_label: int,
                 flip_pairs: Sequence[Sequence[int]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented copy of (image [3, H, W] in [-1, 1], label [H, W] int64), drawn from ``seed``.

    ``flip_pairs`` are the class ids a mirror swaps. The global torch RNG is left as it was.
    """
    pipeline = training_pipeline(image.shape[-1], p, fill_label, flip_pairs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        img, mask = pipeline(tv_tensors.Image((image + 1) / 2), tv_tensors.Mask(label))
    return img.as_subclass(torch.Tensor) * 2 - 1, mask.as_subclass(torch.Tensor)


def copy_seed(seed: int, image_index: int, copy: int) -> int:
    """The seed of augmented copy ``copy`` (1, 2, ...) of training image ``image_index``."""
    return stream_seed("augment_copy", seed, image_index, copy)


def view_seed(seed: int, image_index: int, view_index: int) -> int:
    """The seed of test-time view ``view_index`` of test image ``image_index``."""
    return stream_seed("test_view", seed, image_index, view_index)


def tta_view(image: torch.Tensor, view: str, seed: int) -> tuple[torch.Tensor, bool]:
    """(the test image [3, H, W] in [-1, 1] seen through ``view``, whether it was flipped)."""
    if view not in TTA_VIEWS:
        raise ValueError(f"unknown test-time view {view!r}; choose from {TTA_VIEWS}")
    x = (image + 1) / 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if view.startswith("color_jitter"):
            x = v2.ColorJitter(**JITTER)(x)
        if view == "grayscale":
            x = v2.functional.rgb_to_grayscale(x, num_output_channels=3)
    flipped = view.endswith("hflip")
    if flipped:
        x = x.flip(-1)
    return x * 2 - 1, flipped
