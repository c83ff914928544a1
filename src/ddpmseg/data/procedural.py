"""A procedural, labelled 64x64 shape-segmentation dataset for the offline demo.

Each image shows 2-4 shapes (disc, square, triangle, ring, cross) on a background. Every shape
draws its fill from ONE colour/texture distribution (solid, stripes, checker, dots, noise), and
backgrounds use the same colour distribution, so a pixel's RGB (and position) says almost
nothing about its class: telling a triangle from a square needs spatial context, which U-Net
features have and a per-pixel RGB + (x, y) classifier lacks (tests/test_procedural.py measures it).

Shapes are signed-distance functions on the pixel-centre grid: the label is ``d < 0`` (exact
integer class ids, nearest) and the image uses coverage ``clip(0.5 - d, 0, 1)`` (mild
anti-aliasing), so image and label share one geometry. Everything is numpy; a sample takes
about 2 ms on one CPU core (1000 images written in ~4 s).

Layout written by :func:`write_dataset` (as ``../shared/data/celebamask64``)::

    <out>/real/train/<stem>.png + <stem>.npy   (uint8 HxW class ids)
    <out>/real/test/<stem>.png + <stem>.npy
    <out>/unlabeled/<stem>.png                 (images only, from a disjoint seed stream)
    <out>/classes.json, <out>/dataset.json     (classes/palette; parameters and class counts)

CLI: ``python -m ddpmseg.data.procedural --out DIR [--train N --test N --unlabeled N --size 64 --seed 0]``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..common.atomic import write_json_atomic
from ..common.errors import DataError
from ..common.seeding import stream_rng

CLASS_NAMES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "cross")
# Distinct, colour-blind-friendly-ish colours for visualising masks (not used to render images).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),        # background
    (230, 25, 75),    # disc
    (60, 180, 75),    # square
    (255, 225, 25),   # triangle
    (0, 130, 200),    # ring
    (245, 130, 48),   # cross
)
NUM_CLASSES = len(CLASS_NAMES)

# Bump whenever a change to the rendering changes any pixel: dataset.json records it, so an old
# folder is reported as stale instead of being silently reused as if it were the new data.
GENERATOR_VERSION = 1
# Marks dataset.json as ours, so that an unrelated folder at out_dir is never taken for a dataset.
_FORMAT = "ddpmseg.procedural"

# Default image side: the demo's DDPM and the celebamask64 set are 64 px.
DEFAULT_SIZE = 64
# The label-efficient regime, as celebamask64's 20 train images; a config may use the first 10.
DEFAULT_TRAIN = 20
# Enough pixels of every class for a stable per-class IoU, still written in well under a second.
DEFAULT_TEST = 100
# The demo's DDPM trains for minutes on CPU (tens of thousands of samples seen); 1000 distinct
# images keep it from memorising a handful, and take a few seconds to write.
DEFAULT_UNLABELED = 1000
DEFAULT_SEED = 0
# Smallest side for which the shapes (>= 12 px at 64) stay recognisable after scaling.
MIN_SIZE = 16

# Independent numpy streams per split: (seed, split key, image index). Unlabeled images come
# from their own key, so they are never copies of labelled train/test images.
_SPLIT_KEYS = {"train": 0, "test": 1, "unlabeled": 2}

# --- geometry (in pixels at 64 px; scaled by size / 64) --------------------------------------
# Shape extent ("size" s) range, the brief's 12-30 px.
_SHAPE_SIZE = (12.0, 30.0)
_SHAPES_PER_IMAGE = (2, 4)
# Per-class scale factors of s, chosen so that mean areas are similar (0.57-0.72 s^2) and every
# class gets a comparable share of pixels: disc radius, square half-side, triangle circumradius,
# ring outer radius, cross arm half-length / half-width.
_DISC_R, _SQUARE_H, _TRI_R, _RING_R, _CROSS_L, _CROSS_W = 0.5, 0.425, 0.7, 0.53, 0.5, 0.19
_RING_INNER = (0.45, 0.6)  # inner / outer radius: a visible hole and a band >= ~2.5 px wide
# Circumradius bound for every class (triangle's is the largest): shapes are placed fully inside
# the image with the SAME bound for all classes, so position says nothing about the class.
_PLACE_R = 0.7
# A new shape may cover at most this fraction of itself with older shapes and of any older
# shape's visible area: overlaps happen but every shape stays mostly visible (recognisable).
_MAX_OVERLAP = 0.3
_PLACE_TRIES = 20
# A shape's mean fill must differ this much (RGB L2, 0-255) from what it covers, so shapes are
# visible; colour distributions still overlap fully between classes and with the background.
_MIN_CONTRAST = 60.0
_COLOUR_TRIES = 10
# Colours are uniform in this cube: away from pure black/white so noise does not clip much.
_COLOUR_RANGE = (20.0, 235.0)

_FILLS = ("solid", "stripes", "checker", "dots", "noise")
_BACKGROUNDS = ("gradient", "blobs", "texture")


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` ("train", "test", "unlabeled") for ``seed``.

    SeedSequence mixes the keys, so every image is an independent stream: image i of a split is
    the same whatever the other splits' sizes are.
    """
    return stream_rng("procedural_image", seed, _SPLIT_KEYS[split], index)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(*_COLOUR_RANGE, size=3).astype(np.float32)


def _soft(x: np.ndarray) -> np.ndarray:
    """A soft square wave from a sine-like signal: crisp textures without hard aliasing."""
    return np.clip(0.5 + 1.5 * x, 0.0, 1.0)


def _rotated(xs: np.ndarray, ys: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * xs + s * ys, -s * xs + c * ys


def _mix(c1: np.ndarray, c2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours: w (HxW) = 0 gives c1, 1 gives c2."""
    return c1 + w[..., None] * (c2 - c1)


def _texture(rng: np.random.Generator, kind: str, c1: np.ndarray, c2: np.ndarray,
             xs: np.ndarray, ys: np.ndarray, scale: float) -> np.ndarray:
    """An HxWx3 float image of texture ``kind`` in colours c1/c2 (image coordinates, random phase)."""
    h, w = xs.shape
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    if kind == "noise":
        sigma = rng.uniform(10.0, 35.0)
        return c1 + sigma * rng.standard_normal((h, w, 3), dtype=np.float32)
    u, v = _rotated(xs, ys, rng.uniform(0.0, np.pi))
    if kind == "stripes":
        period = rng.uniform(3.0, 8.0) * scale
        return _mix(c1, c2, _soft(np.sin(2 * np.pi * (u / period + rng.uniform()))))
    if kind == "checker":
        cell = rng.uniform(3.0, 7.0) * scale
        pu, pv = rng.uniform(0, 2 * np.pi, size=2)
        return _mix(c1, c2, _soft(np.sin(np.pi * u / cell + pu) * np.sin(np.pi * v / cell + pv)))
    if kind == "dots":
        spacing = rng.uniform(4.0, 8.0) * scale
        radius = rng.uniform(0.2, 0.35) * spacing
        ou, ov = rng.uniform(0, spacing, size=2)
        du = (u + ou) % spacing - spacing / 2
        dv = (v + ov) % spacing - spacing / 2
        return _mix(c1, c2, np.clip(radius + 0.5 - np.sqrt(du * du + dv * dv), 0.0, 1.0))
    raise ValueError(f"unknown texture {kind!r}")


def _fill(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, scale: float) -> np.ndarray:
    """A shape fill: the SAME distribution for every shape class (the dataset's key property)."""
    kind = _FILLS[rng.integers(len(_FILLS))]
    c1 = _colour(rng)
    # Texture contrast from subtle to full, so fills range from near-solid to busy.
    c2 = c1 + rng.uniform(0.3, 1.0) * (_colour(rng) - c1)
    return _texture(rng, kind, c1, c2, xs, ys, scale)


def _bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample an (n, n, 3) grid to (size, size, 3), corner cells at the image corners."""
    n = grid.shape[0]
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (n - 1)
    i0 = np.minimum(pos.astype(np.int64), n - 2)
    f = (pos - i0)[:, None, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f          # (size, n, 3)
    g = f[:, 0, 0][None, :, None]
    return rows[:, i0] * (1 - g) + rows[:, i0 + 1] * g


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int,
                scale: float) -> np.ndarray:
    """Smooth gradients, colour blobs or low-contrast textures, colours from the shapes' cube."""
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    c1 = _colour(rng)
    if kind == "gradient":
        c2 = c1 + rng.uniform(0.3, 1.0) * (_colour(rng) - c1)
        u, _ = _rotated(xs - size / 2, ys - size / 2, rng.uniform(0, 2 * np.pi))
        img = _mix(c1, c2, np.clip(u / size + 0.5, 0.0, 1.0))
    elif kind == "blobs":
        n = int(rng.integers(2, 6))
        spread = rng.uniform(0.2, 0.5)
        grid = np.stack([c1 + spread * (_colour(rng) - c1) for _ in range(n * n)]).reshape(n, n, 3)
        img = _bilinear(grid, size)
    else:
        # Low contrast: a textured background must not look like one big shape.
        c2 = c1 + rng.uniform(0.15, 0.35) * (_colour(rng) - c1)
        tex = _FILLS[1 + rng.integers(len(_FILLS) - 1)]  # any but solid (that is a "gradient")
        img = _texture(rng, tex, c1, c2, xs, ys, scale)
        if tex == "noise":
            img = c1 + 0.4 * (img - c1)
    sigma = rng.uniform(0.0, 8.0)  # sensor-like grain, so no background is perfectly flat
    return img + sigma * rng.standard_normal(img.shape, dtype=np.float32)


def _shape_sdf(cls: int, u: np.ndarray, v: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) of shape class ``cls`` with extent ``s`` in local coords.

    Polygons use max-of-half-planes: exact inside test, 1-Lipschitz, so ``0.5 - d`` is a fine
    anti-aliasing coverage.
    """
    name = CLASS_NAMES[cls]
    if name == "disc":
        return np.sqrt(u * u + v * v) - _DISC_R * s
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - _SQUARE_H * s
    if name == "triangle":
        r = _TRI_R * s
        d = None
        for k in range(3):  # edge normals 120 degrees apart; the inradius is r / 2
            a = np.pi / 2 + k * 2 * np.pi / 3
            e = u * np.cos(a) + v * np.sin(a) - r / 2
            d = e if d is None else np.maximum(d, e)
        return d
    if name == "ring":
        ro = _RING_R * s
        ri = ro * rng.uniform(*_RING_INNER)
        return np.abs(np.sqrt(u * u + v * v) - (ro + ri) / 2) - (ro - ri) / 2
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        length, width = _CROSS_L * s, _CROSS_W * s
        return np.minimum(np.maximum(au - length, av - width), np.maximum(au - width, av - length))
    raise ValueError(f"not a shape class: {cls}")


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel centre (read-only, shared by all samples of one size)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def render_sample(rng: np.random.Generator, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its label (uint8 HxW class ids into CLASS_NAMES).

    Deterministic given the generator's state. Later shapes are drawn on top; a pixel's label
    is the top shape whose signed distance is negative at the pixel centre.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    scale = size / 64.0
    xs, ys = _pixel_centres(size)
    img = _background(rng, xs, ys, size, scale)
    label = np.zeros((size, size), np.uint8)
    owner = np.full((size, size), -1, np.int16)  # which drawn shape is on top (overlap limits)
    n_shapes = int(rng.integers(_SHAPES_PER_IMAGE[0], _SHAPES_PER_IMAGE[1] + 1))
    # Distinct classes within an image: each class is in n/5 of the images (60% on average), so
    # even the first 10 train images show every class several times; independent draws per
    # shape left some seeds with a class in just 1 of those 10.
    classes = rng.choice(np.arange(1, NUM_CLASSES), size=n_shapes, replace=False)
    drawn = 0
    for cls in classes.tolist():
        s = rng.uniform(*_SHAPE_SIZE) * scale
        margin = _PLACE_R * s
        visible = np.bincount(owner.ravel() + 1, minlength=drawn + 1)[1:]
        for _ in range(_PLACE_TRIES):
            cx, cy = rng.uniform(margin, size - margin, size=2)
            # Work in the shape's bounding box only (about 4x fewer pixels than the image);
            # the +1 keeps the whole anti-aliased rim, which ends 0.5-0.7 px past the shape.
            box = (slice(max(0, int(cy - margin - 1)), min(size, int(cy + margin + 2))),
                   slice(max(0, int(cx - margin - 1)), min(size, int(cx + margin + 2))))
            u, v = _rotated(xs[box] - cx, ys[box] - cy, rng.uniform(0, 2 * np.pi))
            d = _shape_sdf(cls, u, v, s, rng)
            inside = d < 0
            if drawn == 0:
                break
            covered = np.bincount(owner[box][inside] + 1, minlength=drawn + 1)[1:]
            if (covered.sum() <= _MAX_OVERLAP * inside.sum()
                    and np.all(covered <= _MAX_OVERLAP * visible)):
                break
        else:
            if drawn >= _SHAPES_PER_IMAGE[0]:
                continue  # no room: fewer shapes rather than a hidden one
            # Below the minimum count the last try is kept, overlapping more than usual.
        alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]
        region = img[box]
        under = region[inside].mean(axis=0)
        for _ in range(_COLOUR_TRIES):
            fill = _fill(rng, xs[box], ys[box], scale)
            if np.linalg.norm(fill[inside].mean(axis=0) - under) >= _MIN_CONTRAST:
                break
        img[box] = region + alpha * (fill - region)
        label[box][inside] = cls
        owner[box][inside] = drawn
        drawn += 1
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def colorize(label: np.ndarray) -> np.ndarray:
    """A label map as an RGB image (uint8 HxWx3) in PALETTE colours."""
    return np.asarray(PALETTE, np.uint8)[label]


# --- writing ------------------------------------------------------------------------------------

def _params(train: int, test: int, unlabeled: int, size: int, seed: int) -> dict[str, Any]:
    return {"format": _FORMAT, "version": GENERATOR_VERSION, "train": int(train), "test": int(test),
            "unlabeled": int(unlabeled), "size": int(size), "seed": int(seed)}


class DatasetExistsError(DataError, FileExistsError):
    """The output folder holds something other than this dataset. A DataError, so the tools
    report it as one line, and a FileExistsError, which is what it is."""


def _read_manifest(out_dir: str) -> dict[str, Any] | None:
    path = os.path.join(out_dir, "dataset.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_existing(out_dir: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete dataset at out_dir with these params; None if out_dir is free.

    Raises DatasetExistsError if out_dir holds something else (other parameters, or not ours).
    """
    if not os.path.exists(out_dir):
        return None
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        return None  # an empty folder (e.g. made by a caller) is free to be replaced
    manifest = _read_manifest(out_dir)
    if manifest is None or manifest.get("params", {}).get("format") != _FORMAT:
        raise DatasetExistsError(
            f"{out_dir} exists but is not a procedural dataset (no valid dataset.json); "
            f"choose another --out or remove it")
    if manifest["params"] != params:
        diff = {k: (manifest["params"].get(k), v) for k, v in params.items()
                if manifest["params"].get(k) != v}
        raise DatasetExistsError(
            f"{out_dir} holds a procedural dataset with other parameters "
            f"(recorded vs requested: {diff}); remove it or choose another --out")
    return manifest


def _write_split(tmp: str, split: str, n: int, width: int, size: int, seed: int) -> np.ndarray:
    """Render the ``n`` images (and labels) of ``split`` into its folder under ``tmp``; the pixel
    count of each class over the split's labels (zeros for the unlabelled split)."""
    folder = os.path.join(tmp, "unlabeled" if split == "unlabeled" else os.path.join("real", split))
    os.makedirs(folder)
    pixels = np.zeros(NUM_CLASSES, np.int64)
    for i in range(n):
        img, label = render_sample(sample_rng(seed, split, i), size)
        stem = os.path.join(folder, f"{i:0{width}d}")
        # Plain writes: the whole folder is renamed into place at the end. PIL writes
        # no timestamp into PNGs, so the same array gives byte-identical files.
        Image.fromarray(img).save(stem + ".png")
        if split != "unlabeled":
            np.save(stem + ".npy", label, allow_pickle=False)
            pixels += np.bincount(label.ravel(), minlength=NUM_CLASSES)
    return pixels


def _write_classes(tmp: str, size: int) -> None:
    write_json_atomic(os.path.join(tmp, "classes.json"), {
        "name": "procedural_shapes",
        "resolution": int(size),
        "number_class": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "palette": [list(c) for c in PALETTE],
        "palette_rgb": [list(c) for c in PALETTE],  # the key celebamask64's classes.json uses
        "ignore_label": None,  # every pixel has a class
    })


def write_dataset(out_dir: str, train: int = DEFAULT_TRAIN, test: int = DEFAULT_TEST,
                  unlabeled: int = DEFAULT_UNLABELED, size: int = DEFAULT_SIZE,
                  seed: int = DEFAULT_SEED, progress: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Write the dataset to ``out_dir`` (layout in the module docstring) unless it is there already.

    Built in a temp folder beside ``out_dir`` and renamed into place at the end, so an
    interrupted run leaves no half dataset. If ``out_dir`` already holds a dataset with the same
    parameters it is reused as is; other parameters raise DatasetExistsError. Returns the
    dataset.json content plus "path" and "created" (False when reused).
    """
    for name, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    out_dir = os.path.abspath(out_dir)
    params = _params(train, test, unlabeled, size, seed)
    existing = _check_existing(out_dir, params)
    if existing is not None:
        return {**existing, "path": out_dir, "created": False}

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Same parent => same filesystem, which makes the final rename atomic.
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(out_dir) + ".tmp-")
    try:
        counts: dict[str, list[int]] = {}
        # Zero-padded stems: sorted file order (what ImageLabelDataset uses) = generation order.
        width = max(5, len(str(max(train, test, unlabeled, 1) - 1)))
        for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
            pixels = _write_split(tmp, split, n, width, size, seed)
            if split != "unlabeled":
                counts[split] = pixels.tolist()
            if progress:
                progress(f"{split}: {n} images")
        _write_classes(tmp, size)
        manifest = {"params": params, "class_pixel_counts": counts}
        # Written last: a folder with dataset.json is complete.
        write_json_atomic(os.path.join(tmp, "dataset.json"), manifest)
        try:
            os.replace(tmp, out_dir)  # also replaces an empty out_dir
        except OSError:
            # Someone else finished the same dataset first: reuse theirs if it matches.
            existing = _check_existing(out_dir, params)
            if existing is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return {**existing, "path": out_dir, "created": False}
    except BaseException:
        # Also on KeyboardInterrupt: no half dataset and no stray temp folder.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**manifest, "path": out_dir, "created": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpmseg.data.procedural",
                                description="Write the procedural labelled shapes dataset.")
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="labelled train images")
    p.add_argument("--test", type=int, default=DEFAULT_TEST, help="labelled test images")
    p.add_argument("--unlabeled", type=int, default=DEFAULT_UNLABELED, help="unlabelled images (DDPM training)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    a = p.parse_args(argv)
    try:
        info = write_dataset(a.out, a.train, a.test, a.unlabeled, a.size, a.seed,
                             progress=lambda m: print(m, file=sys.stderr))
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'wrote' if info['created'] else 'already present'}: {info['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
