"""selection_heatmap.png: cross-validated mIoU of every (step, block) cell, the chosen cells outlined."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Cell size: room for "100.0" in PIL's bundled font at _FONT_PX.
_CELL_PX, _FONT_PX = 40, 10
_MARGIN_PX = 46  # left margin for the step labels, top margin for the title and block labels
_OUTLINE_PX = 3  # a chosen cell's frame, red: visible on both ends of the ramp
_FRAME = (230, 20, 20)
# Low -> high mIoU: dark blue, teal, yellow (viridis-like: brightness grows with the score, readable in grey).
_RAMP = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)
_UNSCORED = (200, 200, 200)  # a cell the budget left unscored


def _colour(t: float) -> tuple[int, int, int]:
    x = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    lo = min(int(x), len(_RAMP) - 2)
    rgb = _RAMP[lo] * (1 - (x - lo)) + _RAMP[lo + 1] * (x - lo)
    return tuple(int(round(v)) for v in rgb)


def heatmap(mious: dict[tuple[int | None, int], float], steps: Sequence[int | None], blocks: Sequence[int],
            chosen: set[tuple[int | None, int]]) -> np.ndarray:
    """RGB uint8 image: rows are steps (one row, step None, for a backbone without timesteps), columns
    blocks, each cell coloured by its mIoU (0..1, written in %) between the lowest and highest scored
    cell; cells in ``chosen`` are framed in red."""
    font = ImageFont.load_default(size=_FONT_PX)
    width = _MARGIN_PX + _CELL_PX * len(blocks) + 4
    height = _MARGIN_PX + _CELL_PX * len(steps) + 4
    img = Image.new("RGB", (max(width, 300), height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), "CV mIoU (%) per step (row) x block (column); chosen: red frame", fill=(0, 0, 0), font=font)
    values = list(mious.values())
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for j, b in enumerate(blocks):
        draw.text((_MARGIN_PX + (j + 0.5) * _CELL_PX, _MARGIN_PX - 8), f"b{b}", fill=(0, 0, 0), font=font, anchor="mm")
    for i, t in enumerate(steps):
        y0 = _MARGIN_PX + i * _CELL_PX
        draw.text((_MARGIN_PX - 4, y0 + _CELL_PX / 2), f"t={t}" if t is not None else "no t", fill=(0, 0, 0), font=font, anchor="rm")
        for j, b in enumerate(blocks):
            x0 = _MARGIN_PX + j * _CELL_PX
            box = [x0, y0, x0 + _CELL_PX - 1, y0 + _CELL_PX - 1]
            if (t, b) in mious:
                colour = _colour((mious[t, b] - lo) / (hi - lo) if hi > lo else 1.0)
                text = f"{100 * mious[t, b]:.1f}"
            else:
                colour, text = _UNSCORED, "-"
            draw.rectangle(box, fill=colour)
            light = sum(colour) > 3 * 140
            draw.text((x0 + _CELL_PX / 2, y0 + _CELL_PX / 2), text, fill=(0, 0, 0) if light else (255, 255, 255),
                      font=font, anchor="mm")
            if (t, b) in chosen:
                draw.rectangle(box, outline=_FRAME, width=_OUTLINE_PX)
    return np.asarray(img)
