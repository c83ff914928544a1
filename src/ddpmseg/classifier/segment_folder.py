"""ddpmseg segment's job: a Segmenter over many image files, with resumable, atomically written outputs.

Per image ``<stem>``: ``<stem>.png`` (class ids, mode L; I;16 above 256 classes), ``<stem>_overlay.png``
(the image with the coloured mask at 50 %), ``<stem>_uncertainty.png`` (ddpmseg.common.report.UNCERTAINTY_COLOURS); one
``segments.csv`` row (image uncertainty, pixel fraction of each class). The CSV is rewritten after
every image, so an image counts as finished once it has a row: a rerun skips it. At the end,
``report.html`` shows them all, most uncertain first (ddpmseg.common.gallery).
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..common.atomic import atomic_write, write_text_atomic
from ..common.distributed import World, all_gather_objects, barrier
from ..data.folders import IMAGE_EXTENSIONS, list_image_files, load_rgb
from ..common.errors import DataError
from ..common.gallery import write_gallery
from ..common.html_page import REPORT_FILE
from ..common.report import colorize_mask, uncertainty_image, write_png_atomic
from .segmenter import Segmenter

CSV_NAME = "segments.csv"
# The coloured mask covers the overlay's image at this opacity.
OVERLAY_ALPHA = 0.5


def list_inputs(sources: list[str], out_dir: str | None = None) -> dict[str, str]:
    """Output stem -> image path for folders (searched recursively; stem = path below the folder)
    and files given by name (stem = file name without extension). Files under ``out_dir`` are not
    inputs: an output folder inside an input folder must not feed a rerun its own PNGs."""
    found: dict[str, str] = {}
    out = os.path.join(os.path.realpath(out_dir), "") if out_dir else None
    for src in sources:
        if os.path.isdir(src):
            paths = sorted(p for p in list_image_files(src) if not (out and os.path.realpath(p).startswith(out)))
            if not paths:
                raise DataError(f"no images in {src}: files count as images when their name ends in "
                                f".{', .'.join(IMAGE_EXTENSIONS)} (any case), searched recursively")
            pairs = [(os.path.splitext(os.path.relpath(p, src))[0], p) for p in paths]
        elif os.path.isfile(src):
            pairs = [(os.path.splitext(os.path.basename(src))[0], src)]
        else:
            raise DataError(f"--images {src}: no such file or folder")
        for stem, path in pairs:
            if stem in found:
                raise DataError(f"{found[stem]} and {path} would both be written as {stem}.png; "
                                f"rename one, or segment them into different --out folders")
            found[stem] = path
    return found


def _read_rows(path: str, columns: list[str]) -> dict[str, dict[str, str]]:
    """The rows of an earlier run into the same folder; its columns must be these (same classes)."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["stem"]: row for row in reader} if reader.fieldnames == columns else None
    if rows is None:
        raise DataError(f"{path} was written for other classes ({reader.fieldnames}), so its images cannot count "
                        f"as done; segment into another --out folder")
    return rows


def _write_rows(path: str, rows: dict[str, dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[stem] for stem in sorted(rows))
    write_text_atomic(path, buf.getvalue())


def write_mask_png(path: str, mask: np.ndarray, num_classes: int) -> None:
    """Class ids as a single-channel PNG: mode L (8-bit) up to 256 classes, else I;16."""
    img = Image.fromarray(mask.astype(np.uint8)) if num_classes <= 256 else Image.fromarray(
        mask.astype(np.uint16), "I;16")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _segment_one(segmenter: Segmenter, stem: str, path: str, out_dir: str, columns: list[str],
                 warn: Callable[[str], None]) -> dict | None:
    """Write ``stem``'s three PNGs; returns its CSV row, or None when the file cannot be read."""
    try:
        image = load_rgb(path)
    except Exception as e:  # PIL raises many types for unreadable files
        warn(f"warning: {path}: cannot be read as an image ({type(e).__name__}: {e}); skipped")
        return None
    names, k = segmenter.class_names, len(segmenter.class_names)
    seg = segmenter.predict(image, probabilities=False)
    base = os.path.join(out_dir, stem)
    write_mask_png(base + ".png", seg.mask, k)
    coloured = colorize_mask(seg.mask, segmenter.palette).astype(np.float64)
    overlay = (1 - OVERLAY_ALPHA) * np.asarray(image, dtype=np.float64) + OVERLAY_ALPHA * coloured
    write_png_atomic(base + "_overlay.png", np.rint(overlay).astype(np.uint8))
    write_png_atomic(base + "_uncertainty.png", uncertainty_image(seg.uncertainty))
    fractions = np.bincount(seg.mask.ravel(), minlength=k) / seg.mask.size
    return {"stem": stem, "file": path, "width": image.width, "height": image.height,
            "uncertainty": f"{seg.score:.6f}", **{f"fraction_{n}": f"{v:.6f}" for n, v in zip(names, fractions)}}


def segment_images(segmenter: Segmenter, sources: list[str], out_dir: str, world: World,
                   warn: Callable[[str], None] = tqdm.write) -> dict[str, int]:
    """Segment every image of ``sources`` into ``out_dir``; returns counts of segmented, skipped
    (finished before) and unreadable images. Raises DataError when nothing could be segmented.

    Under torchrun each rank reads and segments its share of the unfinished images (``World.shard``)
    and writes their PNGs; they go in rounds of one image per rank, after each of which rank 0
    gathers the rows and rewrites the CSV: an image is finished once its row is there, as in one process.
    """
    inputs = list_inputs(sources, out_dir)
    columns = ["stem", "file", "width", "height", "uncertainty"] + [f"fraction_{n}" for n in segmenter.class_names]
    csv_path = os.path.join(out_dir, CSV_NAME)
    rows = _read_rows(csv_path, columns)
    barrier()  # every rank knows what is finished before rank 0 rewrites the CSV
    todo = [(s, p) for s, p in inputs.items() if s not in rows]
    mine = world.shard(todo)
    counts = {"segmented": 0, "skipped": len(inputs) - len(todo), "unreadable": 0}
    bar = tqdm(total=len(todo), desc="segmenting", unit="img", dynamic_ncols=True, disable=not world.is_main)
    for i in range(math.ceil(len(todo) / world.size)):  # every rank joins every round, with an image or not
        row = _segment_one(segmenter, *mine[i], out_dir, columns, warn) if i < len(mine) else None
        done = [r for r in all_gather_objects((i < len(mine), row)) if r[0]]
        new = {r["stem"]: r for _, r in done if r is not None}
        counts["segmented"] += len(new)
        counts["unreadable"] += len(done) - len(new)
        bar.update(len(done))
        rows.update(new)
        if new and world.is_main:
            _write_rows(csv_path, rows, columns)  # last: the rows mark the images finished
    bar.close()
    if not counts["segmented"] and not counts["skipped"]:
        raise DataError(f"none of the {len(inputs)} images could be read; nothing was segmented")
    # A rerun that adds nothing rewrites nothing.
    if world.is_main and (counts["segmented"] or not os.path.isfile(os.path.join(out_dir, REPORT_FILE))):
        write_gallery(out_dir)
    return counts
