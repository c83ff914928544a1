"""ddpmseg.data.folders's image and mask formats, on shapes64 files converted as users have them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import shapes64
from ddpmseg.data.classes import dataset_classes, distinct_palette
from ddpmseg.data.folders import DataError, ImageLabelDataset, load_rgb, mask_palette, read_mask, to_rgb


@pytest.fixture(scope="module")
def face():
    """(RGB uint8 [64, 64, 3], class ids uint8 [64, 64], palette) of the first shapes64 training image."""
    folder = shapes64() / "real" / "train"
    png = sorted(folder.glob("*.png"))[0]
    palette = json.loads((shapes64() / "classes.json").read_text())["palette_rgb"]
    return np.array(Image.open(png).convert("RGB")), np.load(png.with_suffix(".npy")), palette


@pytest.mark.parametrize("ext", ["png", "webp", "bmp", "tif"])
def test_lossless_formats_load_the_same_pixels(tmp_path, face, ext):
    rgb = face[0]
    path = tmp_path / f"x.{ext}"
    Image.fromarray(rgb).save(path, **({"lossless": True} if ext == "webp" else {}))
    assert np.array_equal(np.array(load_rgb(str(path))), rgb)


def test_grey_16bit_rgba_cmyk_and_exif_load_as_a_viewer_shows_them(tmp_path, face):
    rgb = face[0]
    grey = np.array(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(np.array(load_rgb(str(tmp_path / "grey.png"))), np.repeat(grey[..., None], 3, 2))
    # 16-bit grey: value g*257 is the 16-bit spelling of 8-bit g
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert np.array_equal(np.array(load_rgb(str(tmp_path / "grey16.png")))[..., 0], grey)
    # transparency shows the white page behind it; opaque pixels keep their colour
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    got = np.array(load_rgb(str(tmp_path / "rgba.png")))
    assert (got[:10] == 255).all() and np.array_equal(got[10:], rgb[10:])
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    assert np.array_equal(np.array(load_rgb(str(tmp_path / "cmyk.tif"))), np.array(cmyk.convert("RGB")))
    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": stored pixels are turned the other way
    shown = Image.fromarray(rgb[:, :40])
    exif = Image.Exif()
    exif[0x0112] = 6
    # no chroma subsampling: the textures' colour edges would otherwise blur past the bound below
    shown.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", exif=exif, quality=100, subsampling=0)
    loaded = load_rgb(str(tmp_path / "turned.jpg"))
    assert loaded.size == (40, 64)
    assert np.abs(np.array(loaded).astype(int) - rgb[:, :40]).mean() < 3  # JPEG noise only, not a turned image


def test_every_mask_format_gives_the_npy_ids(tmp_path, face):
    _, ids, palette = face
    Image.fromarray(ids).save(tmp_path / "l.png")
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "i16.png")
    p = Image.fromarray(ids, "P")
    p.putpalette([v for c in palette for v in c])
    p.save(tmp_path / "p.png")
    Image.fromarray(np.asarray(palette, np.uint8)[ids]).save(tmp_path / "rgb.png")
    np.save(tmp_path / "ids.npy", ids)
    for name in ("l.png", "i16.png", "p.png", "rgb.png", "ids.npy"):
        assert np.array_equal(read_mask(str(tmp_path / name), palette), ids), name


def test_unknown_colour_names_file_colour_and_pixel_count(tmp_path, face):
    _, ids, palette = face
    rgb = np.asarray(palette, np.uint8)[ids]
    rgb[0, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError) as e:
        read_mask(str(tmp_path / "m.png"), palette)
    assert "m.png" in str(e.value) and "(1, 2, 3) on 3 pixels" in str(e.value)
    # Seven stray colours: the five most frequent named, most pixels first, then how many more there are.
    for k in range(7):
        rgb[1 + k, :k + 1] = (k + 1, 0, 99)  # colour k + 1 on k + 1 pixels
    rgb[0, :3] = palette[ids[0, 0]]
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError) as e:
        read_mask(str(tmp_path / "m.png"), palette)
    named = ", ".join(f"({k}, 0, 99) on {k} pixels" for k in (7, 6, 5, 4, 3))
    assert f"colour(s) not in the palette: {named} and 2 more colours; paint" in str(e.value)
    with pytest.raises(DataError, match="needs the class colours"):
        read_mask(str(tmp_path / "m.png"), None)


def _two_folders(root, n=3, split="train"):
    """images/*.jpg + masks/*.png (RGB palette colours) of the first n shapes64 images of ``split``."""
    src = shapes64() / "real" / split
    palette = json.loads((shapes64() / "classes.json").read_text())["palette_rgb"]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for png in sorted(src.glob("*.png"))[:n]:
        Image.open(png).convert("RGB").save(root / "images" / f"{png.stem}.jpg", quality=95)
        Image.fromarray(np.asarray(palette, np.uint8)[np.load(png.with_suffix(".npy"))]).save(
            root / "masks" / f"{png.stem}.png")
    return palette


def test_two_folder_layout_reads_jpegs_and_rgb_masks(tmp_path, face):
    palette = _two_folders(tmp_path / "d")
    src = shapes64() / "real" / "train"
    for ds in (ImageLabelDataset(str(tmp_path / "d"), 64, number_class=19, ignore_label=None, palette=palette),
               ImageLabelDataset(str(tmp_path / "d" / "images"), 64, number_class=19, ignore_label=None,
                                 palette=palette, masks_dir=str(tmp_path / "d" / "masks"))):
        assert len(ds) == 3
        for i in range(3):
            item = ds[i]
            assert np.array_equal(item["label"].numpy(), np.load(src / f"{item['stem']}.npy"))


@pytest.mark.parametrize("breakage,message", [
    ("orphan", "have no image of the same stem"),
    ("missing", "no mask"),
    ("jpeg_mask", "JPEG is lossy"),
    ("jpeg_long_suffix", "JPEG is lossy"),
    ("two_masks", "several masks"),
    ("size", "does not match the image's (H, W) (64, 64)"),
    ("colour", "on 1 pixels"),
])
def test_two_folder_layout_errors(tmp_path, breakage, message):
    palette = _two_folders(tmp_path / "d")
    masks = sorted((tmp_path / "d" / "masks").glob("*.png"))
    if breakage == "orphan":
        shutil.move(masks[0], masks[0].with_name("not_an_image_stem.png"))
    elif breakage == "missing":
        masks[1].unlink()
    elif breakage in ("jpeg_mask", "jpeg_long_suffix"):
        Image.open(masks[1]).save(masks[1].with_suffix(".jpg" if breakage == "jpeg_mask" else ".JPEG"), "JPEG")
        masks[1].unlink()
    elif breakage == "two_masks":
        Image.open(masks[1]).save(masks[1].with_suffix(".bmp"))
    elif breakage == "size":
        Image.open(masks[1]).resize((48, 64), Image.Resampling.NEAREST).save(masks[1])
    else:
        rgb = np.array(Image.open(masks[2]))
        rgb[5, 5] = (9, 9, 9)
        Image.fromarray(rgb).save(masks[2])
    with pytest.raises(DataError) as e:
        ImageLabelDataset(str(tmp_path / "d"), 64, number_class=19, ignore_label=None, palette=palette)
    assert message in str(e.value)


def test_masks_folder_may_be_the_images_folder_with_npy_labels():
    folder = shapes64() / "real" / "train"
    ds = ImageLabelDataset(str(folder), 64, number_class=19, ignore_label=None, masks_dir=str(folder))
    assert len(ds) == 20 and np.array_equal(ds[0]["label"].numpy(), np.load(folder / f"{ds[0]['stem']}.npy"))


def _palette_masks(root, ids, colours):
    """images/ + masks/ of one image whose mask is a palette PNG of ``ids`` carrying ``colours``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", ids.shape[::-1]).save(root / "images" / "a.png")
    mask = Image.fromarray(ids, "P")
    if colours is not None:
        mask.putpalette([v for c in colours for v in c])
    mask.save(root / "masks" / "a.png")


def test_a_png_palette_gives_the_class_colours_when_no_classes_file_does(tmp_path, face):
    _, ids, palette = face
    three = np.minimum(ids, 2).astype(np.uint8)
    own = [[10, 20, 30], [200, 0, 0], [0, 0, 250]] + [[0, 0, 0]] * 253
    _palette_masks(tmp_path / "own", three, own)
    assert mask_palette(str(tmp_path / "own" / "masks" / "a.png")) == own
    found = dataset_classes(str(tmp_path / "own" / "images"), str(tmp_path / "own" / "masks"), None, None)
    assert (found.names, found.palette, found.ignore_label) == (["class_0", "class_1", "class_2"], own[:3], None)
    assert found.ignore_source.startswith("none given")
    # a palette whose first colours repeat cannot tell the classes apart: the VOC colour map instead
    _palette_masks(tmp_path / "flat", three, [[7, 7, 7]] * 256)
    assert dataset_classes(str(tmp_path / "flat" / "images"), str(tmp_path / "flat" / "masks"), None,
                           None).palette == distinct_palette(3)
    # the grey ramp PIL writes for a P image given no colours, and non-palette masks, carry none
    Image.fromarray(three, "L").convert("P").save(tmp_path / "ramp.png")
    Image.fromarray(three, "L").save(tmp_path / "grey.png")
    np.save(tmp_path / "ids.npy", three)
    assert [mask_palette(str(tmp_path / n)) for n in ("ramp.png", "grey.png", "ids.npy")] == [None, None, None]
    # --ignore_label wins over everything the files say
    voc = distinct_palette(256)
    _palette_masks(tmp_path / "voc", np.where(ids == 0, 255, np.minimum(ids, 2)).astype(np.uint8), voc)
    found = dataset_classes(str(tmp_path / "voc" / "images"), str(tmp_path / "voc" / "masks"), None, None)
    assert (found.ignore_label, found.names) == (255, ["class_0", "class_1", "class_2"])
    assert dataset_classes(str(tmp_path / "voc" / "images"), str(tmp_path / "voc" / "masks"), None,
                           0).ignore_source == "--ignore_label"


@pytest.mark.parametrize("ext,ignore", [("png", 255), ("npy", -1)])
def test_labelme2voc_ignore_is_255_in_its_pngs_and_minus_1_in_its_npy_masks(tmp_path, ext, ignore):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    label = np.zeros((8, 8), np.int32)
    label[:2], label[4:] = -1, 1  # labelme2voc's label array: -1 where __ignore__ was drawn
    if ext == "npy":
        np.save(tmp_path / "masks" / "a.npy", label)
    else:
        png = Image.fromarray(label.astype(np.uint8), "P")
        png.putpalette([v for c in distinct_palette(256) for v in c])  # labelme2voc's colour map: VOC's
        png.save(tmp_path / "masks" / "a.png")
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\nperson\n")
    found = dataset_classes(str(tmp_path / "images"), str(tmp_path / "masks"), str(tmp_path / "labels.txt"), None)
    assert (found.names, found.ignore_label) == (["_background_", "person"], ignore)
    ds = ImageLabelDataset(str(tmp_path / "images"), 8, number_class=2, ignore_label=ignore,
                           masks_dir=str(tmp_path / "masks"))
    assert (ds[0]["label"].numpy()[:2] == ignore).all() and ds[0]["label"].numpy()[4:].min() == 1


def test_32bit_grey_is_clipped_and_every_transparent_mode_shows_white(tmp_path):
    # 32-bit integer grey ("I", as TIFF stores it) may hold values outside 0..65535: they show black or white.
    Image.fromarray(np.array([[-500, 0, 257 * 100, 65535, 70000]], np.int32), "I").save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert np.array(load_rgb(str(tmp_path / "i32.tif")))[0, :, 0].tolist() == [0, 0, 100, 255, 255]
    # Grey + alpha, palette + alpha and a palette with a transparent index: the transparent pixel (left) shows
    # the white page, the opaque one (right) its own colour.
    grey = Image.fromarray(np.array([[10, 200]], np.uint8))
    grey_alpha = grey.copy()
    grey_alpha.putalpha(Image.fromarray(np.array([[0, 255]], np.uint8)))
    grey_alpha.save(tmp_path / "la.png")
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 0, 0])
    palette_alpha = palette.convert("PA")
    palette_alpha.putalpha(Image.fromarray(np.array([[0, 255]], np.uint8)))
    palette.save(tmp_path / "p_transparent.png", transparency=0)
    for name, image, opaque in (("la.png", None, (200, 200, 200)), ("pa", palette_alpha, (200, 0, 0)),
                                ("p_transparent.png", None, (200, 0, 0))):
        loaded = load_rgb(str(tmp_path / name)) if image is None else to_rgb(image)
        assert np.array(loaded).tolist() == [[[255, 255, 255], list(opaque)]], name
    # A palette image without transparency is its palette's colours.
    assert np.array(to_rgb(palette)).tolist() == [[[10, 20, 30], [200, 0, 0]]]


def test_rgba_and_one_bit_masks_give_ids_and_pickled_npy_is_refused(tmp_path, face):
    _, ids, palette = face
    rgba = np.dstack([np.asarray(palette, np.uint8)[ids], np.full(ids.shape, 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_mask(str(tmp_path / "rgba.png"), palette), ids)
    Image.fromarray(ids > 0).save(tmp_path / "binary.png")  # a 1-bit PNG: its ids are 0 and 1
    assert Image.open(tmp_path / "binary.png").mode == "1"
    one_bit = read_mask(str(tmp_path / "binary.png"))
    assert one_bit.dtype == np.int64 and np.array_equal(one_bit, (ids > 0).astype(np.int64))
    # An object array needs pickle, which runs code from the file: never loaded.
    np.save(tmp_path / "pickled.npy", np.array([{"ids": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled.npy: cannot be read as a .npy array"):
        read_mask(str(tmp_path / "pickled.npy"))


def test_a_short_png_palette_reads_as_256_colours_the_rest_black(tmp_path):
    mask = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), "P")
    mask.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 250])
    mask.save(tmp_path / "m.png")
    assert len(Image.open(tmp_path / "m.png").getpalette()) == 9  # the file stores 3 colours
    assert mask_palette(str(tmp_path / "m.png")) == [[10, 20, 30], [200, 0, 0], [0, 0, 250]] + [[0, 0, 0]] * 253
