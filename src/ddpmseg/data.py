"""Image/label folders in the ddpm-segmentation layout: ``<stem>.png`` beside ``<stem>.npy``.

Everything about a folder is checked when the dataset is built, so that a broken dataset
fails in seconds, before features are extracted or anything is written to the experiment dir.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

# guided-diffusion's `_list_image_files_recursively` decides by the last name suffix only.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")
# How many offending files a message names before it says "and N more".
_MAX_LISTED = 5


class DataError(ValueError):
    """A dataset folder is unusable; the message says what is wrong and how to fix it."""


def list_image_files(data_dir: str) -> list[str]:
    """Image paths under ``data_dir``, depth-first over each level's sorted entry names.

    An entry is an image iff its name has a '.' and its last suffix (lower-cased) is one of
    IMAGE_EXTENSIONS; otherwise a directory is descended into. Like guided-diffusion, the
    result is NOT globally sorted: callers sort it themselves.
    """
    found: list[str] = []
    for entry in sorted(os.listdir(data_dir)):
        full = os.path.join(data_dir, entry)
        if "." in entry and entry.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            found.append(full)
        elif os.path.isdir(full):
            found.extend(list_image_files(full))
    return found


def label_path(image_path: str) -> str:
    """The label file of an image: the same path with its extension replaced by ``.npy``."""
    return os.path.splitext(image_path)[0] + ".npy"


def nearest_resize(label: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D label map to ``size`` x ``size`` like ``cv2.resize(..., INTER_NEAREST)``.

    OpenCV picks source index floor(dst_index * inv_scale) with inv_scale = 1 / (dst / src)
    computed in float64, clamped to src - 1; the same float steps are reproduced here so that
    non-integer ratios round exactly as in the original.
    """
    h, w = label.shape
    if (h, w) == (size, size):
        return label.copy()
    rows = np.minimum(np.floor(np.arange(size) * (1.0 / (size / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(size) * (1.0 / (size / w))).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def _listing(items: list[str]) -> str:
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "\n  " + shown + more


def _to_signed(x: torch.Tensor) -> torch.Tensor:
    # A module-level function (not a lambda) keeps the dataset picklable for DataLoader workers.
    return 2 * x - 1


def _read_image(path: str) -> Image.Image:
    # convert() forces a full decode, so a truncated file fails here and not mid-run.
    with Image.open(path) as img:
        return img.convert("RGB")


def _check_label(path: str, label: np.ndarray, hw: tuple[int, int],
                 number_class: int | None, ignore_label: int | None) -> str | None:
    """Return a problem description for one label array, or None if it is usable."""
    if not np.issubdtype(label.dtype, np.integer):
        return (f"{path}: label dtype is {label.dtype}, but labels must be integer class ids "
                f"(save them with np.save(path, labels.astype(np.uint8)))")
    if label.shape != hw:
        return (f"{path}: label shape {tuple(label.shape)} does not match the image's (H, W) {hw}; "
                f"a label must hold one class id per image pixel")
    values = np.unique(label)
    out_of_range = values < 0 if number_class is None else (values < 0) | (values >= number_class)
    bad = values[out_of_range]
    if ignore_label is not None:
        bad = bad[bad != ignore_label]
    if bad.size:
        allowed = f"0..{number_class - 1}" if number_class is not None else ">= 0"
        if ignore_label is not None:
            allowed += f" or the ignore_label {ignore_label}"
        return (f"{path}: label values {bad[:10].tolist()} are invalid with number_class="
                f"{number_class} (allowed: {allowed}); fix the labels or the config")
    return None


class ImageLabelDataset(torch.utils.data.Dataset):
    """The first ``num_images`` sorted images of a folder, with their ``.npy`` labels.

    Items are dicts: "image" float32 [3,S,S] in [-1,1], "label" int64 [S,S] raw class ids
    (ignore pixels keep ignore_label; absent when require_labels=False), "path", "stem".
    """

    def __init__(self, data_dir: str, resolution: int, num_images: int = -1,
                 number_class: int | None = None, ignore_label: int | None = None,
                 require_labels: bool = True) -> None:
        if not os.path.isdir(data_dir):
            raise DataError(f"dataset folder not found: {data_dir} (check the path in the config; "
                            f"relative paths are resolved from {os.getcwd()})")
        paths = sorted(list_image_files(data_dir))
        if not paths:
            raise DataError(f"no images in {data_dir}: files count as images when their name ends "
                            f"in .{', .'.join(IMAGE_EXTENSIONS)} (any case), searched recursively")
        # As in the original, num_images <= 0 means all; asking for more than exist gives all.
        self.data_dir = data_dir
        self.image_paths = paths[:num_images] if num_images > 0 else paths
        self.resolution = resolution
        self.require_labels = require_labels
        # torchvision's default Resize is bilinear with antialias, as the original's 'ddpm' transform.
        self.transform = transforms.Compose([
            transforms.Resize(resolution),
            transforms.ToTensor(),
            transforms.Lambda(_to_signed),
        ])
        self._validate(number_class, ignore_label)

    def _validate(self, number_class: int | None, ignore_label: int | None) -> None:
        if self.require_labels:
            missing = [label_path(p) for p in self.image_paths if not os.path.isfile(label_path(p))]
            if missing:
                raise DataError(
                    f"{len(missing)} of {len(self.image_paths)} images have no label file "
                    f"(<stem>.npy beside <stem>.png):{_listing(missing)}\n"
                    f"Add the labels, or remove the unlabelled images from the folder.")
        problems: list[str] = []
        for path in self.image_paths:
            try:
                width, height = _read_image(path).size
            except Exception as e:  # PIL raises many types for corrupt files
                problems.append(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); "
                                f"replace or remove the file")
                continue
            if width != height:
                problems.append(f"{path}: image is {width}x{height} (WxH) but must be square; "
                                f"crop it to a square together with its label")
                continue
            if not self.require_labels:
                continue
            lpath = label_path(path)
            try:
                label = np.load(lpath, allow_pickle=False)
            except Exception as e:  # truncated, pickled or not-an-npy files
                problems.append(f"{lpath}: cannot be read as a .npy array ({type(e).__name__}: {e}); "
                                f"write it with np.save")
                continue
            problem = _check_label(lpath, label, (height, width), number_class, ignore_label)
            if problem:
                problems.append(problem)
        if problems:
            raise DataError(f"{len(problems)} problem(s) in dataset {self.data_dir}:"
                            f"{_listing(problems)}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.image_paths[i]
        item: dict[str, Any] = {
            "image": self.transform(_read_image(path)),
            "path": path,
            "stem": os.path.splitext(os.path.basename(path))[0],
        }
        if self.require_labels:
            label = np.load(label_path(path), allow_pickle=False).astype(np.int64)
            item["label"] = torch.from_numpy(nearest_resize(label, self.resolution))
        return item


def drop_small_regions(label: np.ndarray | torch.Tensor, ignore_label: int | None,
                       min_pixels: int, fill: int = -1
                       ) -> tuple[np.ndarray | torch.Tensor, list[tuple[int, int]]]:
    """Relabel every class with 0 < pixel count < ``min_pixels`` (training labels only).

    The pixels go to ``ignore_label``, as in the original; a dataset without one
    (``ignore_label=None``) gets the marker ``fill`` instead, meaning "excluded from training".
    Returns a new label of the same kind (ndarray/tensor) and the (class, count) pairs changed.
    The dtype is kept unless the marker does not fit in it (e.g. -1 in uint8): then int64.
    """
    is_tensor = isinstance(label, torch.Tensor)
    arr = label.detach().cpu().numpy() if is_tensor else np.asarray(label)
    marker = ignore_label if ignore_label is not None else fill
    dtype = arr.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not info.min <= marker <= info.max:
            dtype = np.dtype(np.int64)
    out = arr.astype(dtype, copy=True)
    classes, counts = np.unique(arr, return_counts=True)
    dropped: list[tuple[int, int]] = []
    for c, n in zip(classes.tolist(), counts.tolist()):
        # unique() only returns classes that occur, so n > 0 always holds here.
        if c != ignore_label and c != marker and n < min_pixels:
            out[arr == c] = marker
            dropped.append((int(c), int(n)))
    return (torch.from_numpy(out) if is_tensor else out), dropped
