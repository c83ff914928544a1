"""Writing results: predicted masks and colour visualisations (all written atomically)."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write

# White separator between the panels of a comparison image.
_GAP_PX = 2


def write_png_atomic(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 [H,W,3] array as a PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(np.ascontiguousarray(rgb)).save(f, format="PNG"))


def _write_npy_atomic(path: str, array: np.ndarray) -> None:
    # np.save on a file object does not append ".npy", so the final name is exactly ``path``.
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize_mask(mask: np.ndarray | torch.Tensor, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Map class ids [H,W] to RGB uint8 [H,W,3]; ids outside the palette (e.g. 255) are black."""
    m = _to_numpy(mask).astype(np.int64)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.zeros(m.shape + (3,), dtype=np.uint8)
    inside = (m >= 0) & (m < len(colours))
    out[inside] = colours[m[inside]]
    return out


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


def save_prediction(exp_dir: str, stem: str, pred: np.ndarray | torch.Tensor,
                    image: np.ndarray | torch.Tensor | None = None,
                    gt: np.ndarray | torch.Tensor | None = None, *,
                    palette: Sequence[Sequence[int]], before: np.ndarray | torch.Tensor | None = None) -> None:
    """Write ``predictions/<stem>.npy``, ``visualizations/<stem>.png`` and, given the
    image ([3,H,W] in [-1,1]) and ground truth, ``visualizations/<stem>_compare.png``
    (image | ground truth | prediction, or image | ground truth | ``before`` | prediction when a
    refined prediction is shown next to the one it started from)."""
    mask = _to_numpy(pred).squeeze()
    if mask.ndim != 2:
        raise ValueError(f"prediction for {stem} must squeeze to [H,W], got shape {mask.shape}")
    # The smallest integer type that holds every class id keeps 650 test masks small.
    dtype = np.uint8 if len(palette) <= 256 else np.int16
    _write_npy_atomic(os.path.join(exp_dir, "predictions", stem + ".npy"), mask.astype(dtype))
    coloured = colorize_mask(mask, palette)
    vis_dir = os.path.join(exp_dir, "visualizations")
    write_png_atomic(os.path.join(vis_dir, stem + ".png"), coloured)
    if image is not None and gt is not None:
        panels = [to_uint8_image(image), colorize_mask(_to_numpy(gt).squeeze(), palette), coloured]
        if before is not None:
            panels.insert(2, colorize_mask(_to_numpy(before).squeeze(), palette))
        if len({p.shape for p in panels}) != 1:
            raise ValueError(f"{stem}: image, ground truth and prediction sizes differ: "
                             f"{[p.shape[:2] for p in panels]}")
        write_png_atomic(os.path.join(vis_dir, stem + "_compare.png"), side_by_side(panels))


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
                   pairs: int = 16) -> np.ndarray:
    """The first ``pairs`` synthetic samples as sample | coloured mask pairs, four per row."""
    tiles = [side_by_side([img, colorize_mask(m, palette)]) for img, m in zip(images[:pairs], masks[:pairs])]
    return image_grid(np.stack(tiles), ncol=4)
