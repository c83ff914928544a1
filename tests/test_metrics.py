"""ddpmseg.common.metrics: the published dataset-level IoU semantics, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmseg.common.metrics import IoUAccumulator, iou_table_markdown


def test_hand_computed_example():
    # 4 classes, ignore 255. Class 3 is absent from GT and prediction.
    gt = np.array([[0, 0, 1],
                   [1, 2, 255]])
    pred = np.array([[0, 1, 1],
                     [1, 2, 2]])
    acc = IoUAccumulator(4, 255, ["bg", "a", "b", "c"])
    acc.update(pred, gt)
    r = acc.result()
    # class 0: I=1, U=2; class 1: I=2, U=3; class 2: I=1, U=2 (the GT-255 pixel predicted 2
    # enlarges U_2); class 3: I=0, U=0 -> IoU 0.
    assert r["intersection"] == [1, 2, 1, 0]
    assert r["union"] == [2, 3, 2, 0]
    assert r["per_class_iou"] == pytest.approx({"bg": 0.5, "a": 2 / 3, "b": 0.5, "c": 0.0})
    assert r["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5 + 0) / 4)
    assert r["miou_present"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert r["num_images"] == 1
    # confusion[g][p]: the GT-255 pixel is in no row; rows hold every other pixel once.
    assert r["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # Pixel counts stay integers: metrics.json writes 2, not 2.0.
    assert {type(v) for v in r["intersection"] + r["union"] + sum(r["confusion"], [])} == {int}


def test_per_image_miou_over_the_classes_each_image_shows():
    acc = IoUAccumulator(4, 255)
    gt = np.array([[[0, 0, 1, 1]], [[2, 2, 2, 255]]])
    pred = np.array([[[0, 1, 1, 1]], [[2, 2, 255, 255]]])
    acc.update(pred, gt, ["a", "b"])
    acc.update(np.full((1, 4), 255), np.full((1, 4), 255), "all ignored")
    per_image = acc.result()["per_image_miou"]
    # a: class 0 I=1 U=2, class 1 I=2 U=3 (classes 2 and 3 absent, left out); b: class 2 I=2 U=3.
    assert per_image == {"a": pytest.approx((1 / 2 + 2 / 3) / 2), "b": pytest.approx(2 / 3), "all ignored": None}
    with pytest.raises(ValueError, match="'a' was scored twice"):
        acc.update(pred[0], gt[0], "a")
    with pytest.raises(ValueError, match="1 names for 2 images"):
        acc.update(pred, gt, ["c"])


def test_ignore_label_zero_excludes_class_zero():
    gt = np.array([[0, 0, 1, 2]])
    pred = np.array([[1, 0, 1, 2]])
    acc = IoUAccumulator(3, 0)
    acc.update(torch.from_numpy(pred), torch.from_numpy(gt))
    r = acc.result()
    assert list(r["per_class_iou"]) == ["1", "2"]
    # class 1: I=1, U=2 (the GT-0 pixel predicted 1 still counts)
    assert r["per_class_iou"]["1"] == pytest.approx(0.5)
    assert r["miou"] == pytest.approx((0.5 + 1.0) / 2)


def test_dataset_level_not_per_image_mean():
    acc = IoUAccumulator(2, None)
    # image 1: class 1 I=1, U=1 (IoU 1); image 2: class 1 I=1, U=3 (IoU 1/3)
    acc.update(np.array([[1, 0, 0, 0]]), np.array([[1, 0, 0, 0]]))
    acc.update(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 1, 0]]))
    r = acc.result()
    assert r["intersection"][1] == 2 and r["union"][1] == 4
    assert r["per_class_iou"]["1"] == pytest.approx(0.5)  # per-image mean would give 2/3
    assert r["num_images"] == 2


def test_batched_update_equals_single_updates():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 6, 6))
    gt[0, 0, :] = 255
    pred = rng.integers(0, 5, (3, 6, 6))
    one, many = IoUAccumulator(5, 255), IoUAccumulator(5, 255)
    one.update(pred, gt)
    for p, g in zip(pred, gt):
        many.update(p, g)
    assert one.result() == many.result()
    assert one.result()["num_images"] == 3


def test_perfect_prediction():
    gt = np.random.default_rng(1).integers(0, 4, (16, 16))
    acc = IoUAccumulator(4, None)
    acc.update(gt, gt)
    r = acc.result()
    assert r["miou"] == pytest.approx(1.0) and r["miou_present"] == pytest.approx(1.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        IoUAccumulator(2, None).update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_markdown_table():
    acc = IoUAccumulator(3, None, ["bg", "face", "hat"])
    acc.update(np.array([[0, 1, 1]]), np.array([[0, 1, 0]]))
    assert iou_table_markdown(acc.result(), ["bg", "face", "hat"]) == (
        "| class | IoU % | present |\n|---|---:|:---:|\n"
        "| 0 bg | 50.00 | yes |\n| 1 face | 50.00 | yes |\n| 2 hat | 0.00 | no |\n"
        "| **mIoU** (3 classes) | **33.33** | |\n| mIoU over present (2 classes) | 50.00 | |\n")
    # Without names a row shows the class id alone.
    assert iou_table_markdown(acc.result()).splitlines()[2:5] == [
        "| 0 0 | 50.00 | yes |", "| 1 1 | 50.00 | yes |", "| 2 2 | 0.00 | no |"]


def test_a_class_of_one_pixel_is_present():
    # Class 2 is predicted on one pixel and absent from the ground truth: U_2 = 1, I_2 = 0, so it is
    # present (it scores 0 in the per-image and present-class means and in the table) like any other.
    acc = IoUAccumulator(3, None)
    acc.update(np.array([[0, 0, 1, 2]]), np.array([[0, 0, 1, 1]]), "one")
    r = acc.result()
    assert r["union"] == [2, 2, 1]
    assert r["per_image_miou"] == {"one": pytest.approx((1 + 0.5 + 0) / 3)}
    assert r["miou_present"] == pytest.approx((1 + 0.5 + 0) / 3)
    md = iou_table_markdown(r)
    assert "| 2 2 | 0.00 | yes |" in md and "present (3 classes)" in md


def test_ids_from_number_class_up_are_in_no_class():
    # With K = 3 classes, id 3 is the first one outside 0..K-1: like 255, a GT or predicted 3 adds to no
    # class's counts and the pixel is in no row or column of the confusion matrix.
    acc = IoUAccumulator(3, None)
    acc.update(np.array([[0, 1, 3]]), np.array([[0, 3, 1]]))
    r = acc.result()
    assert r["intersection"] == [1, 0, 0] and r["union"] == [1, 2, 0]
    assert r["confusion"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_nothing_to_score_gives_zero_not_nan():
    # No image seen: every class absent, so both means are 0 (not the NaN of an empty mean). No scored
    # class at all (one class, the ignored one): the same.
    for acc in (IoUAccumulator(3, None), IoUAccumulator(1, 0)):
        r = acc.result()
        assert (r["miou"], r["miou_present"]) == (0.0, 0.0)
