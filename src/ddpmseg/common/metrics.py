"""Dataset-level IoU exactly as ddpm-segmentation's ``compute_iou`` defines it.

Intersections and unions are summed over all test images before dividing (not a mean of
per-image IoUs). Pixels whose ground truth is the ignore label are NOT removed from the
prediction: predicting class c there enlarges U_c, as in the published numbers.

Beside the score, the accumulator keeps what a report shows of where a run fails: the confusion
matrix (pixel counts, ground truth x prediction) and, for images given a name, each image's mIoU.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

# The original divides by (1e-8 + U); kept so that a class absent everywhere scores 0, not NaN.
_EPS = 1e-8


def _as_int_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(np.int64, copy=False)


class IoUAccumulator:
    """Accumulates per-class intersection and union over a test set."""

    def __init__(self, number_class: int, ignore_label: int | None,
                 class_names: Sequence[str] | None = None) -> None:
        if class_names is not None and len(class_names) != number_class:
            raise ValueError(f"class_names has {len(class_names)} names for {number_class} classes")
        self.number_class = number_class
        self.ignore_label = ignore_label
        self.class_names = list(class_names) if class_names is not None else None
        # Scored classes: all but the ignore label (bedroom_28 scores 28 of its 29 ids).
        self.classes = [c for c in range(number_class) if c != ignore_label]
        # Counts are kept for every id (the ignored one too) so the lists index by class id.
        self.intersection = np.zeros(number_class, dtype=np.int64)
        self.union = np.zeros(number_class, dtype=np.int64)
        # confusion[g, p]: pixels of ground-truth class g predicted as p (ground truth outside 0..K-1 left out).
        self.confusion = np.zeros((number_class, number_class), dtype=np.int64)
        self.per_image_miou: dict[str, float | None] = {}
        self.num_images = 0

    def _count(self, values: np.ndarray) -> np.ndarray:
        # Ids outside 0..K-1 (e.g. GT 255) belong to no scored class; bincount needs them gone.
        inside = values[(values >= 0) & (values < self.number_class)]
        return np.bincount(inside, minlength=self.number_class)

    def _counts(self, p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(intersection, union) per class id of flat label arrays."""
        inter = self._count(p[p == g])
        # |A ∪ B| = |A| + |B| - |A ∩ B|, all from three bincounts instead of a loop over classes.
        return inter, self._count(p) + self._count(g) - inter

    def image_miou(self, inter: np.ndarray, union: np.ndarray) -> float | None:
        """One image's mIoU over the scored classes present in its ground truth or prediction (an
        image shows few of the classes, so absent ones are left out); None when none is present."""
        present = [c for c in self.classes if union[c] > 0]
        return float(np.mean([inter[c] / union[c] for c in present])) if present else None

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
               names: str | Sequence[str] | None = None) -> None:
        """Add one [H,W] prediction/ground-truth pair, or a batch [N,H,W]; given ``names`` (one per
        image), each image's mIoU is kept under its name."""
        p, g = _as_int_array(pred), _as_int_array(gt)
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} != ground-truth shape {g.shape}")
        if p.ndim not in (2, 3):
            raise ValueError(f"expected [H,W] or [N,H,W] label maps, got shape {p.shape}")
        batch = 1 if p.ndim == 2 else p.shape[0]
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if len(names) != batch:
                raise ValueError(f"{len(names)} names for {batch} images")
            for name, pi, gi in zip(names, p.reshape(batch, -1), g.reshape(batch, -1)):
                if name in self.per_image_miou:
                    raise ValueError(f"image {name!r} was scored twice")
                self.per_image_miou[name] = self.image_miou(*self._counts(pi, gi))
        p, g = p.ravel(), g.ravel()
        inter, union = self._counts(p, g)
        self.intersection += inter
        self.union += union
        K = self.number_class
        scored = (g >= 0) & (g < K) & (p >= 0) & (p < K)
        self.confusion += np.bincount(g[scored] * K + p[scored], minlength=K * K).reshape(K, K)
        self.num_images += batch

    def name(self, c: int) -> str:
        return self.class_names[c] if self.class_names is not None else str(c)

    def result(self) -> dict[str, Any]:
        """mIoU over scored classes (absent ones count 0), mIoU over present ones, per-class IoU."""
        iou = self.intersection / (_EPS + self.union)
        scored = np.array(self.classes, dtype=np.int64)
        present = scored[self.union[scored] > 0]
        return {
            "miou": float(iou[scored].mean()) if scored.size else 0.0,
            "miou_present": float(iou[present].mean()) if present.size else 0.0,
            "per_class_iou": {self.name(c): float(iou[c]) for c in self.classes},
            "classes": list(self.classes),
            "intersection": self.intersection.tolist(),
            "union": self.union.tolist(),
            "confusion": self.confusion.tolist(),
            "per_image_miou": dict(self.per_image_miou),
            "num_images": self.num_images,
        }


def iou_table_markdown(result: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per scored class (IoU %, present in GT or prediction), then mIoU."""
    lines = ["| class | IoU % | present |", "|---|---:|:---:|"]
    classes, inter, union = result["classes"], result["intersection"], result["union"]
    for c in classes:
        name = class_names[c] if class_names is not None else str(c)
        # Recomputed from the counts so the table does not depend on how the result named classes.
        iou = inter[c] / (_EPS + union[c])
        lines.append(f"| {c} {name} | {100 * iou:.2f} | {'yes' if union[c] > 0 else 'no'} |")
    n_present = sum(1 for c in classes if union[c] > 0)
    lines.append(f"| **mIoU** ({len(classes)} classes) | **{100 * result['miou']:.2f}** | |")
    lines.append(f"| mIoU over present ({n_present} classes) | {100 * result['miou_present']:.2f} | |")
    return "\n".join(lines) + "\n"
