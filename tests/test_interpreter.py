"""The whole job on shapes64 images (and colour-coded celebamask64 layouts) with a random-weight 64 px U-Net checkpoint."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import evaluate
from ddpmseg.commands import train as train_interpreter
from conftest import CELEBAMASK64, FAST_INTERPRETER as FAST, recomputed_iou, require, shapes64
from ddpmseg.classifier.predict import VOTING_MODES


@pytest.fixture
def data(tmp_path):
    """Copies of a few shapes64 images that a test may then break."""
    src = shapes64()
    for split, n in (("train", 3), ("test", 2)):
        out = tmp_path / split
        out.mkdir()
        for png in sorted((src / "real" / split).glob("*.png"))[:n]:
            shutil.copy(png, out / png.name)
            shutil.copy(png.with_suffix(".npy"), out / (png.stem + ".npy"))
    return tmp_path


def run(tmp_path, data, ckpt, *extra):
    """train_interpreter.py on the small data; ``extra`` may name another ``--exp`` (argparse keeps the last)."""
    argv = ["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(tmp_path / "exp"),
            "--training_path", str(data / "train"), "--testing_path", str(data / "test"),
            "--model_path", str(ckpt), *FAST, *extra]
    return train_interpreter.main(argv)


def test_end_to_end_writes_every_output(tmp_path, data, tiny64_checkpoint, capsys):
    assert run(tmp_path, data, tiny64_checkpoint) == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_flags"]["num_channels"] == 32 and cfg["model_num"] == 2  # resolved, sidecar flags
    for i in range(2):
        sd = torch.load(out / f"model_{i}.pth", weights_only=True)["model_state_dict"]
        assert sd["module.layers.0.weight"].shape == (128, 384)
    stems = sorted(p.stem for p in (data / "test").glob("*.png"))
    for stem in stems:
        pred = np.load(out / "predictions" / f"{stem}.npy")
        assert pred.shape == (64, 64) and pred.max() < 19
        assert Image.open(out / "visualizations" / f"{stem}.png").size == (64, 64)
        width, height = Image.open(out / "visualizations" / f"{stem}_compare.png").size
        assert width == 3 * 64 + 4 and height > 64 + 14  # panels, a title line above, a class legend below
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= metrics["miou_present"] <= 1
    assert metrics["miou"] == pytest.approx(recomputed_iou(out)["miou"], abs=1e-12)
    assert list(metrics["per_class_iou"])[:3] == ["background", "skin", "nose"]
    assert set(metrics["uncertainty"]) == set(stems) and metrics["mean_uncertainty"] >= 0
    assert {"train_features_s", "train_s", "evaluation_s", "total_s"} <= set(metrics["timings_s"])
    assert metrics["peak_rss_mb"] > 0 and metrics["num_images"] == 2
    assert "| **mIoU** (19 classes)" in (out / "per_class_iou.md").read_text()
    assert "labelled training pixels" in (out / "log.txt").read_text()
    assert not list(out.glob("**/*.tmp")) and not (out / "train_state.pt").exists()


def test_rerun_keeps_finished_members(tmp_path, data, tiny64_checkpoint):
    assert run(tmp_path, data, tiny64_checkpoint) == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    kept = (out / "model_0.pth").read_bytes()
    os.remove(out / "model_1.pth")
    assert run(tmp_path, data, tiny64_checkpoint) == 0
    assert (out / "model_0.pth").read_bytes() == kept
    assert (out / "model_1.pth").exists()
    assert "members [1] remain to be trained" in (out / "log.txt").read_text()


def test_training_labels_summary_counts_what_training_saw(tmp_path, data, tiny64_checkpoint, capsys):
    """metrics.json's training_labels against the .npy masks themselves: with the original's 20-pixel
    rule, the excluded regions are the (image, class) pairs with 1-19 pixels, printed as one line (each
    region in log.txt only); a class in no training mask is named in a warning and in metrics.json."""
    add_small_region(data)
    assert run(tmp_path, data, tiny64_checkpoint, "--set", "min_region_pixels=20") == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    names = json.loads((out / "config.json").read_text())["class_names"]
    masks = [np.load(p) for p in sorted((data / "train").glob("*.npy"))]
    small = [(k, n) for m in masks for k, n in zip(*np.unique(m, return_counts=True)) if n < 20]
    kept = sum(np.bincount(np.where(np.isin(m, [k for k, n in zip(*np.unique(m, return_counts=True)) if n < 20]),
                                    19, m).ravel(), minlength=20)[:19] for m in masks)
    summary = json.loads((out / "metrics.json").read_text())["training_labels"]
    assert summary["min_region_pixels"] == 20 and summary["excluded_regions"] == len(small) > 0
    assert summary["pixels_per_class"] == dict(zip(names, kept.tolist()))
    absent = [names[k] for k in range(19) if kept[k] == 0]
    assert absent and summary["classes_without_training_pixels"] == absent
    printed = capsys.readouterr().out
    assert printed.count("excluded from training") == 1 and f"{len(small)} regions in" in printed
    assert "warning: " in printed and ", ".join(absent) in printed
    log = (out / "log.txt").read_text()
    assert sum("has only" in line for line in log.splitlines()) == len(small)


def add_small_region(data):
    """shapes64's shapes are all far above 20 pixels: a 3 x 3 patch of class 7 in the first training mask
    gives a region below the original's 20-pixel rule."""
    first = sorted((data / "train").glob("*.npy"))[0]
    label = np.load(first)
    label[40:43, 40:43] = 7
    np.save(first, label)


def _break(kind, data):
    train = data / "train"
    first = sorted(train.glob("*.png"))[0]
    if kind == "missing folder":
        shutil.rmtree(data / "test")
    elif kind == "empty dataset":
        for f in train.iterdir():
            f.unlink()
    elif kind == "label missing":
        first.with_suffix(".npy").unlink()
    elif kind == "label shape":
        np.save(first.with_suffix(".npy"), np.zeros((32, 64), np.uint8))
    elif kind == "label out of range":
        lab = np.load(first.with_suffix(".npy"))
        lab[0, 0] = 19
        np.save(first.with_suffix(".npy"), lab)
    elif kind == "image of another size than its label":
        Image.new("RGB", (64, 48)).save(first)
    elif kind == "corrupt image":
        first.write_bytes(b"not a png")


@pytest.mark.parametrize("kind,message", [
    ("missing folder", "test"), ("empty dataset", "no images"), ("label missing", ".npy"),
    ("label shape", "(32, 64)"), ("label out of range", "19"),
    ("image of another size than its label", "label shape (64, 64) does not match the image's (H, W) (48, 64)"),
    ("corrupt image", "")])
def test_bad_data_fails_with_one_clear_error_and_writes_nothing(tmp_path, data, tiny64_checkpoint,
                                                                capsys, kind, message):
    _break(kind, data)
    assert run(tmp_path, data, tiny64_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists()


def test_checkpoint_not_matching_flags_names_the_flag(tmp_path, data, tiny64_checkpoint, capsys):
    assert run(tmp_path, data, tiny64_checkpoint, "--num_channels", "64") == 2
    err = capsys.readouterr().err
    assert "--num_channels 32 (you gave 64)" in err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("extra,message", [
    (["--set", "dim=[64,64,999]"], 'set "dim": [64, 64, 384]'),
    (["--set", "modelnum=3"], "did you mean 'model_num'"),
    (["--set", "batch_size=\"64\""], "'batch_size' must be int"),
    (["--model_path", "/nonexistent/x.pt"], "checkpoint not found")])
def test_bad_config_fails_before_writing(tmp_path, data, tiny64_checkpoint, capsys, extra, message):
    assert run(tmp_path, data, tiny64_checkpoint, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_variants_end_to_end(tmp_path, data, tiny64_checkpoint):
    """ETF + augmentation + AdamW + dropout train; every voting mode is scored on the same ensemble."""
    assert run(tmp_path, data, tiny64_checkpoint, "--exp", "experiments/celebamask64/etf.json",
               "--set", "augmentation_copies=2", "--set", "optimizer=\"adamw\"", "--set", "weight_decay=1e-4",
               "--set", "dropout=0.4") == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    log = (out / "log.txt").read_text()
    assert "feature store: 9 images" in log  # 3 training images + 2 augmented copies of each
    assert (out / "etf_matrix.pt").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["voting"] == "soft" and set(metrics["by_voting"]) == set(VOTING_MODES)
    assert metrics["by_voting"]["soft"]["miou"] == metrics["miou"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["regularizer"], cfg["augmentation_copies"], cfg["hflip_class_pairs"]) == ("etf", 2, [[4, 5], [6, 7],
                                                                                                     [8, 9]])


def test_evaluate_again_with_test_time_views(tmp_path, data, tiny64_checkpoint, capsys):
    assert run(tmp_path, data, tiny64_checkpoint) == 0
    trained = tmp_path / "exp" / "50_4_5_6_7_8"
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    assert evaluate.main(["--run", str(trained), "--set", 'tta=["hflip","grayscale"]', "--set", "voting=soft"]) == 0
    out = trained / "eval_tta-hflip,grayscale_voting-soft"
    metrics = json.loads((out / "metrics.json").read_text())
    plain = json.loads((trained / "metrics.json").read_text())
    assert metrics["tta"] == ["hflip", "grayscale"] and metrics["trained_in"] == str(trained)
    assert metrics["training_timings_s"] == plain["timings_s"]
    assert metrics["uncertainty"] != plain["uncertainty"]  # the extra views took part in the vote
    assert len(list((out / "predictions").glob("*.npy"))) == 2
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before  # the run is untouched
    # Without overrides the evaluation reproduces the run's own numbers.
    assert evaluate.main(["--run", str(trained), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["miou"] == plain["miou"] and again["uncertainty"] == pytest.approx(plain["uncertainty"])


@pytest.mark.parametrize("args,message", [
    (["--set", "dropout=0.2"], "['dropout'] change the trained ensemble"),
    (["--set", "voting=\"mean\""], "'voting' must be one of"),
])
def test_evaluate_rejects_what_it_cannot_do(tmp_path, data, tiny64_checkpoint, capsys, args, message):
    assert run(tmp_path, data, tiny64_checkpoint) == 0
    trained = tmp_path / "exp" / "50_4_5_6_7_8"
    assert evaluate.main(["--run", str(trained), "--out", str(tmp_path / "e"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_evaluate_needs_a_finished_run(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_model_flags_belong_to_ddpm_only(tmp_path, data, capsys):
    argv = ["--exp", "experiments/celebamask64/swav.json", "--exp_dir", str(tmp_path / "exp"),
            "--training_path", str(data / "train"), "--testing_path", str(data / "test"), "--num_channels", "64"]
    assert train_interpreter.main(argv) == 2
    assert "flags ['num_channels'] apply to model_type 'ddpm' only, not 'swav'" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_untrained_unet_control_runs_without_a_checkpoint(tmp_path, data):
    """random_weights: the U-Net's seeded initial weights; the resolved flags still come from the config."""
    assert run(tmp_path, data, "", "--set", "random_weights=true") == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["random_weights"] is True and cfg["model_path"] == ""
    assert cfg["model_flags"]["num_channels"] == 32
    miou = json.loads((out / "metrics.json").read_text())["miou"]
    assert 0 <= miou <= 1 and miou == pytest.approx(recomputed_iou(out)["miou"], abs=1e-12)


REFINE = {"method": "ddps", "iterations": 20, "width": 8, "folds": 2, "fold_members": 1, "steps": 3}


def test_refinement_trains_on_out_of_fold_predictions_and_reports_before_and_after(tmp_path, data,
                                                                                   tiny64_checkpoint):
    assert run(tmp_path, data, tiny64_checkpoint, "--set", f"refine={json.dumps(REFINE)}") == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["refine"]["method"] == "ddps" and cfg["refine"]["start_step"] is None  # resolved, defaults in
    first = torch.load(out / "refiner_folds" / "first_predictions.pt", weights_only=True)
    assert first.shape == (3, 19, 64, 64) and torch.allclose(first.sum(1), torch.ones(3, 64, 64), atol=1e-4)
    assert all((out / "refiner_folds" / f"fold_{f}" / "model_0.pth").exists() for f in range(2))
    metrics = json.loads((out / "metrics.json").read_text())
    ref = metrics["refine"]
    assert ref["noise_steps"] == [9, 4, 0] and len(ref["miou_by_step"]) == 3
    assert metrics["miou"] == ref["miou_after"] == ref["miou_by_step"][-1]
    assert 0 <= ref["miou_before"] <= 1 and set(ref["per_class_iou_before"]) == set(metrics["per_class_iou"])
    stem = sorted(p.stem for p in (data / "test").glob("*.png"))[0]
    # image | ground truth | ensemble | refined, a title line above, a class legend below
    width, height = Image.open(out / "visualizations" / f"{stem}_compare.png").size
    assert width == 4 * 64 + 6 and height > 64 + 14
    assert "refinement: mIoU" in (out / "log.txt").read_text()

    # Resuming finds every member and the refiner: nothing is trained again, the numbers repeat.
    refiner_time = (out / "refiner.pt").stat().st_mtime_ns
    assert run(tmp_path, data, tiny64_checkpoint, "--set", f"refine={json.dumps(REFINE)}") == 0
    assert (out / "refiner.pt").stat().st_mtime_ns == refiner_time
    assert json.loads((out / "metrics.json").read_text())["refine"] == ref

    # Re-evaluation from the saved config alone refines the same way.
    assert evaluate.main(["--run", str(out), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["refine"] == ref


def test_refined_run_without_its_refiner_cannot_be_evaluated(tmp_path, data, tiny64_checkpoint, capsys):
    assert run(tmp_path, data, tiny64_checkpoint, "--set", f"refine={json.dumps(REFINE)}") == 0
    out = tmp_path / "exp" / "50_4_5_6_7_8"
    (out / "refiner.pt").unlink()
    assert evaluate.main(["--run", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "lacks refiner.pt" in capsys.readouterr().err


def _colour_coded(root, split: str, n: int, palette) -> str:
    """The first ``n`` celebamask64 label maps of ``split`` as images that paint each pixel in its
    class colour: a signal rgb_xy features can learn, on real face layouts."""
    out = root / split
    out.mkdir(parents=True)
    for npy in sorted((require(CELEBAMASK64) / "real" / split).glob("*.npy"))[:n]:
        label = np.load(npy)
        Image.fromarray(np.asarray(palette, dtype=np.uint8)[label]).save(out / (npy.stem + ".png"))
        np.save(out / npy.name, label)
    return str(out)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A finished rgb_xy run on the colour-coded faces: (run folder, metrics)."""
    root = tmp_path_factory.mktemp("colour")
    cfg = json.loads(open("experiments/celebamask64/ddpm.json").read())
    argv = ["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(root / "exp"),
            "--training_path", _colour_coded(root, "train", 4, cfg["palette"]),
            "--testing_path", _colour_coded(root, "test", 3, cfg["palette"]), "--model_path", "",
            "--set", "model_type=rgb_xy", "--set", "steps=[]", "--set", "blocks=[]", "--set", "dim=[64,64,5]",
            "--set", "training_number=4", "--set", "testing_number=3", "--set", "model_num=2",
            "--set", "max_epochs=4", "--set", "min_region_pixels=0", "--set", "device=cpu"]
    assert train_interpreter.main(argv) == 0
    run_dir = root / "exp"
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_a_learnable_signal_is_learnt(colour_run):
    """Colour alone names the class here, so a working pipeline labels the test faces almost
    perfectly; a wiring fault (labels off by a slot, features of another image, a wrong vote)
    cannot reach this floor. Measured: 1.00 over the 16 classes present (seed 0); with the labels of
    each training image stored against another image's features it drops to 0.17."""
    _, metrics = colour_run
    assert metrics["miou_present"] >= 0.95, metrics["per_class_iou"]


def test_metrics_equal_the_iou_of_the_saved_predictions(colour_run):
    """metrics.json is recomputed from predictions/*.npy and the test labels (conftest.recomputed_iou)."""
    run_dir, metrics = colour_run
    want = recomputed_iou(run_dir)
    assert abs(metrics["miou"] - want["miou"]) < 1e-12
    assert abs(metrics["miou_present"] - want["miou_present"]) < 1e-12
    assert [metrics["per_class_iou"][n] for n in want["class_names"]] == pytest.approx(want["per_class_iou"], abs=1e-12)


def test_training_store_holds_each_labelled_pixel_with_its_own_features(data):
    """Run.build_training_store against an independent construction: store slot s is image s % n,
    copy s // n (copy k > 0 drawn by augment_pair from copy_seed(seed, i, k)); its labelled pixels
    are exactly those neither ignored (255 here) nor in a class with fewer than min_region_pixels
    pixels in that slot, each labelled with its own class and read back with the rgb_xy features
    of that slot's (augmented) image at that pixel. rgb_xy has one full-resolution map, so the
    store's bilinear read is the identity and its only change is the float16 rounding: exact."""
    from ddpmseg.data.augment import augment_pair, copy_seed
    from ddpmseg.common.config import load_config
    from ddpmseg.classifier.interpreter import Run

    add_small_region(data)
    first = sorted((data / "train").glob("*.npy"))[0]
    label = np.load(first)
    label[:8, :8] = 255  # a corner of ignored pixels
    np.save(first, label)
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "exp_dir": str(data / "exp"), "training_path": str(data / "train"), "testing_path": str(data / "test"),
        "model_type": "rgb_xy", "model_path": "", "steps": [], "blocks": [], "dim": [64, 64, 5], "ignore_label": 255,
        "training_number": 3, "testing_number": 2, "augmentation_copies": 1, "device": "cpu",
        "min_region_pixels": 20})  # the 256 px threshold, so that this small set has regions below it
    run = Run(cfg, {}, log=lambda msg: None)
    store, pixels = run.build_training_store(str(data / "exp"))
    n, hw = 3, 64 * 64
    want_index, want_labels, want_features, too_small = [], [], [], 0
    for s in range(2 * n):
        i, k = s % n, s // n
        item = run.train_set[i]
        image, lab = item["image"], item["label"]
        if k:
            image, lab = augment_pair(image, lab, copy_seed(cfg["seed"], i, k), cfg["augmentation_p"], 255,
                                      cfg["hflip_class_pairs"])
        flat = lab.reshape(-1).numpy()
        classes, counts = np.unique(flat, return_counts=True)
        small = classes[counts < cfg["min_region_pixels"]]
        keep = np.flatnonzero((flat != 255) & ~np.isin(flat, small))
        too_small += np.isin(flat, small).sum()
        want_index.append(s * hw + keep)
        want_labels.append(flat[keep])
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
        feats = torch.cat([image, xs[None], ys[None]]).reshape(5, -1).T  # [H*W, 5]: r, g, b, x, y
        want_features.append(feats[keep].half().float())
    assert torch.equal(pixels.index, torch.from_numpy(np.concatenate(want_index)))
    assert torch.equal(pixels.labels, torch.from_numpy(np.concatenate(want_labels)).long())
    img, ys, xs = pixels.coords(torch.arange(len(pixels.index)))
    assert torch.equal(store.pixels(img, ys, xs), torch.cat(want_features))
    # Both exclusions happened: the ignored corner of slot 0, and classes too small in some slot.
    assert not np.isin(np.arange(8 * 64).reshape(8, 64)[:, :8], want_index[0]).any() and too_small > 0
