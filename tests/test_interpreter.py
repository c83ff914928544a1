"""The whole job on real celebamask64 images with a random-weight 64 px U-Net checkpoint."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import train_interpreter
from conftest import CELEBAMASK64, FAST_INTERPRETER as FAST, require
from ddpmseg.predict import VOTING_MODES


@pytest.fixture
def data(tmp_path):
    """Copies of a few celebamask64 images that a test may then break."""
    src = require(CELEBAMASK64)
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
        assert Image.open(out / "visualizations" / f"{stem}_compare.png").size == (3 * 64 + 4, 64)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= metrics["miou_present"] <= 1
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
    elif kind == "non-square image":
        Image.new("RGB", (64, 48)).save(first)
    elif kind == "corrupt image":
        first.write_bytes(b"not a png")


@pytest.mark.parametrize("kind,message", [
    ("missing folder", "test"), ("empty dataset", "no images"), ("label missing", ".npy"),
    ("label shape", "(32, 64)"), ("label out of range", "19"), ("non-square image", "square"),
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
    assert 0 <= json.loads((out / "metrics.json").read_text())["miou"] <= 1


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
    # image | ground truth | ensemble | refined
    assert Image.open(out / "visualizations" / f"{stem}_compare.png").size == (4 * 64 + 6, 64)
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
