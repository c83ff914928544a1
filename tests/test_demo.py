"""The offline demo, every stage at toy size (the 'smoke' preset), and its configs."""
import json

import pytest
from PIL import Image

from ddpmseg.commands import demo
from conftest import REPO, recomputed_iou
from ddpmseg.common.config import load_config
from ddpmseg.demo import DEMO_FLAGS, PRESETS, ddpm_checkpoint
from ddpmseg.data.procedural import CLASS_NAMES, PALETTE


def test_demo_configs_match_the_generated_dataset_and_the_full_preset():
    ddpm = load_config(str(REPO / "experiments/shapes64/ddpm.json"))
    rgb = load_config(str(REPO / "experiments/shapes64/rgb_xy.json"))
    assert ddpm["class_names"] == list(CLASS_NAMES) and ddpm["palette"] == [list(c) for c in PALETTE]
    full = PRESETS["full"]
    assert (ddpm["training_number"], ddpm["testing_number"]) == (full.train, full.test)
    assert ddpm["model_path"] == ddpm_checkpoint("runs/demo", full.ddpm_steps)
    assert ddpm["dim"][0] == DEMO_FLAGS["image_size"]
    changed = {k for k in ddpm if ddpm[k] != rgb[k]}
    assert changed == {"exp_dir", "model_type", "model_path", "dim", "steps", "blocks"}
    assert rgb["dim"] == [64, 64, 5]


def test_smoke_demo_runs_every_stage_and_reports_both_mious(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--preset", "smoke"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for kind in ("ddpm", "rgb_xy"):
        assert 0 <= metrics[kind]["miou"] <= 1 and len(metrics[kind]["per_class_iou"]) == len(CLASS_NAMES)
        # The report's numbers are its run's, and they are the IoU of that run's saved predictions.
        run_dir = out / "pixel_classifiers" / ("ddpm/50_150_250_1_2_3_4" if kind == "ddpm" else "rgb_xy")
        assert metrics[kind]["run"] == str(run_dir)
        assert metrics[kind]["miou"] == pytest.approx(recomputed_iou(run_dir)["miou"], abs=1e-12)
    assert metrics["ddpm_beats_baseline"] == (metrics["ddpm"]["miou"] > metrics["rgb_xy"]["miou"])
    assert set(metrics["timings_s"]) == {"dataset", "ddpm_training", "interpreter_ddpm", "interpreter_rgb_xy",
                                         "synthetic_dataset", "total"}
    report = (out / "report.md").read_text()
    assert f"{100 * metrics['rgb_xy']['miou']:.2f}" in report and f"{100 * metrics['ddpm']['miou']:.2f}" in report
    # The interpreter ran on the checkpoint the demo trained (loaded like any official one).
    run_cfg = json.loads((out / "pixel_classifiers/ddpm/50_150_250_1_2_3_4/config.json").read_text())
    assert run_cfg["model_path"] == ddpm_checkpoint(str(out), PRESETS["smoke"].ddpm_steps)
    smoke = PRESETS["smoke"]
    width, height = Image.open(out / "comparison.png").size
    # the rows of panels, plus a title line above and a legend of the 6 classes below
    assert width > 4 * 64 and height > smoke.test * 64 + (smoke.test - 1) * 2 + 14
    assert (out / "synthetic" / "samples_64x64x3.npz").is_file() and (out / "synthetic" / "synthetic_grid.png").is_file()
    # Rerunning resumes: nothing is trained again, the numbers stay.
    assert demo.main(["--out", str(out), "--preset", "smoke"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["ddpm"]["miou"] == metrics["ddpm"]["miou"] and again["timings_s"]["ddpm_training"] < 5


def test_demo_into_a_folder_of_another_seed_fails_with_one_line(tmp_path, capsys):
    from ddpmseg.data.procedural import write_dataset

    smoke = PRESETS["smoke"]
    write_dataset(str(tmp_path / "data"), train=smoke.train, test=smoke.test, unlabeled=smoke.unlabeled, seed=0)
    assert demo.main(["--out", str(tmp_path), "--preset", "smoke", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "other parameters" in err and "Traceback" not in err
