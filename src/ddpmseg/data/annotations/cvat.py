"""CVAT "Segmentation mask 1.1": ``labelmap.txt`` (``name:R,G,B:parts:actions`` lines), class-colour
PNGs in ``SegmentationClass/``, images in ``JPEGImages/`` (when exported with images) and the
subsets in ``ImageSets/Segmentation/<subset>.txt``."""
from __future__ import annotations

import os
import re

import numpy as np

from ..folders import DataError, read_mask
from .common import Export, Item, find_image, image_extension, image_sets

LABELMAP = "labelmap.txt"
# CVAT paints unlabelled pixels black; a labelmap without a black entry still has that background.
BACKGROUND = ("background", [0, 0, 0])


def read_labelmap(path: str) -> tuple[list[str], list[list[int]]]:
    """Class names and colours of a labelmap.txt; the name is everything before the last three ':'
    fields, so it may hold spaces and colons."""
    names, colours = [], []
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\r\n") for ln in f]
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rsplit(":", 3)
        match = re.fullmatch(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*", fields[1]) if len(fields) == 4 else None
        if not match or not fields[0].strip() or any(int(v) > 255 for v in match.groups()):
            raise DataError(f"{path}: line {i + 1} {line!r} is not 'name:R,G,B::' with R, G, B in 0..255; "
                            f"fix the line or export the labelmap again")
        names.append(fields[0].strip())
        colours.append([int(v) for v in match.groups()])
    if not names:
        raise DataError(f"{path}: lists no class; export the task again with its labels, "
                        f"or write 'name:R,G,B::' lines")
    if [0, 0, 0] not in colours:
        names, colours = [BACKGROUND[0], *names], [BACKGROUND[1], *colours]
    repeated = sorted({tuple(c) for c in colours if colours.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: several classes share the colour {list(repeated[0])}, so the masks cannot tell "
                        f"them apart; give each class its own colour in CVAT and export again")
    return names, colours


def is_cvat(root: str) -> bool:
    return os.path.isfile(os.path.join(root, LABELMAP))


def read_cvat(root: str, images: str | None, source: str) -> Export:
    names, palette = read_labelmap(os.path.join(root, LABELMAP))
    mask_dir = os.path.join(root, "SegmentationClass")
    if not os.path.isdir(mask_dir):
        raise DataError(f"{source}: has {LABELMAP} but no SegmentationClass/ folder; export the task as "
                        f"'Segmentation mask 1.1'")
    image_dir = images or os.path.join(root, "JPEGImages")
    if not os.path.isdir(image_dir):
        raise DataError(f"{source}: holds no JPEGImages/ (exported without images); pass the images "
                        f"folder as --images, or export again with 'Save images'")
    split, notes = image_sets(root)
    if split is None:
        split = {os.path.splitext(p)[0]: "train" for p in sorted(os.listdir(mask_dir)) if p.endswith(".png")}
    items = []
    for stem, subset in split.items():
        mask = os.path.join(mask_dir, stem + ".png")
        if not os.path.isfile(mask):
            raise DataError(f"{mask}: missing, but {stem} is listed in ImageSets/Segmentation; export the "
                            f"task again (or remove the line)")
        image = find_image(image_dir, stem, mask)
        items.append(Item(stem, image, image_extension(image), _colour_mask(mask, palette), subset))
    if not items:
        raise DataError(f"{mask_dir}: holds no mask; export the annotated task again")
    return Export("CVAT Segmentation mask 1.1", source, names, palette, None, None, items, notes)


def _colour_mask(path: str, palette: list[list[int]]):
    def draw(height: int, width: int) -> np.ndarray:
        # read_mask maps each colour to its labelmap line and names any colour the labelmap lacks.
        return read_mask(path, palette)
    return draw
