"""Writing results: predicted masks and colour visualisations (all written atomically)."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write

# White separator between the panels of a comparison image.
_GAP_PX = 2
# Text of column titles and legends: PIL's bundled font at 10 px fits "ground truth" over a 64 px panel.
_FONT_PX = 10
_LINE_PX = _FONT_PX + 4
_SWATCH_PX = 9
# Space between legend entries on a row.
_ENTRY_GAP_PX = 8
# Colours for pixels whose id is no class (the ignore label), tried in order until one is no class colour:
# Pascal VOC's void colour first, then colours no standard palette gives a class.
IGNORE_COLOURS = ((224, 224, 192), (255, 0, 255), (0, 255, 255), (255, 255, 0))
# Uncertainty colour map, 0 -> UNCERTAINTY_TOP nats: black, purple, orange, pale yellow (a magma-like
# ramp: brightness grows with uncertainty, readable in grey print). ln 2 is the mutual information
# when confident members split evenly between two classes, so yellow means "the ensemble disagrees".
UNCERTAINTY_COLOURS = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], dtype=np.float64)
UNCERTAINTY_TOP = float(np.log(2))


def write_png_atomic(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 [H,W,3] array as a PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(np.ascontiguousarray(rgb)).save(f, format="PNG"))


def _write_npy_atomic(path: str, array: np.ndarray) -> None:
    # np.save on a file object does not append ".npy", so the final name is exactly ``path``.
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def ignore_colour(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The colour of ignored pixels: the first of IGNORE_COLOURS that no class of ``palette`` has."""
    taken = {tuple(int(v) for v in c) for c in palette}
    return next((c for c in IGNORE_COLOURS if c not in taken), IGNORE_COLOURS[-1])


def colorize_mask(mask: np.ndarray | torch.Tensor, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Map class ids [H,W] to RGB uint8 [H,W,3]; ids outside the palette (the ignore label, e.g. 255)
    get ``ignore_colour(palette)``, so they are not mistaken for a class."""
    m = _to_numpy(mask).astype(np.int64)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.empty(m.shape + (3,), dtype=np.uint8)
    out[...] = ignore_colour(palette)
    inside = (m >= 0) & (m < len(colours))
    out[inside] = colours[m[inside]]
    return out


def uncertainty_image(uncertainty: np.ndarray | torch.Tensor) -> np.ndarray:
    """RGB uint8 [H, W, 3] of per-pixel uncertainty (nats) on the UNCERTAINTY_COLOURS ramp."""
    t = np.clip(_to_numpy(uncertainty).astype(np.float64) / UNCERTAINTY_TOP, 0, 1) * (len(UNCERTAINTY_COLOURS) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(UNCERTAINTY_COLOURS) - 2)
    frac = (t - low)[..., None]
    rgb = UNCERTAINTY_COLOURS[low] * (1 - frac) + UNCERTAINTY_COLOURS[low + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def to_uint8_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N,3,H,W] images in [-1,1] as uint8 [N,H,W,3]: (x+1)*127.5, clamped, truncated like the
    original (and guided-diffusion's image_sample)."""
    x = torch.as_tensor(images).detach().cpu().float()
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """One [3,H,W] image in [-1,1] as uint8 [H,W,3] (see to_uint8_images)."""
    return to_uint8_images(torch.as_tensor(image)[None])[0]


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Join equal-height RGB panels left to right with a white gap of _GAP_PX pixels."""
    height = panels[0].shape[0]
    gap = np.full((height, _GAP_PX, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if i:
            parts.append(gap)
        parts.append(panel)
    return np.concatenate(parts, axis=1)


def panel_spans(widths: Sequence[int], gap: int = _GAP_PX) -> list[tuple[int, int]]:
    """(first x, end x) of panels of ``widths`` joined left to right with ``gap`` between them."""
    spans, x = [], 0
    for w in widths:
        spans.append((x, x + w))
        x += w + gap
    return spans


def class_legend(masks: Sequence[np.ndarray | torch.Tensor], palette: Sequence[Sequence[int]],
                 class_names: Sequence[str]) -> list[tuple[str, Sequence[int]]]:
    """(name, colour) of every class that occurs in ``masks``, in class-id order, then "ignored (ids)" in
    ``ignore_colour`` when ids outside the classes occur."""
    present = set()
    for m in masks:
        present.update(int(c) for c in np.unique(_to_numpy(m)))
    legend = [(class_names[c], palette[c]) for c in sorted(present) if 0 <= c < len(class_names)]
    ignored = sorted(c for c in present if not 0 <= c < len(class_names))
    if ignored:
        legend.append((f"ignored ({', '.join(map(str, ignored))})", ignore_colour(palette)))
    return legend


def annotate(figure: np.ndarray, titles: Sequence[tuple[tuple[int, int], str]] = (),
             legend: Sequence[tuple[str, Sequence[int]]] = ()) -> np.ndarray:
    """``figure`` (RGB uint8) with column ``titles`` ((x0, x1), text) centred above it and a legend of
    ``(name, colour)`` swatches in rows below it, all drawn with PIL on white."""
    font = ImageFont.load_default(size=_FONT_PX)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(name, tuple(int(v) for v in colour), _SWATCH_PX + 3 + int(measure.textlength(name, font=font)))
               for name, colour in legend]
    height, width = figure.shape[:2]
    width = max([width] + [w for _, _, w in entries])
    rows: list[list[tuple[int, tuple]]] = []
    x = width  # forces a first row
    for entry in entries:
        if x + entry[2] > width:
            rows.append([])
            x = 0
        rows[-1].append((x, entry))
        x += entry[2] + _ENTRY_GAP_PX
    top = _LINE_PX if titles else 0
    canvas = Image.new("RGB", (width, top + height + (len(rows) * _LINE_PX + 2 if rows else 0)), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(figure)), (0, top))
    draw = ImageDraw.Draw(canvas)
    for (x0, x1), text in titles:
        draw.text(((x0 + x1) / 2, top / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    for r, row in enumerate(rows):
        y = top + height + 2 + r * _LINE_PX
        for x, (name, colour, _) in row:
            # A grey outline keeps a white or very light class colour visible on the white page.
            draw.rectangle([x, y + 2, x + _SWATCH_PX - 1, y + 1 + _SWATCH_PX], fill=colour, outline=(128, 128, 128))
            draw.text((x + _SWATCH_PX + 3, y + _LINE_PX / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def save_prediction(exp_dir: str, stem: str, pred: np.ndarray | torch.Tensor,
                    image: np.ndarray | torch.Tensor | None = None,
                    gt: np.ndarray | torch.Tensor | None = None, *,
                    palette: Sequence[Sequence[int]], before: np.ndarray | torch.Tensor | None = None,
                    class_names: Sequence[str] | None = None,
                    uncertainty: np.ndarray | torch.Tensor | None = None) -> None:
    """Write ``predictions/<stem>.npy``, ``visualizations/<stem>.png`` and, given the
    image ([3,H,W] in [-1,1]) and ground truth, ``visualizations/<stem>_compare.png``
    (image | ground truth | prediction, or image | ground truth | ``before`` | prediction when a
    refined prediction is shown next to the one it started from); given ``class_names``, the
    comparison has column titles and a legend of the classes it shows. Given the per-pixel
    ``uncertainty`` [H,W] (nats), ``visualizations/<stem>_uncertainty.png`` shows it (uncertainty_image)."""
    mask = _to_numpy(pred).squeeze()
    if mask.ndim != 2:
        raise ValueError(f"prediction for {stem} must squeeze to [H,W], got shape {mask.shape}")
    # The smallest integer type that holds every class id keeps 650 test masks small.
    dtype = np.uint8 if len(palette) <= 256 else np.int16
    _write_npy_atomic(os.path.join(exp_dir, "predictions", stem + ".npy"), mask.astype(dtype))
    coloured = colorize_mask(mask, palette)
    vis_dir = os.path.join(exp_dir, "visualizations")
    write_png_atomic(os.path.join(vis_dir, stem + ".png"), coloured)
    if uncertainty is not None:
        write_png_atomic(os.path.join(vis_dir, stem + "_uncertainty.png"), uncertainty_image(uncertainty))
    if image is not None and gt is not None:
        masks = [_to_numpy(gt).squeeze(), mask] if before is None else [_to_numpy(gt).squeeze(),
                                                                           _to_numpy(before).squeeze(), mask]
        panels = [to_uint8_image(image)] + [colorize_mask(m, palette) for m in masks]
        if len({p.shape for p in panels}) != 1:
            raise ValueError(f"{stem}: image, ground truth and prediction sizes differ: "
                             f"{[p.shape[:2] for p in panels]}")
        figure = side_by_side(panels)
        if class_names is not None:
            titles = ["image", "ground truth", "prediction"] if before is None else [
                "image", "ground truth", "ensemble", "refined"]
            figure = annotate(figure, list(zip(panel_spans([p.shape[1] for p in panels]), titles)),
                              class_legend(masks, palette, class_names))
        write_png_atomic(os.path.join(vis_dir, stem + "_compare.png"), figure)


def image_grid(images: np.ndarray, ncol: int | None = None, gap: int = _GAP_PX) -> np.ndarray:
    """Tile uint8 [N,H,W,3] images into one RGB grid (white gaps), ``ncol`` columns
    (default: as square as possible)."""
    n, h, w, _ = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + gap) - gap, ncol * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    return grid


def synthetic_grid(images: np.ndarray, masks: np.ndarray, palette: Sequence[Sequence[int]],
                   pairs: int = 16, class_names: Sequence[str] | None = None) -> np.ndarray:
    """The first ``pairs`` synthetic samples as sample | coloured mask pairs, four per row; given
    ``class_names``, with column titles and a legend of the classes shown."""
    tiles = [side_by_side([img, colorize_mask(m, palette)]) for img, m in zip(images[:pairs], masks[:pairs])]
    ncol = 4
    grid = image_grid(np.stack(tiles), ncol=ncol)
    if class_names is None:
        return grid
    w = images.shape[2]
    spans = panel_spans([w] * 2 * min(ncol, len(tiles)))
    # Tiles of two panels sit _GAP_PX apart, like the panels inside a tile: one span rule serves both.
    titles = [(span, "sample" if i % 2 == 0 else "labels") for i, span in enumerate(spans)]
    return annotate(grid, titles, class_legend(list(masks[:pairs]), palette, class_names))
