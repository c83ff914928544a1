"""ddpmseg.data.folders: folder listing, up-front validation, transforms, small-region removal."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CELEBAMASK64, require
from ddpmseg.data.folders import (DataError, ImageLabelDataset, drop_small_regions, list_image_files,
                                  nearest_resize, resolve_folders, trained_pixels)


def _write_pair(folder, stem, size=(8, 8), label=None, ext="png", seed=0):
    """A random RGB image of ``size`` (W, H) and, unless label is False, a uint8 label."""
    os.makedirs(folder, exist_ok=True)
    w, h = size
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(os.path.join(folder, f"{stem}.{ext}"))
    if label is not False:
        lab = np.zeros((h, w), np.uint8) if label is None else label
        np.save(os.path.join(folder, f"{stem}.npy"), lab)
    return rgb


def _error(tmp_path, **kw) -> str:
    with pytest.raises(DataError) as e:
        ImageLabelDataset(str(tmp_path), 8, **kw)
    return str(e.value)


# --- the real data ---------------------------------------------------------------------------

def test_celebamask64_train_loads():
    folder = require(CELEBAMASK64) / "real" / "train"
    ds = ImageLabelDataset(str(folder), 64, number_class=19, ignore_label=None)
    assert len(ds) == 20
    stems = [ds[i]["stem"] for i in range(len(ds))]
    assert stems == sorted(stems)
    for i in (0, 19):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
        assert 0 <= item["label"].min() and item["label"].max() < 19
        raw = np.load(folder / f"{item['stem']}.npy")
        assert np.array_equal(item["label"].numpy(), raw)
        rgb = np.array(Image.open(folder / f"{item['stem']}.png").convert("RGB"))
        expect = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 * 2 - 1
        assert torch.allclose(item["image"], expect, atol=1e-6)


# --- listing rule ----------------------------------------------------------------------------

def test_list_image_files_rule(tmp_path):
    for name in ["b.png", "a.PNG", "c.jpeg", "d.Gif", "e.jpg", "b.png.txt", "noext", "x.npy", "png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "z.jpg").write_bytes(b"")
    (tmp_path / "sub" / "deeper" / "y.png").write_bytes(b"")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "k.png").write_bytes(b"")
    got = [os.path.relpath(p, tmp_path) for p in list_image_files(str(tmp_path))]
    # depth-first over sorted names at each level: folder "c" comes before "c.jpeg", although
    # a global sort of the paths would put "c.jpeg" first ('.' < '/')
    assert got == ["a.PNG", "b.png", "c/k.png", "c.jpeg", "d.Gif", "e.jpg",
                   "sub/deeper/y.png", "sub/z.jpg"]


def test_dataset_sorts_full_list_and_caps(tmp_path):
    _write_pair(tmp_path / "b", "1")
    _write_pair(tmp_path, "b")
    _write_pair(tmp_path, "a")
    ds = ImageLabelDataset(str(tmp_path), 8)
    # the dataset re-sorts the full path list, like sorted(_list_image_files_recursively(...))
    assert [os.path.relpath(p, tmp_path) for p in ds.image_paths] == ["a.png", "b.png", "b/1.png"]
    assert len(ImageLabelDataset(str(tmp_path), 8, num_images=2)) == 2
    assert len(ImageLabelDataset(str(tmp_path), 8, num_images=0)) == 3
    # More than the folder holds is an error naming the count's config key and both numbers.
    with pytest.raises(DataError, match=r"'training_number' is 10, but .* holds only 3 images: set 'training_number' "
                                        r"to at most 3"):
        ImageLabelDataset(str(tmp_path), 8, num_images=10, count_key="training_number")


# --- validation errors -----------------------------------------------------------------------

def test_missing_folder(tmp_path):
    msg = _error(tmp_path / "nope")
    assert "not found" in msg and "nope" in msg


def test_no_images(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    msg = _error(tmp_path)
    assert "no images" in msg and ".png" in msg and ".jpeg" in msg


def test_missing_labels_listed(tmp_path):
    for i in range(7):
        _write_pair(tmp_path, f"img{i}", label=False if i else None)
    msg = _error(tmp_path)
    assert "6 of 7 images have no label" in msg
    assert "img1.npy" in msg and "and 1 more" in msg and "img0.npy" not in msg
    # unlabelled folders are fine when labels are not required
    ds = ImageLabelDataset(str(tmp_path), 8, require_labels=False)
    assert len(ds) == 7 and "label" not in ds[3]


def test_corrupt_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    np.save(tmp_path / "bad.npy", np.zeros((8, 8), np.uint8))
    msg = _error(tmp_path)
    assert "bad.png" in msg and "cannot be read as an image" in msg


def test_corrupt_label(tmp_path):
    _write_pair(tmp_path, "a", label=False)
    (tmp_path / "a.npy").write_bytes(b"garbage")
    msg = _error(tmp_path)
    assert "a.npy" in msg and "cannot be read as a .npy" in msg


def test_non_square_image_is_cut_into_working_windows(tmp_path):
    """A 10x8 (WxH) image at working side 4: scaled to 5x4, its label by nearest neighbour to match,
    two 4x4 windows at left 0 and 1; the own-size label stays as the file holds it."""
    label = np.arange(80, dtype=np.uint8).reshape(8, 10) % 3
    _write_pair(tmp_path, "wide", size=(10, 8), label=label)
    ds = ImageLabelDataset(str(tmp_path), 4, number_class=3)
    item = ds[0]
    assert item["image"].shape == (3, 4, 5) and ds.tiling(0).windows == [(0, 0), (0, 1)]
    # nearest rows 0, 2, 4, 6 and columns 0, 2, ..., 8 (OpenCV's floor(dst * 2))
    assert np.array_equal(item["label"].numpy(), label[::2, ::2])
    assert np.array_equal(item["own_label"].numpy(), label)
    windows = list(ds.windows())
    assert [name for name, _, _ in windows] == ["wide (window 1 of 2)", "wide (window 2 of 2)"]
    assert torch.equal(windows[1][1], item["image"][:, :, 1:5])
    assert np.array_equal(windows[1][2].numpy(), label[::2, 2::2])
    assert ds.window_count() == 2


@pytest.mark.parametrize("size", [(10, 8), (8, 10), (7, 13), (13, 7), (100, 3), (9, 9)])
def test_scaled_hw_is_the_image_transforms_size(size):
    from ddpmseg.data.folders import image_transform
    from ddpmseg.data.windows import scaled_hw

    image = Image.new("RGB", size)
    for side in (4, 5, 64):
        assert tuple(image_transform(side)(image).shape[1:]) == scaled_hw(*size, side)


def test_label_shape_mismatch(tmp_path):
    _write_pair(tmp_path, "a", label=np.zeros((8, 7), np.uint8))
    msg = _error(tmp_path)
    assert "a.npy" in msg and "(8, 7)" in msg and "(8, 8)" in msg


def test_label_values_out_of_range(tmp_path):
    lab = np.zeros((8, 8), np.int16)
    lab[0, :3] = [5, 255, 7]
    lab[1, 0] = -2
    _write_pair(tmp_path, "a", label=lab)
    msg = _error(tmp_path, number_class=5, ignore_label=255)
    assert ("a.npy: label values [-2, 5, 7] are invalid with number_class=5 (allowed: 0..4 or the ignore_label "
            "255); fix the labels or the config") in msg
    # without an ignore label, 255 is invalid as well, and the message says how to ignore it
    msg = _error(tmp_path, number_class=5, ignore_label=None)
    assert "[-2, 5, 7, 255] are invalid with number_class=5 (allowed: 0..4); fix" in msg
    assert "pass --ignore_label 255" in msg
    assert "--ignore_label" not in _error(tmp_path, number_class=256, ignore_label=None)  # 255 valid: no hint
    lab[lab < 0] = 0
    lab[lab > 4] = 255
    _write_pair(tmp_path, "a", label=lab)
    ds = ImageLabelDataset(str(tmp_path), 8, number_class=5, ignore_label=255)
    assert ds[0]["label"][0, 1] == 255  # ignore pixels keep their raw id


def test_negative_labels_rejected_without_number_class(tmp_path):
    _write_pair(tmp_path, "a", label=np.full((8, 8), -1, np.int8))
    assert "[-1] are invalid with number_class=None (allowed: >= 0);" in _error(tmp_path)


def test_float_label_dtype(tmp_path):
    _write_pair(tmp_path, "a", label=np.zeros((8, 8), np.float32))
    msg = _error(tmp_path, number_class=3)
    assert "a.npy" in msg and "float32" in msg and "integer" in msg


def test_all_problems_in_one_message(tmp_path):
    _write_pair(tmp_path, "a", label=np.zeros((8, 7), np.uint8))
    _write_pair(tmp_path, "b", label=np.full((8, 8), 9, np.uint8))
    msg = _error(tmp_path, number_class=3)
    assert msg.startswith("2 problem(s)") and "a.npy" in msg and "b.npy" in msg


# --- resizing --------------------------------------------------------------------------------

def test_resize_path_image_and_label(tmp_path):
    lab = np.arange(32 * 32, dtype=np.int64).reshape(32, 32) % 7
    rgb = _write_pair(tmp_path, "a", size=(32, 32), label=lab)
    item = ImageLabelDataset(str(tmp_path), 16, number_class=7)[0]
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (16, 16)
    idx = np.floor(np.arange(16) * 32 / 16).astype(int)
    assert np.array_equal(item["label"].numpy(), lab[idx][:, idx])
    expect = np.asarray(Image.fromarray(rgb).resize((16, 16), Image.BILINEAR))
    got = ((item["image"] + 1) / 2 * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(got - expect).max() <= 1


@pytest.mark.parametrize("src,dst", [(32, 16), (5, 3), (3, 7), (100, 64), (64, 256)])
def test_nearest_resize_floor_rule(src, dst):
    lab = np.arange(src * src).reshape(src, src)
    idx = np.minimum((np.arange(dst) * src) // dst, src - 1)
    assert np.array_equal(nearest_resize(lab, dst), lab[idx][:, idx])


# --- small-region removal --------------------------------------------------------------------

def test_drop_small_regions_with_ignore_label():
    lab = np.zeros((10, 10), np.uint8)
    lab[0, :5] = 1      # 5 px: dropped
    lab[1:4, :] = 2     # 30 px: kept
    lab[5, 0] = 255     # ignore: never counted
    out, dropped = drop_small_regions(lab, 255, 20)
    assert dropped == [(1, 5)]
    assert out.dtype == np.uint8 and (out[0, :5] == 255).all() and (out[1:4] == 2).all()
    assert (lab[0, :5] == 1).all()  # the input is not modified


def test_drop_small_regions_without_ignore_label_and_tensor():
    lab = torch.zeros(10, 10, dtype=torch.uint8)
    lab[0, :3] = 4
    out, dropped = drop_small_regions(lab, None, 20)
    assert isinstance(out, torch.Tensor) and dropped == [(4, 3)]
    assert out.dtype == torch.int64 and (out[0, :3] == -1).all() and (out[1:] == 0).all()
    out2, dropped2 = drop_small_regions(out, None, 20, fill=-1)
    assert dropped2 == [] and torch.equal(out2, out)  # markers are not relabelled again


def test_drop_small_regions_ignore_zero_like_bedroom():
    lab = np.zeros((10, 10), np.int64)  # class 0 is the ignore label: never dropped
    lab[0, 0] = 3
    out, dropped = drop_small_regions(lab, 0, 20)
    assert dropped == [(3, 1)] and (out == 0).all()


@pytest.mark.parametrize("ignore", [255, None])
def test_trained_pixels_leave_out_the_ignore_label_and_small_regions(ignore):
    lab = np.full((4, 4), 2, np.int64)
    lab[0, 0] = 1  # a 1-pixel region: left out at min_pixels 2
    lab[3, 3] = 255 if ignore is not None else 3  # the ignore label, or a second small region without one
    flat, keep, dropped = trained_pixels(lab, ignore, 2)
    assert keep.tolist() == list(range(1, 15)) and (flat[keep] == 2).all()
    assert dropped == ([(1, 1)] if ignore is not None else [(1, 1), (3, 1)])
    _, keep_all, _ = trained_pixels(lab, ignore, 0)  # no size rule: only the ignore label is left out
    assert keep_all.tolist() == list(range(15 if ignore is not None else 16))


def test_binary_0_255_masks_read_as_two_classes_only_when_that_is_unambiguous(tmp_path):
    lab = np.zeros((8, 8), np.uint8)
    lab[2:6, 2:6] = 255
    _write_pair(tmp_path, "a", label=lab)
    _write_pair(tmp_path, "b", label=np.zeros((8, 8), np.uint8), seed=1)  # all background: 0/1 either way
    ds = ImageLabelDataset(str(tmp_path), 8, number_class=2, ignore_label=None)
    assert np.array_equal(ds[0]["label"].numpy(), (lab == 255).astype(np.int64))
    assert [os.path.basename(p) for p in ds.binary_masks] == ["a.npy"]
    # with 255 the ignore label (a config's default), or more than two classes, 255 keeps its meaning
    kept = ImageLabelDataset(str(tmp_path), 8, number_class=2, ignore_label=255)
    assert kept[0]["label"][3, 3] == 255 and kept.binary_masks == []
    assert "[255]" in _error(tmp_path, number_class=3, ignore_label=None)
    # a mask holding a third value is no binary mask: 255 stays invalid
    lab[0, 0] = 1
    _write_pair(tmp_path, "a", label=lab)
    assert "[255]" in _error(tmp_path, number_class=2, ignore_label=None)


def test_small_region_removal_keeps_a_region_of_exactly_min_pixels():
    """The threshold is "fewer than min_pixels": a class on exactly min_pixels pixels trains, one on a
    pixel fewer goes to the ignore label."""
    label = np.zeros((8, 8), dtype=np.uint8)
    label[0, :5] = 1  # exactly 5 pixels
    label[1, :4] = 2  # one fewer
    out, dropped = drop_small_regions(label, ignore_label=255, min_pixels=5)
    expected = label.copy()
    expected[label == 2] = 255
    np.testing.assert_array_equal(out, expected)
    assert dropped == [(2, 4)]


def test_drop_small_regions_keeps_the_dtype_when_the_marker_is_its_smallest_value():
    label = np.ones((4, 4), np.uint8)
    label[0, 0] = 3
    out, dropped = drop_small_regions(label, ignore_label=0, min_pixels=2)  # 0 is uint8's smallest value
    assert out.dtype == np.uint8 and dropped == [(3, 1)] and out[0, 0] == 0


def test_trained_pixels_are_int64_labels():
    flat, keep, _ = trained_pixels(np.array([[1, 2], [2, 255]], np.uint8), 255, 0)
    assert flat.dtype == np.int64 and flat.tolist() == [1, 2, 2, 255] and keep.tolist() == [0, 1, 2]


def test_names_with_several_dots_are_images_and_masks_by_their_last_suffix(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("face.001", "face.002"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(np.full((8, 8), int(stem[-1]), np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    ds = ImageLabelDataset(str(tmp_path), 8, number_class=3)
    assert [os.path.basename(p) for p in list_image_files(str(tmp_path / "images"))] == ["face.001.png", "face.002.png"]
    assert [(ds[i]["stem"], int(ds[i]["label"][0, 0])) for i in range(2)] == [("face.001", 1), ("face.002", 2)]


def test_items_counts_and_window_names(tmp_path):
    for i in range(3):
        _write_pair(tmp_path, f"img{i}", seed=i)
    _write_pair(tmp_path / "wide", "w", size=(16, 8))
    paths = sorted(list_image_files(str(tmp_path)))
    assert len(ImageLabelDataset(str(tmp_path), 8, num_images=len(paths))) == len(paths)  # all of them: no error
    one = ImageLabelDataset(str(tmp_path), 8, num_images=1)
    assert one.image_paths == paths[:1] and one[0]["path"] == paths[0]
    # The image at its own size, in [-1, 1], beside the resized item.
    wide = ImageLabelDataset(str(tmp_path / "wide"), 8)
    rgb = np.asarray(Image.open(tmp_path / "wide" / "w.png"), np.float32)
    assert torch.allclose(wide.own_image(0), torch.from_numpy(rgb / 255 * 2 - 1).permute(2, 0, 1), atol=1e-6)
    # An image of one window is named by its stem; a larger one's windows by their number.
    assert [name for name, _, _ in ImageLabelDataset(str(tmp_path), 8, num_images=2).windows()] == ["img0", "img1"]
    n = wide.windows_per_image()[0]  # overlapping windows across the 16 px width (ddpmseg.data.windows)
    assert n > 1 and [name for name, _, _ in wide.windows()] == [f"w (window {j} of {n})" for j in range(1, n + 1)]
    # Unlabelled: no label files, and every image's size still read.
    unlabelled = ImageLabelDataset(str(tmp_path), 8, require_labels=False)
    assert unlabelled.label_paths == {} and len(unlabelled.sizes) == len(paths) == 4


def test_every_unreadable_image_and_mask_is_named(tmp_path):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        np.save(tmp_path / f"{stem}.npy", np.zeros((8, 8), np.uint8))
    msg = _error(tmp_path)
    assert msg.startswith("2 problem(s)") and "a.png: cannot" in msg and "b.png: cannot" in msg
    for stem in ("a", "b"):
        _write_pair(tmp_path, stem, label=False)
        (tmp_path / f"{stem}.npy").write_bytes(b"garbage")
    msg = _error(tmp_path)
    assert msg.startswith("2 problem(s)") and "a.npy: cannot" in msg and "b.npy: cannot" in msg


def test_resolve_folders_takes_images_and_masks_only_when_both_exist(tmp_path):
    (tmp_path / "images").mkdir()
    assert resolve_folders(str(tmp_path)) == (str(tmp_path), None)
    (tmp_path / "masks").mkdir()
    assert resolve_folders(str(tmp_path)) == (str(tmp_path / "images"), str(tmp_path / "masks"))
    assert resolve_folders(str(tmp_path / "images"), str(tmp_path / "masks")) == (
        str(tmp_path / "images"), str(tmp_path / "masks"))
