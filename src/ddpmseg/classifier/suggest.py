"""Which unlabelled images to label next: rank a pool by what a trained ensemble does not know.

Strategies (``STRATEGIES``): the original's image uncertainty (mean of the top
``uncertainty_top_fraction`` of the pixels' mutual information between members), member disagreement
(the same mean over the share of member votes that differ from the majority), uncertainty spread out
by feature diversity ("diverse", ``spread_out``), and a seeded random order as the control. Every pool
image is segmented with the run's full inference (``Segmenter``), so the CSV lists both scores
whatever the strategy; the contact sheet shows image | prediction | uncertainty of the suggested
images.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..common.atomic import write_text_atomic
from ..common.distributed import World, all_gather_objects, gather_to_main
from ..data.folders import load_rgb
from ..common.errors import DataError
from ..common.paths import refuse_file
from .predict import image_uncertainty
from ..common.report import annotate, class_legend, colorize_mask, panel_spans, side_by_side, write_png_atomic
from ..common.seeding import stream_generator
from .segment_folder import list_inputs, uncertainty_image
from .segmenter import Segmenter

STRATEGIES = ("uncertainty", "disagreement", "diverse", "random")
# Measured (docs/selection.md, "Which image to label next"): on celebamask64, from 8 random labelled
# images, 3 rounds of +4, 5 seeds, no strategy beat a random choice; random ended highest, by less
# than the seed spread. So the default labels a random sample, and the scores are a choice to test.
DEFAULT_STRATEGY = "random"
CSV_NAME, SHEET_NAME = "suggestions.csv", "suggestions.png"
# Contact-sheet panels are this tall (64 px faces shown 1.5x); at most SHEET_ROWS images are shown.
SHEET_TILE_PX, SHEET_ROWS = 96, 32
_LABEL_PX = 120  # the rank / score / stem column of the sheet


@dataclass
class PoolImage:
    """One scored pool image and its contact-sheet row."""
    stem: str
    path: str
    uncertainty: float  # the original's image uncertainty (top-fraction mean of mutual information)
    disagreement: float  # the same top-fraction mean of the per-pixel vote disagreement
    descriptor: np.ndarray  # unit feature vector of the image (``feature_descriptor``)
    panels: list[np.ndarray]  # image | prediction | uncertainty, SHEET_TILE_PX tall


def rank(images: list[PoolImage], strategy: str, seed: int) -> list[PoolImage]:
    """The pool in suggestion order: highest score first (ties by stem), or the seeded random order."""
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r}; choose from {list(STRATEGIES)}")
    by_stem = sorted(images, key=lambda im: im.stem)
    if strategy == "random":
        order = torch.randperm(len(by_stem), generator=stream_generator("suggest_order", seed)).tolist()
        return [by_stem[i] for i in order]
    if strategy == "diverse":
        return spread_out(by_stem)
    return sorted(by_stem, key=lambda im: -getattr(im, strategy))  # sorted() is stable: ties keep stem order


def spread_out(images: list[PoolImage]) -> list[PoolImage]:
    """Uncertainty spread out by feature diversity: the most uncertain image first, then each time the
    one with the largest (uncertainty / the pool's largest) x (cosine distance of its descriptor to the
    nearest image already chosen), so k suggestions are not spent on near-copies of one hard image.
    A pool with no uncertainty at all is ordered by distance alone. Ties keep the given order."""
    top = max(im.uncertainty for im in images)
    weight = torch.tensor([im.uncertainty / top if top > 0 else 1.0 for im in images], dtype=torch.float64)
    features = torch.from_numpy(np.stack([im.descriptor for im in images])).double()
    nearest = torch.full((len(images),), math.inf, dtype=torch.float64)  # distance to the nearest chosen
    left, order = torch.ones(len(images), dtype=torch.bool), []
    for _ in range(len(images)):
        gain = torch.where(left, weight * nearest.clamp(max=2.0), -1.0)  # cosine distances are <= 2
        pick = int(gain.argmax())  # argmax returns the first of equal gains
        order.append(pick)
        left[pick] = False
        nearest = torch.minimum(nearest, (1 - features @ features[pick]).clamp(min=0))
    return [images[i] for i in order]


def _tile(rgb: np.ndarray, resample: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * SHEET_TILE_PX / h)), SHEET_TILE_PX)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, resample))


def score_pool(segmenter: Segmenter, inputs: dict[str, str], warn: Callable[[str], None] = tqdm.write,
               quiet: bool = False) -> list[PoolImage]:
    """Segment every pool image and score it; unreadable files are warned about and left out.
    ``quiet``: no progress bar (a torchrun rank other than the first)."""
    top = segmenter.cfg["uncertainty_top_fraction"]
    scored = []
    for stem, path in tqdm(inputs.items(), desc="scoring pool", unit="img", dynamic_ncols=True, disable=quiet):
        try:
            image = load_rgb(path)
        except Exception as e:  # PIL raises many types for unreadable files
            warn(f"warning: {path}: cannot be read as an image ({type(e).__name__}: {e}); skipped")
            continue
        seg = segmenter.predict(image, probabilities=False)
        panels = [_tile(np.asarray(image), Image.BILINEAR),
                  _tile(colorize_mask(seg.mask, segmenter.palette), Image.NEAREST),
                  _tile(uncertainty_image(seg.uncertainty), Image.BILINEAR)]
        scored.append(PoolImage(stem, path, seg.score, image_uncertainty(torch.from_numpy(seg.disagreement), top),
                                seg.descriptor, panels))
    return scored


def contact_sheet(chosen: list[PoolImage], palette, class_names, strategy: str) -> np.ndarray:
    """One row per suggested image: rank, scores and stem, then image | prediction | uncertainty."""
    from PIL import ImageDraw, ImageFont

    rows = [side_by_side(im.panels) for im in chosen[:SHEET_ROWS]]
    width = max(r.shape[1] for r in rows)
    sheet = np.full((len(rows) * (SHEET_TILE_PX + 2), _LABEL_PX + width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        sheet[r * (SHEET_TILE_PX + 2):r * (SHEET_TILE_PX + 2) + SHEET_TILE_PX, _LABEL_PX:_LABEL_PX + row.shape[1]] = row
    img = Image.fromarray(sheet)
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=10)
    for r, im in enumerate(chosen[:SHEET_ROWS]):
        y = r * (SHEET_TILE_PX + 2)
        text = f"#{r + 1} {im.stem[:16]}\nuncertainty {im.uncertainty:.4f}\ndisagreement {im.disagreement:.4f}"
        draw.multiline_text((4, y + 4), text, fill=(0, 0, 0), font=font)
    widths = [p.shape[1] for p in chosen[0].panels]
    spans = [(x0 + _LABEL_PX, x1 + _LABEL_PX) for x0, x1 in panel_spans(widths)]
    titles = list(zip([(0, _LABEL_PX)] + spans, [f"by {strategy}", "image", "prediction", "uncertainty"]))
    masks = [np.asarray(im.panels[1]).reshape(-1, 3) for im in chosen[:SHEET_ROWS]]
    present = _classes_shown(masks, palette)
    return annotate(np.asarray(img), titles, class_legend([np.array(present)], palette, class_names))


def _classes_shown(coloured: list[np.ndarray], palette) -> list[int]:
    """Class ids whose colour appears in the (nearest-resized, so exact) prediction tiles."""
    colours = {tuple(c) for m in coloured for c in np.unique(m, axis=0).tolist()}
    return [k for k, c in enumerate(palette) if tuple(c) in colours]


def suggest(segmenter: Segmenter, inputs: dict[str, str], k: int, strategy: str, out_dir: str, world: World,
            seed: int = 0, warn: Callable[[str], None] = tqdm.write) -> list[PoolImage]:
    """Rank the pool ``inputs`` (``check_pool``) and write the top ``k`` to ``out_dir``: suggestions.csv and
    the contact sheet. Under torchrun each rank reads and scores its share of the pool (``World.shard``),
    and rank 0 ranks them all and writes the files; the other ranks return []."""
    mine = score_pool(segmenter, dict(world.shard(list(inputs.items()))), warn, quiet=not world.is_main)
    readable = sum(all_gather_objects(len(mine)))  # every rank raises, or none
    if readable < k:
        raise DataError(f"only {readable} of the {len(inputs)} pool images could be read, fewer than --k {k}")
    parts = gather_to_main(mine)
    if parts is None:
        return []
    chosen = rank([im for part in parts for im in part], strategy, seed)[:k]  # rank() orders by stem first
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "stem", "file", "uncertainty", "disagreement"])
    writer.writerows([r + 1, im.stem, im.path, f"{im.uncertainty:.6f}", f"{im.disagreement:.6f}"]
                     for r, im in enumerate(chosen))
    write_text_atomic(os.path.join(out_dir, CSV_NAME), buf.getvalue())
    write_png_atomic(os.path.join(out_dir, SHEET_NAME),
                     contact_sheet(chosen, segmenter.palette, segmenter.class_names, strategy))
    return chosen


def check_pool(pool: str, k: int, out_dir: str | None = None) -> dict[str, str]:
    """The pool's images by stem; an empty pool or a ``k`` it cannot fill is an input error."""
    refuse_file(pool, "--pool", DataError)
    if not os.path.isdir(pool):
        raise DataError(f"--pool {pool}: no such folder (give the folder of unlabelled images)")
    inputs = list_inputs([pool], out_dir)
    if not 1 <= k <= len(inputs):
        raise DataError(f"--k {k} must be between 1 and the {len(inputs)} images in {pool}")
    return inputs
