"""What a dataset holds, said before anything is trained: the images of each split and their sizes, each
class's pixels and the images it appears in, the ignore label and its pixels (``data_summary.md``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .folders import ImageLabelDataset


@dataclass
class SplitCounts:
    """One split's counts, at each mask's own size."""
    images: int = 0
    sizes: Counter = field(default_factory=Counter)  # (W, H) -> number of images
    pixels: np.ndarray | None = None  # [K] pixels of each class
    images_with: np.ndarray | None = None  # [K] images in which each class has a pixel
    ignored: int = 0  # pixels holding the ignore label
    binary_masks: int = 0  # 0/255 masks read as 0/1


def count_split(ds: ImageLabelDataset) -> SplitCounts:
    """Count the labels of every image of ``ds`` (a dataset built with number_class and ignore_label)."""
    k = ds.number_class
    counts = SplitCounts(images=len(ds), sizes=Counter(ds.sizes[p] for p in ds.image_paths),
                         pixels=np.zeros(k, np.int64), images_with=np.zeros(k, np.int64),
                         binary_masks=len(ds.binary_masks))
    for path in ds.image_paths:
        label = ds.read_label(path)[0].astype(np.int64).ravel()
        per_class = np.bincount(label[(label >= 0) & (label < k)], minlength=k)
        counts.pixels += per_class
        counts.images_with += per_class > 0
        if ds.ignore_label is not None:
            counts.ignored += int((label == ds.ignore_label).sum())
    return counts


def classes_without_pixels(counts: SplitCounts, class_names: list[str], ignore_label: int | None) -> list[str]:
    """The classes (but the ignore label, when it is a class id) that no pixel of the split holds."""
    return [name for c, name in enumerate(class_names) if counts.pixels[c] == 0 and c != ignore_label]


def summary_markdown(title: str, splits: dict[str, SplitCounts], class_names: list[str],
                     ignore_label: int | None, ignore_source: str) -> str:
    """The summary as Markdown: a line on the ignore label, one on binary masks if any, then a table of
    the splits' images and sizes and one of the classes' pixels and images per split."""
    lines = [f"# Data summary: {title}", ""]
    if ignore_label is None:
        lines.append(f"ignore label: none ({ignore_source}); every pixel is a class and is scored")
    else:
        per_split = ", ".join(f"{s} {c.ignored:,}" for s, c in splits.items())
        lines.append(f"ignore label: {ignore_label} (from {ignore_source}), left out of training and never a "
                     f"class in scoring: {per_split} pixels")
    for split, c in splits.items():
        if c.binary_masks:
            lines.append(f"{split}: {c.binary_masks} of {c.images} masks hold only 0 and 255 and there are 2 "
                         f"classes: read as binary, 255 -> class 1 ({class_names[1]})")
    lines += ["", "| split | images | sizes (W x H: images) |", "|---|---:|---|"]
    for split, c in splits.items():
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(c.sizes.items()))
        lines.append(f"| {split} | {c.images} | {sizes} |")
    head = " | ".join(f"{s} pixels | {s} images" for s in splits)
    lines += ["", f"| id | class | {head} |", "|---:|---|" + "---:|---:|" * len(splits)]
    for k, name in enumerate(class_names):
        cells = " | ".join(f"{c.pixels[k]:,} | {c.images_with[k]}" for c in splits.values())
        lines.append(f"| {k} | {name}{' (ignore label)' if k == ignore_label else ''} | {cells} |")
    return "\n".join(lines) + "\n"
