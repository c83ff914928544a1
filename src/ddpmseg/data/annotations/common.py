"""What every annotation format converts into: items (an image and the class ids drawn on it) that
``Export.write`` puts into a folder the rest of the package reads, ``train/`` (and ``test/``) each
holding ``images/`` + ``masks/`` of class-id PNGs."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from ...common.atomic import atomic_write
from ..folders import DataError, IMAGE_EXTENSIONS, load_rgb, to_rgb

# The ignore id of VOC-style masks (object borders) and of labelme2voc's __ignore__ (its -1 saved as uint8).
VOC_IGNORE = 255
# The largest class id an 8-bit (mode L) mask holds; larger ids are written as 16-bit (I;16) PNGs.
MAX_L_ID = 255


@dataclass
class Item:
    """One image of an export and how to draw its class ids.

    ``image`` is the image file's path, or its bytes where the annotation file embeds it (LabelMe's
    imageData); ``draw(height, width)`` gives the class ids [H, W] at the image's own size."""
    stem: str  # the image's path below its folder, without the extension: what pairs image and mask
    image: str | bytes
    extension: str  # of the image file written, lower case, without the dot
    draw: Callable[[int, int], np.ndarray]
    split: str = "train"


@dataclass
class Export:
    """An annotation tool's export, read: its classes and items. Nothing is drawn before ``write``."""
    format: str
    source: str
    names: list[str]
    palette: list[list[int]]
    ignore_label: int | None
    ignore_source: str | None  # why ignore_label is what it is, for the data summary
    items: list[Item]
    notes: list[str] = field(default_factory=list)  # what the reading left out, said when writing
    keep: list = field(default_factory=list)  # temp folders (an unpacked zip) kept until written

    def check_stems(self) -> None:
        """Two images of one split with the same stem (a.jpg, a.png) would write one mask file."""
        seen: dict[tuple[str, str], Item] = {}
        for item in self.items:
            other = seen.setdefault((item.split, item.stem), item)
            if other is not item:
                names = [i.image if isinstance(i.image, str) else i.stem for i in (other, item)]
                raise DataError(f"{self.source}: {names[0]} and {names[1]} have the same name stem {item.stem!r}, "
                                f"so their masks would be one file; rename one of the images")

    @property
    def classes(self) -> tuple[list[str], list[list[int]], int | None]:
        return self.names, self.palette, self.ignore_label

    @property
    def has_test(self) -> bool:
        return any(item.split == "test" for item in self.items)

    def write(self, out: str, log: Callable[[str], None] = print) -> tuple[int, int]:
        """Draw every mask and copy every image into the new folder ``out``/{train,test}/{images,masks},
        removed again if any fails; returns the train and test counts. new_experiment makes ``out`` in
        the experiment's staging folder, so the data appears with the experiment, whole or not at all."""
        os.makedirs(out)  # a new folder: an existing one would mix two exports
        try:
            for item in self.items:
                _write_item(item, out, len(self.names), self.ignore_label)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            for folder in self.keep:
                folder.cleanup()
        for note in self.notes:
            log(note)
        counts = (sum(i.split == "train" for i in self.items), sum(i.split == "test" for i in self.items))
        test = f", {counts[1]} test" if counts[1] else ""
        log(f"read {self.source} as {self.format}: {counts[0]} train{test} images, {len(self.names)} classes "
            f"({', '.join(self.names)})" + (f"; ignore label {self.ignore_label} ({self.ignore_source})"
                                   if self.ignore_label is not None else ""))
        return counts


def _write_item(item: Item, out: str, number_class: int, ignore_label: int | None) -> None:
    where = item.image if isinstance(item.image, str) else f"the image embedded for {item.stem}"
    try:
        if isinstance(item.image, str):
            width, height = load_rgb(item.image).size
        else:
            with Image.open(io.BytesIO(item.image)) as img:
                width, height = to_rgb(img).size
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{where}: cannot be read as an image ({type(e).__name__}: {e}); replace or remove "
                        f"it") from None
    ids = item.draw(height, width)
    if ids.shape != (height, width):
        raise DataError(f"{where}: its annotation is {ids.shape[1]}x{ids.shape[0]} (WxH) but the image is "
                        f"{width}x{height}; annotate the image at its own size")
    bad = np.setdiff1d(np.unique(ids), [*range(number_class), *([ignore_label] if ignore_label is not None else [])])
    if bad.size:  # the readers map every annotation to a class; this guards their own arithmetic
        raise DataError(f"{where}: drawn class ids {bad.tolist()} are not classes 0..{number_class - 1}")
    folder = os.path.join(out, item.split)
    image_path = os.path.join(folder, "images", f"{item.stem}.{item.extension}")
    if isinstance(item.image, str):
        with open(item.image, "rb") as f:
            data = f.read()
    else:
        data = item.image
    atomic_write(image_path, lambda f: f.write(data))
    atomic_write(os.path.join(folder, "masks", f"{item.stem}.png"), lambda f: save_ids(ids, f))


def save_ids(ids: np.ndarray, f) -> None:
    """A class-id PNG: 8-bit grey (mode L) where every id fits, else 16-bit grey (I;16)."""
    if ids.max(initial=0) <= MAX_L_ID:
        Image.fromarray(ids.astype(np.uint8), "L").save(f, format="PNG")
    else:
        Image.fromarray(ids.astype(np.uint16)).save(f, format="PNG")  # uint16 arrays become mode I;16


def image_extension(path: str) -> str:
    """The lower-cased extension of an image file name; a name that is not an image is an error."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: not an image file name (expected .{', .'.join(IMAGE_EXTENSIONS)})")
    return ext


def safe_stem(name: str, where: str) -> str:
    """An image name from an annotation file as a relative stem: no absolute path, no '..'."""
    norm = os.path.normpath(name.replace("\\", "/"))
    if os.path.isabs(norm) or norm.split(os.sep)[0] == "..":
        raise DataError(f"{where}: image name {name!r} leaves the images folder; use a path below it")
    return os.path.splitext(norm)[0]


def check_points(points: np.ndarray, height: int, width: int, where: str) -> None:
    """Every (x, y) point inside the image, [0, width] x [0, height]: a point beyond it was drawn for
    another image size (or another image), and clipping it would silently move the region."""
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    if outside.any():
        x, y = points[outside][0]
        raise DataError(f"{where}: point ({x:g}, {y:g}) lies outside the {width}x{height} (WxH) image; "
                        f"fix the annotation, or check that it belongs to this image")


def unpack_zip(path: str) -> tuple[str, tempfile.TemporaryDirectory]:
    """A zip export unpacked into a temp folder (kept alive by the returned object); members that would
    land outside it are refused."""
    temp = tempfile.TemporaryDirectory(prefix="ddpmseg-export-")
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                target, inside = os.path.realpath(os.path.join(temp.name, member)), os.path.realpath(temp.name)
                if os.path.commonpath([target, inside]) != inside:
                    raise DataError(f"{path}: member {member!r} would be written outside the folder it is "
                                    f"unpacked into; re-export the zip")
            z.extractall(temp.name)
    except zipfile.BadZipFile as e:
        temp.cleanup()
        raise DataError(f"{path}: not a readable zip ({e}); export it again") from None
    except BaseException:
        temp.cleanup()
        raise
    entries = [e for e in os.listdir(temp.name) if not e.startswith(("__MACOSX", "."))]
    # An export zipped together with its folder: read inside that folder.
    root = os.path.join(temp.name, entries[0]) if len(entries) == 1 and os.path.isdir(
        os.path.join(temp.name, entries[0])) else temp.name
    return root, temp


def find_image(folder: str, stem: str, where: str) -> str:
    """The one image file ``folder``/``stem``.<image extension>."""
    base = os.path.join(folder, stem)
    found = [base + "." + e for e in _existing_extensions(base)]
    if len(found) != 1:
        what = "no image" if not found else f"several images {found}"
        raise DataError(f"{where}: {what} named {stem}.* in {folder}; put its image there (or pass --images)")
    return found[0]


def _existing_extensions(base: str) -> list[str]:
    folder, name = os.path.split(base)
    if not os.path.isdir(folder):
        return []
    return sorted(e.rsplit(".", 1)[-1] for e in os.listdir(folder)
                  if "." in e and e.rsplit(".", 1)[0] == name and e.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS)


# labelme2voc's labels.txt: this name marks the ignore label, and is no class.
IGNORE_NAME = "__ignore__"


def drop_ignore_name(names: list[str] | None) -> tuple[list[str] | None, int | None]:
    """Class names without labelme2voc's ``__ignore__`` line, and the ignore label it implies."""
    if names is None or IGNORE_NAME not in names:
        return names, None
    return [n for n in names if n != IGNORE_NAME], VOC_IGNORE


def read_names(path: str) -> list[str]:
    """One class name per non-empty line (names may hold spaces): class_names.txt, labels.txt."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"{path}: lists no class; write one class name per line, background first")
    return names


def image_sets(root: str) -> tuple[dict[str, str] | None, list[str]]:
    """The split of each stem from ImageSets/Segmentation/*.txt (None without such lists), and notes.

    train.txt with test.txt (or else val.txt) gives a train and a test split; any other set of lists
    (CVAT's default.txt, VOC's trainval.txt) is all training data, split later by --test_fraction."""
    folder = os.path.join(root, "ImageSets", "Segmentation")
    if not os.path.isdir(folder):
        return None, []
    lists = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".txt"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                lists[name[:-4]] = [line.strip() for line in f if line.strip()]
    if not lists:
        return None, []
    test = "test" if "test" in lists else "val" if "val" in lists else None
    if "train" in lists and test:
        split = {**{s: "train" for s in lists["train"]}, **{s: "test" for s in lists[test]}}
        unused = sorted(set().union(*(lists[k] for k in lists if k not in ("train", test))) - set(split))
        notes = [f"{folder}: {len(unused)} image(s) in neither train.txt nor {test}.txt are left out"] if unused else []
        return split, notes
    return {s: "train" for stems in lists.values() for s in stems}, []
