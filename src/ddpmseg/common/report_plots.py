"""The plots of report.html, drawn with matplotlib's Agg canvas (no display, no global backend
state) and returned as PNG bytes for the page to embed."""
from __future__ import annotations

import io
import math
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Resolution of the embedded plots: sharp on a 2x screen at the page's 1300 px width.
_DPI = 110
# Members per row of the training-curve grid.
_CURVE_COLUMNS = 5
_LOSS_COLOUR, _ACCURACY_COLOUR, _STOP_COLOUR = "tab:blue", "tab:orange", "tab:red"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def iou_bars(names: Sequence[str], ious: Sequence[float], present: Sequence[bool], miou: float) -> bytes:
    """Horizontal bars of per-class IoU (%), classes in id order from the top, the mIoU as a dashed
    line; a class absent from both ground truth and prediction is a grey, labelled zero."""
    fig = Figure(figsize=(7, 0.28 * len(names) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    values = 100 * np.asarray(ious, dtype=np.float64)
    ax.barh(y, values, color=["tab:blue" if p else "lightgrey" for p in present])
    ax.axvline(100 * miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {100 * miou:.2f}")
    ax.set_yticks(y, [n if p else f"{n} (absent)" for n, p in zip(names, present)])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU %")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def confusion_matrix(normalised: np.ndarray, row_names: Sequence[str], column_names: Sequence[str]) -> bytes:
    """A row-normalised confusion matrix (rows: ground truth, columns: prediction; NaN rows, classes
    with no ground-truth pixel, in grey), each cell of 1 % or more written in %."""
    n_rows, n_cols = normalised.shape
    side = 0.38 * max(n_rows, n_cols) + 2.0
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(normalised), cmap=cmap, vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(normalised):
        if np.isfinite(v) and v >= 0.01:
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")
    ax.set_xticks(range(n_cols), column_names, rotation=90)
    ax.set_yticks(range(n_rows), row_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, shrink=0.6, label="fraction of the ground-truth class's pixels")
    return _png(fig)


def member_curves(curves: Sequence[dict], titles: Sequence[str], stops: Sequence[int | None]) -> bytes:
    """One panel per member: mean batch loss (left axis) and pixel accuracy (right axis) against the
    iteration, with a red line where the member stopped (``titles`` say why)."""
    n = len(curves)
    cols = min(n, _CURVE_COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.3 * cols + 0.6, 2.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        curve = curves[k]
        ax.plot(curve["batch"], curve["loss"], color=_LOSS_COLOUR, marker="." if len(curve["batch"]) < 5 else None)
        ax.set_title(titles[k], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("iteration (batches)", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("loss", color=_LOSS_COLOUR, fontsize=8)
        acc = ax.twinx()
        acc.plot(curve["batch"], curve["accuracy"], color=_ACCURACY_COLOUR,
                 marker="." if len(curve["batch"]) < 5 else None)
        acc.set_ylim(0, 1)
        acc.tick_params(labelsize=7)
        if k % cols == cols - 1 or k == n - 1:
            acc.set_ylabel("accuracy", color=_ACCURACY_COLOUR, fontsize=8)
        if stops[k] is not None:
            ax.axvline(stops[k], color=_STOP_COLOUR, linestyle=":", linewidth=1.2)
    return _png(fig)


def epoch_curve(epochs: Sequence[int], validation_miou: Sequence[float], mean_loss: Sequence[float | None],
                best: int) -> bytes:
    """A DeepLab run's epochs: validation mIoU (%) and mean training loss, the selected epoch marked."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, 100 * np.asarray(validation_miou, dtype=np.float64), marker="o", color=_ACCURACY_COLOUR)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mIoU %", color=_ACCURACY_COLOUR)
    ax.axvline(best, color=_STOP_COLOUR, linestyle=":", label=f"selected epoch {best}")
    ax.legend(loc="lower right")
    known = [(e, v) for e, v in zip(epochs, mean_loss) if v is not None]
    if known:
        loss = ax.twinx()
        loss.plot([e for e, _ in known], [v for _, v in known], marker=".", color=_LOSS_COLOUR)
        loss.set_ylabel("mean training loss", color=_LOSS_COLOUR)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)
