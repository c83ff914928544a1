"""Pascal VOC and labelme2voc: ``JPEGImages/``, palette PNGs of class ids in ``SegmentationClass/``
(labelme2voc: ``SegmentationClassPNG/``, its ``SegmentationClass/`` holding .npy arrays with -1 for
ignore), 255 = void borders, class names in ``class_names.txt`` or ``labels.txt`` (``__ignore__``)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..folders import DataError, read_mask
from .common import (VOC_IGNORE, Export, Item, drop_ignore_name, find_image, image_extension, image_sets,
                     read_names)

# labelme2voc writes its PNG masks here, next to SegmentationClass/ of .npy arrays.
MASK_FOLDERS = ("SegmentationClassPNG", "SegmentationClass")
NAME_FILES = ("class_names.txt", "labels.txt")
# labelme2voc's ignore id in its .npy arrays; its PNGs hold the same pixels as 255.
NPY_IGNORE = -1


def is_voc(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "JPEGImages")) and any(
        os.path.isdir(os.path.join(root, m)) for m in MASK_FOLDERS)


def read_voc(root: str, images: str | None, names: list[str] | None, source: str) -> Export:
    """``root`` is a VOC folder, or (``--format voc``) a folder of the masks themselves."""
    mask_dir = next((os.path.join(root, m) for m in MASK_FOLDERS if os.path.isdir(os.path.join(root, m))
                     and _masks(os.path.join(root, m))), root)
    image_dir = images or os.path.join(root, "JPEGImages")
    if not os.path.isdir(image_dir):
        raise DataError(f"{source}: no JPEGImages/ folder; pass the images folder as --images")
    stems = _masks(mask_dir)
    if not stems:
        raise DataError(f"{mask_dir}: holds no .png or .npy mask; point --masks at the VOC folder")
    name_file = next((os.path.join(root, n) for n in NAME_FILES if os.path.isfile(os.path.join(root, n))), None)
    if names is None and name_file:
        names = read_names(name_file)
    names, declared_ignore = drop_ignore_name(names)
    split, notes = image_sets(root)
    split = split or {s: "train" for s in stems}
    items, largest, palette = [], 0, None
    for stem, subset in split.items():
        if stem not in stems:
            raise DataError(f"{os.path.join(mask_dir, stem)}.png: missing, but {stem} is listed in "
                            f"ImageSets/Segmentation; add its mask or remove the line")
        mask = stems[stem]
        ids = _read_ids(mask)
        largest = max(largest, int(ids[ids != VOC_IGNORE].max(initial=0)))
        palette = palette or _png_palette(mask)
        image = find_image(image_dir, stem, mask)
        items.append(Item(stem, image, image_extension(image), lambda h, w, m=mask: _read_ids(m), subset))
    if names is None:
        names = [f"class_{i}" for i in range(largest + 1)]
    elif largest >= len(names):
        raise DataError(f"{source}: masks hold class id {largest} but {name_file or '--classes'} names "
                        f"{len(names)} classes (0..{len(names) - 1}); add the missing names")
    why = f"{name_file}: __ignore__" if declared_ignore is not None else "VOC layout: 255 marks void borders"
    return Export("Pascal VOC" if "SegmentationClassPNG" not in mask_dir else "labelme2voc", source, names,
                  palette[:len(names)] if palette and len(palette) >= len(names) else None, VOC_IGNORE, why, items, notes)


def _masks(folder: str) -> dict[str, str]:
    """The masks of a folder by stem: PNGs, else .npy arrays (labelme2voc's SegmentationClass/)."""
    files = sorted(os.listdir(folder))
    for ext in (".png", ".npy"):
        found = {f[:-len(ext)]: os.path.join(folder, f) for f in files if f.lower().endswith(ext)}
        if found:
            return found
    return {}


def _read_ids(path: str) -> np.ndarray:
    ids = read_mask(path)  # an RGB mask (no palette) is an error there that says what to do
    if path.lower().endswith(".npy"):
        ids = np.where(ids == NPY_IGNORE, VOC_IGNORE, ids)
    if ids.min(initial=0) < 0:
        raise DataError(f"{path}: negative class ids {sorted(set(ids[ids < 0].tolist()))[:5]}; class ids are "
                        f">= 0 (and {NPY_IGNORE} for ignore in labelme2voc arrays)")
    return ids


def _png_palette(path: str) -> list[list[int]] | None:
    """A palette PNG's colours by index: VOC's class colours."""
    if not path.lower().endswith(".png"):
        return None
    with Image.open(path) as img:
        if img.mode != "P":
            return None
        flat = img.getpalette()
    return [flat[i:i + 3] for i in range(0, len(flat), 3)]
