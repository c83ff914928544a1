"""Annotation tools' exports (CVAT Segmentation mask 1.1, Pascal VOC / labelme2voc, COCO JSON,
LabelMe JSON), built here to each format's specification, converted into class-id masks: the exact
ids drawn, the overlap rule, RLE round trips, colour -> id with spaces in names, bad input as one
error line; and each format through new_experiment.py -> train_interpreter.py -> segment.py."""
from __future__ import annotations

import base64
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from ddpmseg.commands import new as new_experiment
from ddpmseg.commands import segment
import train_interpreter
from ddpmseg.common.config import load_config
from ddpmseg.data.annotations import detect_format, open_export
from ddpmseg.data.folders import DataError, read_mask

W, H = 24, 16  # non-square: the conversion keeps each image's own size
# CVAT's labelmap colours (its default palette) with spaces in names, background first as CVAT writes it.
CVAT_LABELS = [("background", (0, 0, 0)), ("skin", (204, 204, 255)), ("left eye", (255, 0, 170)),
               ("upper lip", (51, 221, 255))]


def _image(path, w=W, h=H, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _converted(export, tmp_path):
    """{split/stem: class ids} of an export written into tmp_path/out, read back as the package reads masks."""
    counts = export.write(str(tmp_path / "out"), log=lambda _: None)
    masks = {f"{p.parent.parent.name}/{p.stem}": read_mask(str(p)) for p in sorted((tmp_path / "out").glob("*/masks/*"))}
    assert sum(counts) == len(masks)
    for key in masks:  # every mask beside its image, of the image's own size
        split, stem = key.split("/")
        image = next((tmp_path / "out" / split / "images").glob(stem + ".*"))
        assert Image.open(image).size[::-1] == masks[key].shape
    return masks


# ---------- CVAT ----------

def _cvat(root, ids_by_stem, labels=CVAT_LABELS, subsets=None, n_images=True):
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "SegmentationObject").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in labels))
    colours = np.array([c for _, c in labels], np.uint8)
    for i, (stem, ids) in enumerate(ids_by_stem.items()):
        Image.fromarray(colours[ids]).save(root / "SegmentationClass" / f"{stem}.png")
        if n_images:
            _image(root / "JPEGImages" / f"{stem}.png", ids.shape[1], ids.shape[0], seed=i)
    for subset, stems in (subsets or {"default": list(ids_by_stem)}).items():
        (root / "ImageSets" / "Segmentation" / f"{subset}.txt").write_text("".join(s + "\n" for s in stems))
    return root


def _ids(seed, h=H, w=W, k=len(CVAT_LABELS)):
    return np.random.default_rng(seed).integers(0, k, (h, w))


def test_cvat_colours_map_to_labelmap_lines_with_spaces_in_names(tmp_path):
    truth = {"frame_000": _ids(1), "frame_001": _ids(2)}
    root = _cvat(tmp_path / "cvat", truth)
    assert detect_format(str(root)) == "cvat"
    export = open_export(str(root), None)
    assert export.names == ["background", "skin", "left eye", "upper lip"]
    assert export.palette == [list(c) for _, c in CVAT_LABELS] and export.ignore_label is None
    masks = _converted(export, tmp_path)
    assert masks.keys() == {"train/frame_000", "train/frame_001"}
    for stem, ids in truth.items():
        np.testing.assert_array_equal(masks[f"train/{stem}"], ids)
    assert masks["train/frame_000"].dtype == np.uint8  # written as mode L


def test_cvat_zip_and_its_train_test_subsets(tmp_path):
    truth = {"a": _ids(3), "b": _ids(4), "c": _ids(5), "d": _ids(6)}
    root = _cvat(tmp_path / "task", truth, subsets={"train": ["a", "b"], "test": ["c"], "val": ["d"]})
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(root.rglob("*")):
            z.write(p, p.relative_to(root))
    export = open_export(str(archive), None)
    masks = _converted(export, tmp_path)
    assert masks.keys() == {"train/a", "train/b", "test/c"}  # val is neither train nor test when test.txt exists
    assert export.notes == [f"{export.notes[0].split(':')[0]}: 1 image(s) in neither train.txt nor test.txt "
                            f"are left out"]
    np.testing.assert_array_equal(masks["test/c"], truth["c"])


def test_cvat_labelmap_without_black_gets_the_background_class_first(tmp_path):
    labels = [("road", (128, 64, 128)), ("traffic sign", (220, 220, 0))]
    ids = _ids(7, k=3)
    root = _cvat(tmp_path / "cvat", {"x": ids}, labels=[("background", (0, 0, 0)), *labels])
    (root / "labelmap.txt").write_text("road:128,64,128::\ntraffic sign:220,220,0::\n")
    export = open_export(str(root), None)
    assert export.names == ["background", "road", "traffic sign"]
    np.testing.assert_array_equal(_converted(export, tmp_path)["train/x"], ids)


# ---------- Pascal VOC / labelme2voc ----------

VOC_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def _voc_png(path, ids):
    img = Image.fromarray(ids.astype(np.uint8), "P")
    flat = np.zeros((256, 3), np.uint8)
    flat[:3] = VOC_COLOURS
    flat[255] = [224, 224, 192]  # VOC's void colour
    img.putpalette(flat.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _voc_ids(seed, h=H, w=W):
    ids = np.random.default_rng(seed).integers(0, 3, (h, w))
    ids[0, :] = ids[:, 0] = 255  # a void border, as VOC draws around objects
    return ids


def test_voc_palette_masks_255_is_ignore_names_with_spaces(tmp_path):
    root = tmp_path / "VOC"
    truth = {"2007_000032": _voc_ids(1), "2007_000033": _voc_ids(2)}
    for i, (stem, ids) in enumerate(truth.items()):
        _voc_png(root / "SegmentationClass" / f"{stem}.png", ids)
        _image(root / "JPEGImages" / f"{stem}.jpg", seed=i)
    (root / "class_names.txt").write_text("_background_\npotted plant\ndining table\n")
    assert detect_format(str(root)) == "voc"
    export = open_export(str(root), None)
    assert export.classes == (["_background_", "potted plant", "dining table"], VOC_COLOURS, 255)
    assert "255 marks void" in export.ignore_source
    masks = _converted(export, tmp_path)
    for stem, ids in truth.items():
        np.testing.assert_array_equal(masks[f"train/{stem}"], ids)
    assert (tmp_path / "out" / "train" / "images" / "2007_000032.jpg").read_bytes() == (
        root / "JPEGImages" / "2007_000032.jpg").read_bytes()  # images are copied, not re-encoded


def test_labelme2voc_labels_txt_ignore_and_npy_arrays(tmp_path):
    root = tmp_path / "voc_out"
    ids = _voc_ids(3)
    _image(root / "JPEGImages" / "img.jpg")
    (root / "SegmentationClass").mkdir()
    np.save(root / "SegmentationClass" / "img.npy", np.where(ids == 255, -1, ids).astype(np.int32))
    (root / "labels.txt").write_text("__ignore__\n_background_\ncat\nstreet lamp\n")
    export = open_export(str(root), None)
    assert export.names == ["_background_", "cat", "street lamp"] and export.ignore_label == 255
    assert "__ignore__" in export.ignore_source
    np.testing.assert_array_equal(_converted(export, tmp_path)["train/img"], ids)  # -1 -> 255
    # and the PNGs labelme2voc writes beside them are read first, with the same result
    _voc_png(root / "SegmentationClassPNG" / "img.png", ids)
    assert open_export(str(root), None).format == "labelme2voc"


def test_voc_format_flag_reads_a_bare_folder_of_masks(tmp_path):
    ids = _voc_ids(4)
    _voc_png(tmp_path / "masks" / "a.png", ids)
    _image(tmp_path / "images" / "a.png")
    assert detect_format(str(tmp_path / "masks")) is None  # a plain masks folder without --format
    export = open_export(str(tmp_path / "masks"), str(tmp_path / "images"), "voc")
    assert export.ignore_label == 255 and export.names == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(_converted(export, tmp_path)["train/a"], ids)


# ---------- COCO ----------

def _coco(tmp_path, annotations, categories=({"id": 3, "name": "hair band"}, {"id": 7, "name": "cat"}),
          sizes=((W, H),)):
    images = []
    for i, (w, h) in enumerate(sizes):
        _image(tmp_path / "images" / f"img{i}.jpg", w, h, seed=i)
        images.append({"id": 10 + i, "file_name": f"img{i}.jpg", "width": w, "height": h})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "categories": list(categories), "annotations": [
        {"id": k + 1, "image_id": 10, "iscrowd": 0, **a} for k, a in enumerate(annotations)]}))
    return path


def _coco_ids(tmp_path, annotations, names=("background", "hair band", "cat"), **kwargs):
    path = _coco(tmp_path, annotations, **kwargs)
    assert detect_format(str(path)) == "coco"
    export = open_export(str(path), str(tmp_path / "images"))
    if names:  # ids 3, 7 -> classes 1, 2; background 0
        assert export.names == list(names)
    return _converted(export, tmp_path)["train/img0"]


def test_coco_polygons_pixels_whose_centre_is_inside(tmp_path):
    # COCO polygon coordinates are pixel corners: pixel (x, y) is drawn when its centre (x+.5, y+.5) is inside.
    ids = _coco_ids(tmp_path, [{"category_id": 3, "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]]},
                               {"category_id": 7, "segmentation": [[12, 0, 20, 0, 12, 8]]}])
    expected = np.zeros((H, W), np.uint8)
    expected[3:8, 2:10] = 1  # rows 3..7, columns 2..9
    for y in range(8):  # the triangle: (x - 12 + .5) + (y + .5) < 8
        expected[y, 12:12 + 7 - y] = 2
    np.testing.assert_array_equal(ids, expected)


def test_coco_rle_uncompressed_and_compressed_round_trip(tmp_path):
    a = np.zeros((H, W), np.uint8)
    a[1:4, 5:9] = 1
    b = np.zeros((H, W), np.uint8)
    b[10:15, 0:24:2] = 1
    flat = b.ravel(order="F")  # uncompressed COCO RLE: run lengths over the column-major pixels, zeros first
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    compressed = coco_mask.encode(np.asfortranarray(a))
    ids = _coco_ids(tmp_path, [
        {"category_id": 3, "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
        {"category_id": 7, "iscrowd": 1, "segmentation": {"size": [H, W], "counts": counts}}])
    np.testing.assert_array_equal(ids, a * 1 + b * 2)


def test_coco_overlap_smaller_region_on_top_whatever_the_order(tmp_path):
    big = {"category_id": 3, "segmentation": [[0, 0, 20, 0, 20, 12, 0, 12]]}
    small = {"category_id": 7, "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]]}
    expected = np.zeros((H, W), np.uint8)
    expected[0:12, 0:20] = 1
    expected[4:8, 4:8] = 2
    for order in ([big, small], [small, big]):
        np.testing.assert_array_equal(_coco_ids(tmp_path / str(id(order)), order), expected)


# ---------- LabelMe ----------

def _labelme(path, shapes, image_path="img.png", embed=False, w=W, h=H):
    image = _image(path.parent / image_path, w, h)
    data = {"version": "5.4.1", "flags": {}, "shapes": [
        {"label": label, "points": points, "shape_type": kind, "group_id": None, "flags": {}}
        for label, kind, points in shapes], "imagePath": image_path,
        "imageData": base64.b64encode(image.read_bytes()).decode() if embed else None,
        "imageHeight": h, "imageWidth": w}
    if embed:
        image.unlink()
    path.write_text(json.dumps(data))
    return path


def test_labelme_polygon_rectangle_circle_as_labelme2voc_draws_them(tmp_path):
    _labelme(tmp_path / "lm" / "img.json", [("face skin", "rectangle", [[2, 3], [10, 8]]),
                                            ("eye", "circle", [[12, 8], [12, 11]]),
                                            ("face skin", "polygon", [[16, 0], [23, 0], [16, 7]])])
    assert detect_format(str(tmp_path / "lm")) == "labelme"
    export = open_export(str(tmp_path / "lm"), None)
    assert export.names == ["background", "eye", "face skin"]  # background, then the labels sorted
    ids = _converted(export, tmp_path)["train/img"]
    expected = np.zeros((H, W), np.uint8)
    expected[3:9, 2:11] = 2  # PIL fills with the outline: both corners' rows and columns included
    # the circle of radius 3 about (12, 8), as PIL's ellipse over [9, 5, 15, 11] draws it
    disc = ["0011100", "0111110", "1111111", "1111111", "1111111", "0111110", "0011100"]
    for r, row in enumerate(disc):
        for c, v in enumerate(row):
            if v == "1":
                expected[5 + r, 9 + c] = 1
    for y in range(8):  # the triangle with its outline: (x - 16) + y <= 7
        expected[y, 16:16 + 8 - y] = 2
    np.testing.assert_array_equal(ids, expected)


def test_labelme_later_shape_on_top_embedded_image_and_ignore(tmp_path):
    _labelme(tmp_path / "lm" / "a.json", [("big", "rectangle", [[0, 0], [10, 10]]),
                                          ("__ignore__", "rectangle", [[5, 5], [20, 12]])], embed=True)
    export = open_export(str(tmp_path / "lm"), None)
    assert export.names == ["background", "big"] and export.ignore_label == 255
    ids = _converted(export, tmp_path)["train/a"]
    expected = np.zeros((H, W), np.uint8)
    expected[0:11, 0:11] = 1
    expected[5:13, 5:21] = 255  # drawn later, so over the rectangle
    np.testing.assert_array_equal(ids, expected)
    assert (tmp_path / "out" / "train" / "images" / "a.png").is_file()  # the embedded image, written out


# ---------- bad input: one line naming the file and what to do ----------

def _bad_export(tmp_path, kind):
    if kind == "polygon outside the image":
        path = _coco(tmp_path, [{"category_id": 3, "segmentation": [[2, 3, 30, 3, 10, 8]]}])
        return path, "instances.json: image 10 (img0.jpg), annotation 1: point (30, 3) lies outside the 24x16"
    if kind == "unknown category id":
        path = _coco(tmp_path, [{"category_id": 5, "segmentation": [[2, 3, 10, 3, 10, 8]]}])
        return path, "instances.json: annotation 1 has category_id 5, which is not in 'categories' (ids [3, 7])"
    if kind == "COCO image without its size":
        path = _coco(tmp_path, [])
        data = json.loads(path.read_text())
        del data["images"][0]["height"]
        path.write_text(json.dumps(data))
        return path, "instances.json: images[0] lacks height"
    if kind == "two images of one stem":
        path = _coco(tmp_path, [], sizes=((W, H), (W, H)))
        data = json.loads(path.read_text())
        data["images"][1]["file_name"] = "img0.png"
        _image(tmp_path / "images" / "img0.png")
        path.write_text(json.dumps(data))
        return path, "img0.png have the same name stem 'img0'"
    if kind == "missing image file":
        path = _coco(tmp_path, [])
        (tmp_path / "images" / "img0.jpg").unlink()
        return path, "no file"
    if kind == "empty labelmap":
        root = _cvat(tmp_path / "cvat", {"x": _ids(1)})
        (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n")
        return root, "labelmap.txt: lists no class"
    if kind == "colour not in the labelmap":
        root = _cvat(tmp_path / "cvat", {"x": _ids(1)})
        (root / "labelmap.txt").write_text("background:0,0,0::\nskin:204,204,255::\n")
        return root, "x.png: colour(s) not in the palette"
    if kind == "labelme label not in --classes":
        path = _labelme(tmp_path / "lm" / "a.json", [("hat", "rectangle", [[0, 0], [3, 3]])])
        return path, "a.json: shape 0 has label 'hat'"
    raise ValueError(kind)


BAD = ["polygon outside the image", "unknown category id", "COCO image without its size", "missing image file",
       "two images of one stem", "empty labelmap",
       "colour not in the labelmap"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_export_is_a_data_error_naming_the_file(tmp_path, kind):
    path, message = _bad_export(tmp_path, kind)
    with pytest.raises(DataError) as e:
        export = open_export(str(path), str(tmp_path / "images") if path.suffix == ".json" else None)
        export.write(str(tmp_path / "out"), log=lambda _: None)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("kind", [*BAD, "labelme label not in --classes"])
def test_bad_export_through_new_experiment_is_one_error_line(tmp_path, tiny64_checkpoint, monkeypatch, capsys, kind):
    path, message = _bad_export(tmp_path / "data", kind)
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    monkeypatch.chdir(tmp_path)
    extra = ["--images", str(tmp_path / "data" / "images")] if path.suffix == ".json" else []
    extra += ["--classes", "classes.txt"] if "labelme" in kind else []
    assert new_experiment.main(["--name", "bad", "--masks", str(path), "--model_path", str(tiny64_checkpoint),
                                "--steps", "50", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "experiments" / "bad").exists() and not list(tmp_path.glob("experiments/.*"))


# ---------- each format: new_experiment.py -> train_interpreter.py -> segment.py ----------

S = 64  # the tiny U-Net's resolution; training needs square images
# A short but complete training: one member, one epoch.
ONE_EPOCH = ["--set", "model_num=1", "--set", "max_epochs=1", "--set", "early_stop_after_epoch=0"]


def _square_ids(seed, k):
    """Blocky class maps (8 px cells), every class present."""
    cells = np.random.default_rng(seed).integers(0, k, (8, 8))
    cells.ravel()[:k] = np.arange(k)
    return np.kron(cells, np.ones((8, 8), np.int64))


def _export_cvat(root):
    truth = {f"f{i}": _square_ids(i, 4) for i in range(4)}
    return ["--masks", str(_cvat(root / "cvat", truth, subsets={"train": ["f0", "f1", "f2"], "test": ["f3"]}))]


def _export_voc(root):
    for i in range(4):
        _voc_png(root / "VOC" / "SegmentationClass" / f"{i}.png", np.where(_voc_ids(i, S, S) == 255, 255,
                                                                            _square_ids(i, 3)))
        _image(root / "VOC" / "JPEGImages" / f"{i}.jpg", S, S, seed=i)
    (root / "VOC" / "class_names.txt").write_text("_background_\npotted plant\ndining table\n")
    return ["--masks", str(root / "VOC")]


def _export_coco(root):
    anns = [{"category_id": 1, "segmentation": [[8, 8, 40, 8, 40, 40, 8, 40]]},
            {"category_id": 2, "segmentation": [[30, 30, 60, 30, 45, 60]]}]
    images, annotations = [], []
    for i in range(4):
        _image(root / "coco" / f"{i}.jpg", S, S, seed=i)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": S, "height": S})
        annotations += [{"id": len(annotations) + k, "image_id": i, **a} for k, a in enumerate(anns)]
    (root / "coco" / "_annotations.coco.json").write_text(json.dumps({  # images beside it, as Roboflow exports
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "red car"}, {"id": 2, "name": "tree"}]}))
    return ["--masks", str(root / "coco")]  # the folder: its one COCO JSON is found


def _export_labelme(root):
    for i in range(4):
        _labelme(root / "lm" / f"{i}.json", [("sea water", "polygon", [[0, 30], [63, 30], [63, 63], [0, 63]]),
                                             ("boat", "rectangle", [[10 + i, 20], [30, 40]]),
                                             ("sun", "circle", [[50, 10], [50, 16]])], image_path=f"{i}.jpg",
                 w=S, h=S)
    return ["--masks", str(root / "lm")]


@pytest.mark.parametrize("fmt,classes", [("cvat", 4), ("voc", 3), ("coco", 3), ("labelme", 4)])
def test_each_format_trains_and_segments_without_hand_conversion(tmp_path, tiny64_checkpoint, monkeypatch, capsys,
                                                                  fmt, classes):
    masks = globals()[f"_export_{fmt}"](tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert new_experiment.main(["--name", fmt, *masks, "--model_path", str(tiny64_checkpoint), "--steps", "50",
                                "--test_fraction", "0.25"]) == 0
    cfg = load_config(f"experiments/{fmt}/ddpm.json")
    # CVAT's export has train.txt and test.txt: its own split; the others are split by --test_fraction
    assert cfg["testing_path"] == f"experiments/{fmt}/" + ("data/test" if fmt == "cvat" else "split/test")
    assert cfg["number_class"] == classes and (cfg["training_number"], cfg["testing_number"]) == (3, 1)
    assert cfg["ignore_label"] == (255 if fmt == "voc" else None)
    shutil.rmtree(tmp_path / "data")  # the experiment holds its converted data: nothing points back
    assert train_interpreter.main(["--exp", f"experiments/{fmt}/ddpm.json", *ONE_EPOCH]) == 0
    run = next((tmp_path / "pixel_classifiers" / fmt).iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 1
    shots = tmp_path / "shots"
    _image(shots / "wide.jpg", 90, 50)
    assert segment.main(["--run", str(run), "--images", str(shots), "--out", "segmented"]) == 0
    assert Image.open(tmp_path / "segmented" / "wide.png").size == (90, 50)


def test_coco_train_and_val_files_give_the_train_and_test_splits(tmp_path):
    train = _coco(tmp_path / "train", [{"category_id": 3, "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]]}])
    val = _coco(tmp_path / "val", [{"category_id": 7, "segmentation": [[12, 0, 20, 0, 12, 8]]}])
    export = open_export(str(train), str(tmp_path / "train" / "images"), test_masks=str(val),
                         test_images=str(tmp_path / "val" / "images"))
    masks = _converted(export, tmp_path)
    assert masks.keys() == {"train/img0", "test/img0"}
    assert set(np.unique(masks["train/img0"])) == {0, 1} and set(np.unique(masks["test/img0"])) == {0, 2}
    with pytest.raises(DataError, match="pass the test annotations"):  # an export with plain test folders
        open_export(str(train), str(tmp_path / "train" / "images"), test_images=str(tmp_path / "val" / "images"))


def test_more_than_255_classes_are_written_as_16_bit_masks(tmp_path):
    categories = [{"id": i, "name": f"part {i}"} for i in range(1, 301)]
    ids = _coco_ids(tmp_path, [{"category_id": 300, "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]]}],
                    categories=categories, names=None)
    assert ids.dtype == np.uint16 and ids[3, 2] == 300 and ids[0, 0] == 0


def test_labelme_windows_image_path(tmp_path):
    json_path = _labelme(tmp_path / "lm" / "b.json", [("boat", "rectangle", [[0, 0], [3, 3]])], "pics/b.png")
    data = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**data, "imagePath": "pics\\b.png"}))  # as LabelMe on Windows saves it
    assert _converted(open_export(str(tmp_path / "lm"), None), tmp_path)["train/b"][:4, :4].tolist() == [[1] * 4] * 4
