"""LabelMe JSON, one file per image: ``shapes`` [{label, points, shape_type}], ``imagePath`` (relative
to the JSON file), ``imageData`` (the image file, base64), ``imageHeight``, ``imageWidth``.

Shapes are drawn as labelme2voc draws them (PIL, in file order, a later shape over an earlier one),
so the masks match the tool's own converter: polygon, rectangle (two corners) and circle (centre and
a point on the circle). The label ``__ignore__`` draws the ignore label, as in labelme2voc."""
from __future__ import annotations

import base64
import binascii
import io
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from ..folders import DataError
from .common import (IGNORE_NAME, VOC_IGNORE, Export, Item, check_points, drop_ignore_name, image_extension,
                     safe_stem)
from .coco import load_json

# labelme2voc's name of class 0; "background" is taken to mean the same.
BACKGROUND_NAMES = ("_background_", "background")
# Points each shape type needs: at least 3 for a polygon, exactly 2 for the others.
SHAPE_POINTS = {"polygon": 3, "rectangle": 2, "circle": 2}


def is_labelme(data: object) -> bool:
    return isinstance(data, dict) and "shapes" in data


def json_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(".json")]
    return found


def read_labelme(paths: list[str], root: str, images: str | None, names: list[str] | None, source: str) -> Export:
    files = [(p, load_json(p)) for p in paths]
    for p, data in files:
        if not is_labelme(data):
            raise DataError(f"{p}: not a LabelMe file (no 'shapes'); remove it from {root}")
    names, ignore = drop_ignore_name(names)
    labels = {s.get("label", "") for _, d in files for s in d["shapes"]}
    if IGNORE_NAME in labels:
        ignore = VOC_IGNORE
    if names is None:
        found = sorted(labels - {IGNORE_NAME, *BACKGROUND_NAMES})
        names = ["background", *found]
    class_of = {n: k for k, n in enumerate(names)}
    for n in BACKGROUND_NAMES:
        class_of.setdefault(n, 0)
    if ignore is not None:
        class_of[IGNORE_NAME] = ignore
    items = [_item(p, data, root, images, class_of) for p, data in files]
    if not items:
        raise DataError(f"{source}: holds no LabelMe .json file; point --masks at the folder of LabelMe files")
    return Export("LabelMe JSON", source, names, None, ignore,
                  "a LabelMe shape labelled __ignore__" if IGNORE_NAME in labels else None, items)


def _item(path: str, data: dict, root: str, images: str | None, class_of: dict[str, int]) -> Item:
    stem = safe_stem(os.path.relpath(path, root), path)
    image_path = (data.get("imagePath") or "").replace("\\", "/")  # LabelMe on Windows writes backslashes
    if data.get("imageData"):
        try:
            blob = base64.b64decode(data["imageData"], validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{path}: 'imageData' is not base64; save the file again in LabelMe") from None
        if image_path:
            ext = image_extension(image_path)
        else:
            with Image.open(io.BytesIO(blob)) as img:
                ext = (img.format or "png").lower()
        image: str | bytes = blob
    else:
        candidates = [os.path.join(os.path.dirname(path), image_path)]
        if images:
            candidates.append(os.path.join(images, os.path.basename(image_path)))
        image = next((c for c in candidates if image_path and os.path.isfile(c)), "")
        if not image:
            raise DataError(f"{path}: its image {image_path!r} is not at {' or '.join(candidates)}, and the file "
                            f"embeds no imageData; put the image there or pass its folder as --images")
        ext = image_extension(image)
    for i, shape in enumerate(data["shapes"]):
        label = shape.get("label", "")
        if label not in class_of:
            raise DataError(f"{path}: shape {i} has label {label!r}, which is not a class ({', '.join(class_of)}); "
                            f"add it to --classes or relabel the shape")
    return Item(stem, image, ext, lambda h, w: _draw(path, data, class_of, h, w))


def _draw(path: str, data: dict, class_of: dict[str, int], height: int, width: int) -> np.ndarray:
    size = (data.get("imageHeight"), data.get("imageWidth"))
    if None not in size and size != (height, width):
        raise DataError(f"{path}: imageWidth x imageHeight is {size[1]}x{size[0]} but the image is "
                        f"{width}x{height}; fix the JSON or the image")
    ids = np.zeros((height, width), np.int64)
    for i, shape in enumerate(data["shapes"]):
        where = f"{path}: shape {i} ({shape.get('label')!r})"
        kind = shape.get("shape_type") or "polygon"
        if kind not in SHAPE_POINTS:
            raise DataError(f"{where}: shape_type {kind!r} has no area to label; use "
                            f"{', '.join(SHAPE_POINTS)} (or remove the shape)")
        points = np.asarray(shape.get("points", []), np.float64).reshape(-1, 2)
        need = SHAPE_POINTS[kind]
        if len(points) < need or (kind != "polygon" and len(points) != need):
            raise DataError(f"{where}: a {kind} needs {'at least ' if kind == 'polygon' else ''}{need} points, "
                            f"got {len(points)}")
        check_points(points, height, width, where)
        ids[shape_mask(kind, points, height, width)] = class_of[shape.get("label", "")]
    return ids


def shape_mask(kind: str, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """labelme's shape_to_mask for polygons, rectangles and circles: PIL fills with the outline drawn."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [tuple(p) for p in points.tolist()]
    if kind == "circle":
        (cx, cy), (px, py) = xy
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(canvas, bool)
