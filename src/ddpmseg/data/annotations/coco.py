"""COCO JSON: ``images`` (file_name, height, width), ``categories`` (id, name) and ``annotations``
whose ``segmentation`` is polygons, an uncompressed RLE (``counts`` a list) or a compressed RLE
(``counts`` a string), drawn with pycocotools.

Categories sorted by id become classes 1..K; class 0 is the background (pixels no annotation covers).
Where annotations overlap, the smaller one is drawn on top (equal areas: the later one): a region
drawn inside another (an eye in a face, a window in a wall) is the one meant to show, and the result
does not depend on the order the tool wrote the annotations in. Crowd annotations (``iscrowd``) are
their category's pixels like any other.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..folders import DataError
from .common import Export, Item, check_points, image_extension, safe_stem

BACKGROUND = "background"
# The keys every entry of each list needs (COCO's own "id" included: annotations name their image by it).
REQUIRED = {"images": ("id", "file_name", "width", "height"), "categories": ("id", "name"),
            "annotations": ("image_id", "category_id", "segmentation")}


def is_coco(data: object) -> bool:
    return isinstance(data, dict) and all(k in data for k in ("images", "annotations", "categories"))


def read_coco(path: str, data: dict, images: str | None, source: str) -> Export:
    for key, needed in REQUIRED.items():
        for i, entry in enumerate(data[key]):
            missing = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{path}: {key}[{i}] lacks {', '.join(missing)}; export the dataset again "
                                f"(COCO JSON gives {', '.join(needed)} for each)")
    image_dir = images or os.path.dirname(os.path.abspath(path))
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise DataError(f"{path}: 'categories' is empty; export the dataset with its categories")
    class_of = {c["id"]: k + 1 for k, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        if a.get("category_id") not in class_of:
            raise DataError(f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, which is "
                            f"not in 'categories' (ids {sorted(class_of)}); fix the annotation or add the category")
        if a.get("image_id") not in by_image:
            raise DataError(f"{path}: annotation {a.get('id')} has image_id {a.get('image_id')}, which is not in "
                            f"'images'; fix the annotation or add the image")
        by_image[a["image_id"]].append(a)
    items = []
    for im in data["images"]:
        where = f"{path}: image {im['id']} ({im['file_name']})"
        file = os.path.join(image_dir, im["file_name"])
        if not os.path.isfile(file):
            raise DataError(f"{where}: no file {file}; pass the images folder as --images")
        draw = _drawer(by_image[im["id"]], class_of, (im["height"], im["width"]), where)
        items.append(Item(safe_stem(im["file_name"], where), file, image_extension(file), draw))
    if not items:
        raise DataError(f"{path}: 'images' is empty; export the dataset with its images")
    names = [BACKGROUND] + [c["name"] for c in categories]
    return Export("COCO JSON", source, names, None, None, None, items)


def _drawer(annotations: list[dict], class_of: dict[int, int], size: tuple[int, int], where: str):
    def draw(height: int, width: int) -> np.ndarray:
        if (height, width) != tuple(size):
            raise DataError(f"{where}: the JSON gives {size[1]}x{size[0]} (WxH) but the image file is "
                            f"{width}x{height}; fix 'width'/'height' or the file")
        ids = np.zeros((height, width), np.int64)
        regions = [(region(a["segmentation"], height, width, f"{where}, annotation {a.get('id')}"), a)
                   for a in annotations]
        # Largest first, so a smaller region is drawn over it; sorted() is stable: equal areas keep file order.
        for mask, a in sorted(regions, key=lambda r: -int(r[0].sum())):
            ids[mask] = class_of[a["category_id"]]
        return ids
    return draw


def region(segmentation: list | dict, height: int, width: int, where: str) -> np.ndarray:
    """The bool mask [H, W] of one COCO segmentation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as coco_mask  # only COCO reading needs it

    if isinstance(segmentation, list):
        polygons = [np.asarray(p, np.float64) for p in segmentation]
        if not polygons or any(p.size < 6 or p.size % 2 for p in polygons):
            raise DataError(f"{where}: a polygon needs at least 3 (x, y) points as [x1, y1, x2, y2, ...]")
        for p in polygons:
            check_points(p.reshape(-1, 2), height, width, where)
        rle = coco_mask.merge(coco_mask.frPyObjects([p.tolist() for p in polygons], height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) != [height, width]:
            raise DataError(f"{where}: RLE size {segmentation.get('size')} is not the image's [height, width] "
                            f"[{height}, {width}]; export it for this image")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise DataError(f"{where}: RLE counts sum to {sum(counts)}, not height x width = "
                                f"{height * width}; export the annotation again")
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise DataError(f"{where}: 'segmentation' is neither polygons nor an RLE {{size, counts}}")
    return coco_mask.decode(rle).astype(bool)


def coco_file(folder: str) -> str | None:
    """The one COCO JSON of a folder that holds its images beside it (as Roboflow exports), or None."""
    jsons = [os.path.join(folder, p) for p in sorted(os.listdir(folder)) if p.lower().endswith(".json")]
    return jsons[0] if len(jsons) == 1 and is_coco(load_json(jsons[0])) else None


def load_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as JSON ({e}); export it again") from None
