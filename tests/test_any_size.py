"""Images of any size and aspect: a 64x96 (WxH) set goes through ddpmseg new -> train -> segment with a real
U-Net, trained on the working-side windows ddpmseg segment uses and scored at each image's own size; a
mixed-size test set evaluates."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_INTERPRETER, recomputed_iou, shapes64
from ddpmseg.classifier.crossfit import fold_assignment
from ddpmseg.commands import evaluate, segment
from ddpmseg.commands import new as new_experiment
from ddpmseg.commands import train as train_interpreter

# 64 px shapes64 images padded to 64 wide x 96 tall: two 64x64 windows at rows 0 and 32 of the tiny U-Net's 64 px side.
TALL = (64, 96)
PAD_ROWS = (TALL[1] - 64) // 2


def _tall(png: Path, folder: Path) -> None:
    """A shapes64 image and its label padded by repeating the top and bottom rows (background: the shapes
    lie wholly inside the image, so the label still says what each pixel shows), as <stem>.png beside
    <stem>.npy."""
    pad = ((PAD_ROWS, PAD_ROWS), (0, 0))
    rgb = np.pad(np.asarray(Image.open(png).convert("RGB")), pad + ((0, 0),), mode="edge")
    Image.fromarray(rgb).save(folder / png.name)
    np.save(folder / f"{png.stem}.npy", np.pad(np.load(png.with_suffix(".npy")), pad, mode="edge"))


def _images(split: str, n: int) -> list[Path]:
    return sorted((shapes64() / "real" / split).glob("*.png"))[:n]


@pytest.fixture
def tall_run(tmp_path, tiny64_checkpoint, monkeypatch):
    """(data root, run folder) of ddpmseg new + train on 3 tall training and 2 tall test images."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("test", 2)):
        (root / split).mkdir(parents=True)
        for png in _images(split, n):
            _tall(png, root / split)
    meta = json.loads((shapes64() / "classes.json").read_text())
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in
                                              zip(meta["class_names"], meta["palette_rgb"])))
    monkeypatch.chdir(tmp_path)
    # --masks = the images' folder: its .npy files are the masks, so recomputed_iou finds them there
    assert new_experiment.main(["--name", "tall", "--images", str(root / "train"), "--masks", str(root / "train"),
                                "--test_images", str(root / "test"), "--test_masks", str(root / "test"),
                                "--model_path", str(tiny64_checkpoint), "--classes", str(root / "classes.txt"),
                                "--steps", "50", "--allow_missing_classes"]) == 0
    summary = (tmp_path / "experiments" / "tall" / "data_summary.md").read_text()
    assert "| train | 3 | 64x96: 3 |" in summary and "| test | 2 | 64x96: 2 |" in summary
    assert train_interpreter.main(["--exp", "experiments/tall/ddpm.json", *FAST_INTERPRETER]) == 0
    return root, tmp_path / "pixel_classifiers" / "tall" / "50_4_5_6_7_8"


def test_a_tall_set_trains_on_windows_and_is_scored_and_segmented_at_its_own_size(tall_run, tmp_path):
    root, run = tall_run
    metrics = json.loads((run / "metrics.json").read_text())
    # Training took every pixel of both windows of each image (rows 0-63 and 32-95): the overlap twice.
    names = json.loads((run / "config.json").read_text())["class_names"]
    expected = np.zeros(len(names), np.int64)
    for npy in sorted((root / "train").glob("*.npy")):
        label = np.load(npy)
        for top in (0, 32):
            expected += np.bincount(label[top:top + 64].ravel(), minlength=len(names))
    assert metrics["training_labels"]["pixels_per_class"] == dict(zip(names, expected.tolist()))
    # Scored at the images' own 96x64: the saved predictions are that size and give the run's IoU.
    for npy in sorted((root / "test").glob("*.npy")):
        assert np.load(run / "predictions" / npy.name).shape == (96, 64)
    again = recomputed_iou(run)
    assert metrics["miou"] == pytest.approx(again["miou"], abs=1e-12)  # float64 sums of the same integers
    assert list(metrics["per_class_iou"].values()) == pytest.approx(again["per_class_iou"], abs=1e-12)
    assert np.isfinite(metrics["miou"]) and 0 < metrics["miou"] <= 1
    # ddpmseg segment on the test images: the same windows, merged the same way, so the same masks.
    shots = tmp_path / "shots"
    shots.mkdir()
    for png in sorted((root / "test").glob("*.png")):
        shutil.copy(png, shots / png.name)
    assert segment.main(["--run", str(run), "--images", str(shots), "--out", str(tmp_path / "segmented")]) == 0
    for png in sorted(shots.glob("*.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "segmented" / png.name)),
                                      np.load(run / "predictions" / f"{png.stem}.npy"))


def test_a_mixed_size_test_set_evaluates_at_each_images_own_size(tall_run, tmp_path):
    _, run = tall_run
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    # W x H: square at the working side, tall, wide, square above it (resized), and an odd-ratio portrait
    sizes = [(64, 64), (64, 96), (96, 64), (128, 128), (50, 90)]
    for (w, h), png in zip(sizes, _images("test", len(sizes))):
        Image.open(png).convert("RGB").resize((w, h), Image.Resampling.BILINEAR).save(mixed / png.name)
        label = np.load(png.with_suffix(".npy"))
        rows, cols = np.arange(h) * 64 // h, np.arange(w) * 64 // w
        np.save(mixed / f"{png.stem}.npy", label[rows[:, None], cols[None, :]])
    out = tmp_path / "mixed_eval"
    assert evaluate.main(["--run", str(run), "--set", f"testing_path={mixed}", "--set", f"testing_masks_path={mixed}",
                          "--set", "testing_number=5",
                          "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for (w, h), png in zip(sizes, _images("test", len(sizes))):
        assert np.load(out / "predictions" / f"{png.stem}.npy").shape == (h, w)
    again = recomputed_iou(out)
    assert metrics["miou"] == pytest.approx(again["miou"], abs=1e-12)
    assert list(metrics["per_class_iou"].values()) == pytest.approx(again["per_class_iou"], abs=1e-12)
    assert metrics["num_images"] == 5


def test_a_refined_tall_run_trains_its_refiner_on_windows_and_scores_the_merged_refined_masks(tall_run, tmp_path):
    refine = {"method": "ddps", "iterations": 20, "width": 8, "folds": 2, "fold_members": 1, "steps": 3}
    assert train_interpreter.main(["--exp", "experiments/tall/ddpm.json", "--exp_dir", "refined",
                                   "--set", f"refine={json.dumps(refine)}", *FAST_INTERPRETER]) == 0
    out = tmp_path / "refined" / "50_4_5_6_7_8"
    first = torch.load(out / "refiner_folds" / "first_predictions.pt", weights_only=True)
    # one out-of-fold prediction per training window (3 tall images x 2), over shapes64's 6 classes
    assert first.shape == (6, 6, 64, 64)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == metrics["refine"]["miou_after"] == metrics["refine"]["miou_by_step"][-1]
    assert metrics["miou"] == pytest.approx(recomputed_iou(out)["miou"], abs=1e-12)
    # The first test image's windows are test-set windows 0 and 1, as they are the Segmenter's: the same
    # refiner noise, so ddpmseg segment gives the evaluated, merged refined mask.
    from ddpmseg.classifier.segmenter import Segmenter

    first_png = sorted((tall_run[0] / "test").glob("*.png"))[0]
    np.testing.assert_array_equal(Segmenter.from_run(str(out)).predict(Image.open(first_png)).mask,
                                  np.load(out / "predictions" / f"{first_png.stem}.npy"))


def test_the_windows_of_an_image_share_its_fold():
    plain = fold_assignment(4, 2, seed=3)
    by_window = fold_assignment(4, 2, seed=3, windows_per_image=[1, 2, 1, 3])
    assert by_window.tolist() == [plain[0]] + [plain[1]] * 2 + [plain[2]] + [plain[3]] * 3


def test_feature_selection_probes_the_windows_of_tall_images(tall_run, tmp_path):
    from ddpmseg.commands import select as select_features

    assert select_features.main(["--exp", "experiments/tall/ddpm.json", "--out", str(tmp_path / "sel"), "--steps", "50",
                                 "--blocks", "4", "5", "--folds", "3", "--iterations", "10"]) == 0
    report = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert sorted(report["fold_of_image"]) == [0, 1, 2]  # one fold per training image, not per window
    # Blocks 4, 5 at step 50, and the config's own blocks 6, 7, 8 that join the grid as the fallback.
    assert report["grid"] == {"steps": [50], "blocks": [4, 5, 6, 7, 8]}
    assert len(report["cells"]) == 5 and all(0 <= c["miou"] <= 1 for c in report["cells"])
