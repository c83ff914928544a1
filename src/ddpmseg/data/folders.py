"""Image/label folders: the ddpm-segmentation layout (``<stem>.png`` beside ``<stem>.npy``) or two
folders ``images/`` + ``masks/`` with the same stems, masks as ``.npy`` or PNG (see ``read_mask``).

Everything about a folder is checked when the dataset is built, so that a broken dataset
fails in seconds, before features are extracted or anything is written to the experiment dir.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms

from ..common.errors import DataError
from .windows import Tiling, scaled_hw

# Decided by the last name suffix only, like guided-diffusion's `_list_image_files_recursively`
# (its jpg, jpeg, png, gif), plus the other formats cameras and labelling tools write.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")
# Lossless formats a mask may have in a masks/ folder; a lossy JPEG would blur class colours and ids.
MASK_EXTENSIONS = ("npy", "png", "bmp", "tif", "tiff")
# Single-channel image modes whose pixel values are the class ids themselves.
_ID_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")
# How many offending files a message names before it says "and N more".
_MAX_LISTED = 5
# The foreground value of binary masks as image tools save them (0 = background, 255 = foreground), and the
# ignore value of VOC-style masks: one number, two meanings, told apart by the ignore label and class count.
BINARY_FOREGROUND = 255
# Training-label marker of pixels no ensemble member trains on (small regions of a dataset without an ignore label).
EXCLUDED = -1


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


def nearest_resize(label: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D label map to ``size`` x ``size`` (or to (H, W) ``size``) like ``cv2.resize(...,
    INTER_NEAREST)``.

    OpenCV picks source index floor(dst_index * inv_scale) with inv_scale = 1 / (dst / src)
    computed in float64, clamped to src - 1; the same float steps are reproduced here so that
    non-integer ratios round exactly as in the original.
    """
    h, w = label.shape
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if (h, w) == (out_h, out_w):
        return label.copy()
    rows = np.minimum(np.floor(np.arange(out_h) * (1.0 / (out_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (1.0 / (out_w / w))).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def _listing(items: list[str]) -> str:
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "\n  " + shown + more


def _to_signed(x: torch.Tensor) -> torch.Tensor:
    # A module-level function (not a lambda) keeps the dataset picklable for DataLoader workers.
    return 2 * x - 1


def image_transform(resolution: int) -> transforms.Compose:
    """PIL RGB image -> float32 [3, h, w] in [-1, 1], the short side scaled to ``resolution``.

    torchvision's default Resize is bilinear with antialias, as the original's 'ddpm' transform.
    """
    return transforms.Compose([transforms.Resize(resolution), transforms.ToTensor(), transforms.Lambda(_to_signed)])


def to_rgb(img: Image.Image) -> Image.Image:
    """The RGB picture an image viewer shows: EXIF orientation applied, 16-bit grey scaled to 8 bits,
    transparency composited over white, CMYK/grey/palette converted to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit (or 32-bit int) grey: 0..65535 -> 0..255
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """``to_rgb`` of the image file ``path``, fully decoded, so a truncated file fails now and not mid-run."""
    with Image.open(path) as img:
        return to_rgb(img)


def read_mask(path: str, palette: list | None = None) -> np.ndarray:
    """Class ids [H, W] of one mask file: ``.npy`` (integer array); a single-channel image (L, P, I;16,
    1) whose values are the ids; or an RGB(A) image whose colours are ``palette`` entries (class id =
    index; alpha ignored). A colour not in the palette is an error that names it and its pixel count:
    a nearest colour would silently relabel anti-aliased edges or a mistyped colour.
    """
    if path.lower().endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as e:  # truncated, pickled or not-an-npy files
            raise DataError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: {e}); "
                            f"write it with np.save") from None
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            pixels = np.asarray(img.convert("RGB") if mode == "RGBA" else img)
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: cannot be read as a mask image ({type(e).__name__}: {e}); "
                        f"replace or remove the file") from None
    if mode in _ID_MODES:
        return pixels.astype(np.int64) if mode == "1" else pixels
    if mode not in ("RGB", "RGBA"):
        raise DataError(f"{path}: mask mode {mode} is neither class ids (L, P or I;16 PNG) nor RGB colours; "
                        f"save it as one of these")
    return _colours_to_ids(path, pixels, palette)


def mask_palette(path: str) -> list[list[int]] | None:
    """The 256 [R, G, B] colours a palette ('P') mask image carries, entry i being id i's colour; None
    for other files, and for the grey ramp (entry i = (i, i, i)) that tools write when no colours were set."""
    if path.lower().endswith(".npy"):
        return None
    with Image.open(path) as img:
        if img.mode != "P" or img.palette is None:
            return None
        raw = img.getpalette() or []
    colours = [raw[i:i + 3] for i in range(0, len(raw) - 2, 3)]
    if all(c == [i, i, i] for i, c in enumerate(colours)):
        return None
    return colours + [[0, 0, 0]] * (256 - len(colours))  # PNG may store fewer entries: the rest read as black


def _colours_to_ids(path: str, rgb: np.ndarray, palette: list | None) -> np.ndarray:
    if not palette:
        raise DataError(f"{path}: an RGB mask needs the class colours: set 'palette' in the config "
                        f"(ddpmseg new: 'name R G B' lines in --classes)")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in palette]
    if len(set(pal)) != len(pal):
        raise DataError(f"{path}: the config's palette gives two classes the same colour, so RGB masks "
                        f"are ambiguous; make every class colour distinct")
    colours, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    class_of = {c: k for k, c in enumerate(pal)}
    unknown = [(int(n), int(c)) for c, n in zip(colours, counts) if int(c) not in class_of]
    if unknown:
        unknown.sort(reverse=True)
        named = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) on {n} pixels" for n, c in unknown[:_MAX_LISTED])
        more = f" and {len(unknown) - _MAX_LISTED} more colours" if len(unknown) > _MAX_LISTED else ""
        raise DataError(f"{path}: colour(s) not in the palette: {named}{more}; paint those pixels with a class "
                        f"colour, or add the colour to the palette (masks must be saved without anti-aliasing)")
    ids = np.array([class_of[int(c)] for c in colours], dtype=np.int64)
    return ids[inverse].reshape(codes.shape)


def resolve_folders(data_dir: str, masks_dir: str = "") -> tuple[str, str | None]:
    """(images folder, masks folder or None for ``.npy`` labels beside the images).

    ``masks_dir`` names the masks folder explicitly; otherwise a dataset folder holding exactly
    ``images/`` and ``masks/`` sub-folders is the two-folder layout.
    """
    if masks_dir:
        if os.path.isfile(masks_dir):
            raise DataError(f"masks folder {masks_dir} is a file, not a folder: name the folder of the masks "
                            f"(the *_masks_path in the config)")
        if not os.path.isdir(masks_dir):
            raise DataError(f"masks folder not found: {masks_dir} (check the *_masks_path in the config; "
                            f"relative paths are resolved from {os.getcwd()})")
        return data_dir, masks_dir
    images, masks = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    if os.path.isdir(images) and os.path.isdir(masks):
        return images, masks
    return data_dir, None


def _stem_key(path: str, root: str) -> str:
    """An image's or mask's path below its folder, without the extension: what pairs them."""
    return os.path.splitext(os.path.relpath(path, root))[0]


def _mask_index(masks_dir: str, extensions: tuple[str, ...]) -> dict[str, list[str]]:
    """Files below ``masks_dir`` with one of ``extensions``, by stem key."""
    found: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(masks_dir):
        dirs.sort()
        for name in sorted(files):
            if "." in name and name.rsplit(".", 1)[-1].lower() in extensions:
                path = os.path.join(root, name)
                found.setdefault(_stem_key(path, masks_dir), []).append(path)
    return found


def _check_label(path: str, label: np.ndarray, hw: tuple[int, int],
                 number_class: int | None, ignore_label: int | None) -> str | None:
    """Return a problem description for one label array, or None if it is usable."""
    if not np.issubdtype(label.dtype, np.integer):
        return (f"{path}: label dtype is {label.dtype}, but labels must be integer class ids "
                f"(save them with np.save(path, labels.astype(np.uint8)))")
    if label.shape != hw:
        return (f"{path}: label shape {tuple(label.shape)} does not match the image's (H, W) {hw}; "
                f"a label must hold one class id per image pixel (images may have any size, each with a "
                f"label of its own size)")
    values = np.unique(label)
    out_of_range = values < 0 if number_class is None else (values < 0) | (values >= number_class)
    bad = values[out_of_range]
    if ignore_label is not None:
        bad = bad[bad != ignore_label]
    if bad.size:
        allowed = f"0..{number_class - 1}" if number_class is not None else ">= 0"
        if ignore_label is not None:
            allowed += f" or the ignore_label {ignore_label}"
        hint = (f"; if {BINARY_FOREGROUND} marks pixels to leave out (VOC borders), pass --ignore_label "
                f"{BINARY_FOREGROUND} to ddpmseg new (config: \"ignore_label\": {BINARY_FOREGROUND})"
                if BINARY_FOREGROUND in bad and ignore_label is None else "")
        return (f"{path}: label values {bad[:10].tolist()} are invalid with number_class="
                f"{number_class} (allowed: {allowed}); fix the labels or the config{hint}")
    return None


def binary_as_ids(label: np.ndarray, number_class: int | None, ignore_label: int | None) -> tuple[np.ndarray, bool]:
    """(class ids, whether ``label`` is a binary mask saved as 0/255): a two-class dataset whose ignore
    label is not 255 reads a mask holding 255 and nothing but 0 as 0/1; any other label is returned as is."""
    if number_class != 2 or ignore_label == BINARY_FOREGROUND:
        return label, False
    values = set(np.unique(label).tolist())
    if BINARY_FOREGROUND not in values or not values <= {0, BINARY_FOREGROUND}:
        return label, False
    return (label == BINARY_FOREGROUND).astype(np.uint8), True


class ImageLabelDataset(torch.utils.data.Dataset):
    """The first ``num_images`` sorted images of a folder, with their labels: ``.npy`` files beside
    them, or the masks in ``masks_dir`` (or in ``<data_dir>/masks`` beside ``<data_dir>/images``).

    Items are dicts: "image" float32 [3,h,w] in [-1,1], its short side scaled to ``resolution`` S
    ([3,S,S] for a square image), "label" int64 [h,w] raw class ids scaled to the image's size by
    nearest neighbour (ignore pixels keep ignore_label), "own_label" int64 [H,W] the ids at the image's
    own size (both absent when require_labels=False), "path", "stem". Any size and aspect is accepted:
    ``windows`` cuts them into the S x S units training takes (ddpmseg.data.windows).
    A two-class dataset reads 0/255 masks as 0/1 (``binary_as_ids``); ``binary_masks`` lists them.
    """

    def __init__(self, data_dir: str, resolution: int, num_images: int = -1,
                 number_class: int | None = None, ignore_label: int | None = None,
                 require_labels: bool = True, masks_dir: str = "", palette: list | None = None,
                 count_key: str = "num_images") -> None:
        if os.path.isfile(data_dir):
            raise DataError(f"dataset folder {data_dir} is a file, not a folder: name the folder of the images "
                            f"and their labels")
        if not os.path.isdir(data_dir):
            raise DataError(f"dataset folder not found: {data_dir} (check the path in the config; "
                            f"relative paths are resolved from {os.getcwd()})")
        data_dir, self.masks_dir = resolve_folders(data_dir, masks_dir)
        paths = sorted(list_image_files(data_dir))
        if not paths:
            raise DataError(f"no images in {data_dir}: files count as images when their name ends "
                            f"in .{', .'.join(IMAGE_EXTENSIONS)} (any case), searched recursively")
        # As in the original, num_images <= 0 means all. Asking for more than exist is an error (the
        # original quietly used them all): a run would report a number of images it never had.
        if num_images > len(paths):
            raise DataError(f"'{count_key}' is {num_images}, but {data_dir} holds only {len(paths)} images: set "
                            f"'{count_key}' to at most {len(paths)}, or add images")
        self.data_dir = data_dir
        self.image_paths = paths[:num_images] if num_images > 0 else paths
        self.resolution = resolution
        self.require_labels = require_labels
        self.palette = palette
        self.number_class, self.ignore_label = number_class, ignore_label
        self.sizes: dict[str, tuple[int, int]] = {}  # (W, H) of each used image, read by _validate
        self.binary_masks: list[str] = []
        self.transform = image_transform(resolution)
        self.label_paths: dict[str, str] = {}
        if require_labels:
            self.label_paths = self._find_labels(paths)
        self._validate()

    def read_label(self, path: str) -> tuple[np.ndarray, bool]:
        """(class ids of the label file of image ``path``, whether it is a 0/255 binary mask read as 0/1)."""
        return binary_as_ids(read_mask(self.label_paths[path], self.palette), self.number_class, self.ignore_label)

    def _find_labels(self, all_paths: list[str]) -> dict[str, str]:
        """The label file of each used image; every mask must belong to an image of the folder."""
        if self.masks_dir is None:
            missing = [label_path(p) for p in self.image_paths if not os.path.isfile(label_path(p))]
            if missing:
                raise DataError(
                    f"{len(missing)} of {len(self.image_paths)} images have no label file "
                    f"(<stem>.npy beside <stem>.png):{_listing(missing)}\n"
                    f"Add the labels, or remove the unlabelled images from the folder.")
            return {p: label_path(p) for p in self.image_paths}
        # JPEGs are listed to be rejected by name; in the images' own folder only .npy files are masks.
        same = os.path.realpath(self.masks_dir) == os.path.realpath(self.data_dir)
        masks = _mask_index(self.masks_dir, ("npy",) if same else MASK_EXTENSIONS + ("jpg", "jpeg"))
        stems = {_stem_key(p, self.data_dir) for p in all_paths}
        orphans = [p for key, found in masks.items() if key not in stems for p in found]
        if orphans:
            raise DataError(f"{len(orphans)} mask(s) in {self.masks_dir} have no image of the same stem in "
                            f"{self.data_dir}:{_listing(orphans)}\nRename them to their image's stem, "
                            f"or remove them.")
        found, problems = {}, []
        for p in self.image_paths:
            candidates = masks.get(_stem_key(p, self.data_dir), [])
            if len(candidates) != 1:
                problems.append(f"{p}: " + (f"no mask <stem>.{{{','.join(MASK_EXTENSIONS)}}} in {self.masks_dir}"
                                            if not candidates else f"several masks {candidates}; keep one"))
            elif candidates[0].lower().endswith((".jpg", ".jpeg")):
                problems.append(f"{candidates[0]}: JPEG is lossy and blurs class colours; export the mask "
                                f"as PNG")
            else:
                found[p] = candidates[0]
        if problems:
            raise DataError(f"{len(problems)} of {len(self.image_paths)} images have no usable mask:"
                            f"{_listing(problems)}")
        return found

    def _validate(self) -> None:
        problems: list[str] = []
        for path in self.image_paths:
            try:
                width, height = load_rgb(path).size
            except Exception as e:  # PIL raises many types for corrupt files
                problems.append(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); "
                                f"replace or remove the file")
                continue
            self.sizes[path] = (width, height)
            if not self.require_labels:
                continue
            lpath = self.label_paths[path]
            try:
                label, binary = self.read_label(path)
            except DataError as e:
                problems.append(str(e))
                continue
            if binary:
                self.binary_masks.append(lpath)
            problem = _check_label(lpath, label, (height, width), self.number_class, self.ignore_label)
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
            "image": self.transform(load_rgb(path)),
            "path": path,
            "stem": os.path.splitext(os.path.basename(path))[0],
        }
        if self.require_labels:
            label = self.read_label(path)[0].astype(np.int64)
            item["label"] = torch.from_numpy(nearest_resize(label, tuple(item["image"].shape[1:])))
            item["own_label"] = torch.from_numpy(label)
        return item

    def own_image(self, i: int) -> torch.Tensor:
        """Image ``i`` at its own size: float32 [3,H,W] in [-1,1] (the pictures beside its own-size label)."""
        return _to_signed(transforms.functional.to_tensor(load_rgb(self.image_paths[i])))

    def tiling(self, i: int) -> Tiling:
        """The working-resolution windows of image ``i`` (ddpmseg.data.windows)."""
        return Tiling(*scaled_hw(*self.sizes[self.image_paths[i]], self.resolution), self.resolution)

    def windows_per_image(self) -> list[int]:
        """How many windows ``windows`` yields for each image."""
        return [len(self.tiling(i).windows) for i in range(len(self))]

    def window_count(self) -> int:
        """How many windows ``windows`` yields."""
        return sum(self.windows_per_image())

    def windows(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, image [3,S,S], label [S,S]) of every window of every image, image by image: the units
        training learns from. An image of one window is named by its stem, the others' windows by
        "<stem> (window j of n)"."""
        for i in range(len(self)):
            item, tiling = self[i], self.tiling(i)
            n = len(tiling.windows)
            for j, (image, label) in enumerate(zip(tiling.crops(item["image"]), tiling.crops(item["label"]))):
                yield (item["stem"] if n == 1 else f"{item['stem']} (window {j + 1} of {n})"), image, label


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


def trained_pixels(label: np.ndarray, ignore_label: int | None,
                   min_pixels: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """What the ensemble learns from one training label map: (its labels flattened to int64, the indices
    of the pixels trained on, the (class, count) regions left out by ``drop_small_regions``). Left out
    are the ignore label's pixels and every region of fewer than ``min_pixels``."""
    label, dropped = drop_small_regions(label, ignore_label, min_pixels, fill=EXCLUDED)
    flat = label.reshape(-1).astype(np.int64)
    ignored = EXCLUDED if ignore_label is None else ignore_label
    return flat, np.flatnonzero((flat != EXCLUDED) & (flat != ignored)), dropped
