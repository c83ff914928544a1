"""The classes of a new dataset: a classes file (names, colours, labelme2voc's ``__ignore__``), or the ids the
masks hold; the ignore label and where it came from; class colours from the file, the masks' own PNG
palette, or the VOC colour map."""
from __future__ import annotations

import re
import shlex
from typing import NamedTuple

import numpy as np

from ..common.config import ConfigError
from .folders import BINARY_FOREGROUND, ImageLabelDataset, mask_palette, read_mask

# The ignore id of VOC-style masks (object borders) and of labelme2voc's __ignore__ class.
VOC_IGNORE = 255
# Palette entry 255 of Pascal VOC's PNGs: the colour that marks a palette mask as VOC-style.
VOC_VOID_COLOUR = [224, 224, 192]
# labelme2voc's labels.txt names the ignored pixels on a line of their own (written as 255).
LABELME_IGNORE = "__ignore__"
# ... which its .npy masks hold as -1 (its PNGs as 255, the same -1 written as uint8).
LABELME_NPY_IGNORE = -1
_COLOUR = r"(\d{1,3})\s+(\d{1,3})\s+(\d{1,3})"
CLASS_LINE_FORMS = "'name', 'name R G B', 'name<TAB>R G B' or '\"name with spaces\" R G B'"


class Classes(NamedTuple):
    """A classes file: names, colours (None unless every line gives one), its ignore label (or None)."""
    names: list[str]
    colours: list[list[int]] | None
    ignore_label: int | None


def _class_line(line: str) -> tuple[str, list[int] | None] | None:
    """(name, colour or None) of one classes-file line, or None when it is none of CLASS_LINE_FORMS.
    A name may hold spaces: before a tab, in quotes, or followed by the three colour numbers."""
    if "\t" in line:
        name, _, rest = (part.strip() for part in line.partition("\t"))
        colour = re.fullmatch(_COLOUR, rest)
        if rest and not colour:
            return None
    elif line[0] in "\"'":
        try:
            name, *rest = shlex.split(line)
        except ValueError:  # an unclosed quote
            return None
        colour = re.fullmatch(_COLOUR, " ".join(rest))
        if rest and not colour:
            return None
    else:
        colour = re.search(r"\s" + _COLOUR + "$", line)
        name = line[:colour.start()].strip() if colour else line
    rgb = [int(v) for v in colour.groups()] if colour else None
    if not name or (rgb and max(rgb) > 255):
        return None
    return name, rgb


def read_classes(path: str) -> Classes:
    """The classes file ``path``: one class per non-empty, non-# line (class id = its rank), in one of
    CLASS_LINE_FORMS; a labelme2voc ``__ignore__`` line names no class but sets the ignore label 255."""
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise ConfigError(f"--classes {path}: cannot read it ({e.strerror})") from None
    names, colours, ignore = [], [], None
    for i, line in enumerate(lines):
        if line == LABELME_IGNORE:
            ignore = VOC_IGNORE
            continue
        parsed = _class_line(line)
        if parsed is None:
            raise ConfigError(f"--classes {path}: line {i + 1} {line!r} must be {CLASS_LINE_FORMS}, "
                              f"with R, G, B in 0..255")
        if parsed[0] in names:
            raise ConfigError(f"--classes {path}: class {parsed[0]!r} is listed twice; give each class one line")
        names.append(parsed[0])
        if parsed[1] is not None:
            colours.append(parsed[1])
    if len(names) < 2:
        raise ConfigError(f"--classes {path}: lists {len(names)} class(es); a segmentation needs at least 2")
    if colours and len(colours) != len(names):
        raise ConfigError(f"--classes {path}: give a colour on every line or on none ({len(colours)} of "
                          f"{len(names)} lines have one)")
    return Classes(names, colours or None, ignore)


def distinct_palette(k: int) -> list[list[int]]:
    """The PASCAL VOC colour map: class i's bits spread over the high bits of R, G, B (all distinct)."""
    palette = []
    for i in range(k):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


class DatasetClasses(NamedTuple):
    """What `ddpmseg new` writes into a config: names, palette, ignore label, and where that came from."""
    names: list[str]
    palette: list[list[int]]
    ignore_label: int | None
    ignore_source: str


def _ignore_label(given: int | None, listed: Classes | None, classes_path: str | None, first_mask: str,
                  png_palette: list | None) -> tuple[int | None, str]:
    """(ignore label, where it came from): --ignore_label, then a labelme2voc __ignore__ line, then
    masks in VOC's palette; otherwise none."""
    if given is not None:
        return given, "--ignore_label"
    if listed is not None and listed.ignore_label is not None:
        npy = first_mask.lower().endswith(".npy")
        return (LABELME_NPY_IGNORE if npy else listed.ignore_label,
                f"the {LABELME_IGNORE} line of {classes_path} (labelme2voc's ignored pixels, "
                f"{LABELME_NPY_IGNORE} in .npy masks, {VOC_IGNORE} in PNGs)")
    if png_palette is not None and png_palette[VOC_IGNORE] == VOC_VOID_COLOUR:
        return VOC_IGNORE, (f"the masks' Pascal VOC palette (entry {VOC_IGNORE} is VOC's void colour "
                            f"{tuple(VOC_VOID_COLOUR)})")
    return None, "none given: pass --ignore_label N for a value that marks pixels to leave out"


def _names_from_ids(found: np.ndarray, ignore: int | None) -> list[str]:
    """class_0 .. class_K-1 for masks holding ids 0..K-1 (0/255 binary masks: 2 classes)."""
    values = set(found.tolist()) - {ignore}
    if ignore is None and BINARY_FOREGROUND in values:
        if values <= {0, BINARY_FOREGROUND}:
            return ["class_0", "class_1"]
        raise ConfigError(f"the masks hold ids {sorted(values)[:10]}: {BINARY_FOREGROUND} is taken for a class id "
                          f"only with a classes file; pass --ignore_label {BINARY_FOREGROUND} if it marks pixels "
                          f"to leave out (VOC borders), or list the classes with --classes")
    k = max(values) + 1 if values else 0
    if k < 2:
        raise ConfigError(f"the masks hold no class id but {sorted(values)}: a segmentation needs at least 2 "
                          f"classes; check that the masks hold class ids, or list the classes with --classes")
    return [f"class_{i}" for i in range(k)]


def _png_colours(png_palette: list | None, k: int) -> list[list[int]] | None:
    """The first ``k`` colours of a mask's PNG palette when they tell the classes apart."""
    if png_palette is None or len({tuple(c) for c in png_palette[:k]}) < k:
        return None
    return [list(c) for c in png_palette[:k]]


def dataset_classes(images: str, masks: str, classes_path: str | None, ignore_label: int | None) -> DatasetClasses:
    """The classes of the training folders (every mask is read and checked on the way)."""
    listed = read_classes(classes_path) if classes_path else None
    colours = listed.colours if listed else None
    # Reads and checks every mask; a labelme2voc __ignore__ may stand for -1 in .npy masks.
    labelme = listed is not None and listed.ignore_label is not None
    probe_ignore = LABELME_NPY_IGNORE if ignore_label is None and labelme else ignore_label
    probe = ImageLabelDataset(images, resolution=1, masks_dir=masks, palette=colours, ignore_label=probe_ignore)
    mask_paths = list(probe.label_paths.values())
    png_palette = mask_palette(mask_paths[0])
    ignore, source = _ignore_label(ignore_label, listed, classes_path, mask_paths[0], png_palette)
    names = listed.names if listed else _names_from_ids(
        np.unique(np.concatenate([np.unique(read_mask(p, colours)) for p in mask_paths])), ignore)
    palette = colours or _png_colours(png_palette, len(names)) or distinct_palette(len(names))
    return DatasetClasses(names, palette, ignore, source)
