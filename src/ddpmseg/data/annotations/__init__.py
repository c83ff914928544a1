"""Annotation tools' exports read directly: CVAT Segmentation mask 1.1 (folder or zip), Pascal VOC /
labelme2voc, COCO JSON and LabelMe JSON, converted by ``Export.write`` into ``train/`` (and ``test/``)
folders of ``images/`` + ``masks/`` (class-id PNGs) that ``ImageLabelDataset`` reads.

``open_export`` tells the format from the ``--masks`` path (a file, a folder or a zip); ``--format``
names it where it cannot be told apart (a bare folder of VOC masks). A plain folder of masks is no
export: ``open_export`` returns None and the folder is read as it is.
"""
from __future__ import annotations

import os

from ..folders import DataError
from .coco import coco_file, is_coco, load_json, read_coco
from .common import Export, unpack_zip
from .cvat import is_cvat, read_cvat
from .labelme import is_labelme, json_files, read_labelme
from .voc import is_voc, read_voc

# "folder" reads --masks as a plain folder of masks, whatever it holds.
FORMATS = ("cvat", "voc", "coco", "labelme", "folder")
# Formats whose export names its classes (labelmap.txt, categories): --classes would contradict it.
NAMES_ITS_CLASSES = ("cvat", "coco")

__all__ = ["Export", "FORMATS", "detect_format", "open_export"]


def detect_format(root: str) -> str | None:
    """The format of an export file or (unpacked) folder; None for a plain folder of masks."""
    if os.path.isfile(root):
        if not root.lower().endswith(".json"):
            return None
        data = load_json(root)
        return "coco" if is_coco(data) else "labelme" if is_labelme(data) else None
    if is_cvat(root):
        return "cvat"
    if is_voc(root):
        return "voc"
    if coco_file(root):
        return "coco"
    jsons = [p for p in sorted(os.listdir(root)) if p.lower().endswith(".json")]
    if jsons and is_labelme(load_json(os.path.join(root, jsons[0]))):
        return "labelme"
    return None


def open_export(masks: str, images: str | None, fmt: str | None = None, names: list[str] | None = None,
                test_masks: str | None = None, test_images: str | None = None) -> Export | None:
    """The export at ``masks`` read (classes, items; nothing drawn yet), with the export at ``test_masks``
    as its test split when that is an export too; None when ``masks`` is a plain folder of masks.
    ``names`` (from --classes) names the classes of the formats whose files do not."""
    if not os.path.exists(masks):
        raise DataError(f"--masks {masks}: no such file or folder")
    export = _open(masks, images, fmt, names)
    if export is None:
        if fmt is None and os.path.isfile(masks) and not masks.lower().endswith(".zip"):
            raise DataError(f"--masks {masks}: a file, but neither COCO JSON (images, annotations, categories) "
                            f"nor LabelMe JSON (shapes); pass a folder of masks, or name the format with --format")
        if images is None:
            raise DataError(f"--images: needed where --masks {masks} is a folder of masks (not an annotation "
                            f"export holding its images)")
        return None
    test = _open(test_masks, test_images, fmt, names) if test_masks else None
    if test is not None:
        if test.has_test or export.has_test:
            raise DataError(f"--test_masks {test_masks}: {masks} and {test_masks} both define a test split; "
                            f"give one export with both splits, or two without")
        if test.names != export.names:
            raise DataError(f"--test_masks {test_masks}: its classes {test.names} differ from those of "
                            f"{masks} {export.names}; export both with the same labels")
        for item in test.items:
            item.split = "test"
        export.items += test.items
        export.keep += test.keep
    elif test_images or test_masks:
        raise DataError(f"--test_images/--test_masks with an annotation export: pass the test annotations "
                        f"(same format) as --test_masks, or leave both out to split by --test_fraction")
    export.check_stems()
    return export


def _open(path: str, images: str | None, fmt: str | None, names: list[str] | None) -> Export | None:
    keep = []
    root = path
    if os.path.isfile(path) and path.lower().endswith(".zip"):
        root, temp = unpack_zip(path)
        keep.append(temp)
    found = detect_format(root) if fmt is None else fmt
    if found in (None, "folder"):
        for temp in keep:
            temp.cleanup()
        if keep:
            raise DataError(f"{path}: a zip of neither a CVAT export (labelmap.txt), a VOC folder (JPEGImages/ "
                            f"+ SegmentationClass/) nor LabelMe JSON files; unpack it and pass the folders")
        return None
    if found in NAMES_ITS_CLASSES and names is not None:
        raise DataError(f"--classes: {path} names its classes itself ({found}); leave --classes out")
    export = _read(found, root, images, names, path)
    export.keep += keep
    return export


def _read(fmt: str, root: str, images: str | None, names: list[str] | None, source: str) -> Export:
    if fmt == "cvat":
        if not is_cvat(root):
            raise DataError(f"{source}: no labelmap.txt, which a CVAT Segmentation mask 1.1 export holds")
        return read_cvat(root, images, source)
    if fmt == "voc":
        if not os.path.isdir(root):
            raise DataError(f"{source}: a VOC export is a folder (JPEGImages/, SegmentationClass/)")
        return read_voc(root, images, names, source)
    if fmt == "coco":
        if os.path.isdir(root):
            root = coco_file(root) or root
        data = load_json(root) if os.path.isfile(root) else None
        if not is_coco(data):
            raise DataError(f"{source}: not a COCO JSON file (needs 'images', 'annotations', 'categories')")
        return read_coco(root, data, images, source)
    if fmt == "labelme":
        paths = [root] if os.path.isfile(root) else json_files(root)
        return read_labelme(paths, root if os.path.isdir(root) else os.path.dirname(root), images, names, source)
    raise DataError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
