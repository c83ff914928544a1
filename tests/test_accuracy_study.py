"""scripts/accuracy_study.py --quick: every row trains its own config, the table is the runs' numbers, and a
rerun resumes (starts nothing)."""
import importlib.util
import json
import os
import sys

import pytest

from conftest import CELEBAMASK64, FACES_CKPT, REPO, require, run_repo_script

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbours, as when run
spec = importlib.util.spec_from_file_location("accuracy_study", REPO / "scripts" / "accuracy_study.py")
study_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_module)


def run_script(tmp):
    return run_repo_script("scripts/accuracy_study.py", "--out", str(tmp / "runs"), "--seeds", "0", "--quick",
                           "--docs", str(tmp))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    require(CELEBAMASK64), require(FACES_CKPT)
    tmp = tmp_path_factory.mktemp("accuracy")
    return tmp, run_script(tmp)


def run_files(tmp, name):
    (sub,) = [p for p in (tmp / "runs" / "seed0" / name).iterdir() if (p / "metrics.json").exists()]
    return json.loads((sub / "config.json").read_text()), json.loads((sub / "metrics.json").read_text())


def test_each_row_trains_its_own_settings(study):
    tmp, _ = study
    for name, (overrides, _) in study_module.SETTINGS.items():
        cfg, _ = run_files(tmp, name)
        want = {"noise_draws": 1, "class_weighting": "none", **overrides, **study_module.QUICK_SETS, "seed": 0}
        assert {k: cfg[k] for k in want} == want, name


def test_table_is_the_runs_miou_and_rarest_classes_iou(study):
    tmp, printed = study
    text = (tmp / "experiments.md").read_text()
    body = text.removeprefix("<!-- accuracy:begin -->\n").removesuffix("<!-- accuracy:end -->\n")
    assert body.startswith("#### Noise draws and class weighting") and body in printed  # the printed table is the block
    header, *rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    # The rarest classes: fewest training pixels in the default run, among those it has any of.
    pixels = run_files(tmp, "default")[1]["training_labels"]["pixels_per_class"]
    rarest = sorted((n, c) for c, n in pixels.items() if n > 0)[:5]
    assert header[2:7] == [c for _, c in rarest]
    assert len(rows) == len(study_module.SETTINGS)
    for row, (name, (_, what)) in zip(rows, study_module.SETTINGS.items()):
        _, m = run_files(tmp, name)
        assert row[0] == f"| {what}"
        assert row[1] == f"{100 * m['miou']:.2f}"
        assert row[2:7] == [f"{100 * m['per_class_iou'][c]:.2f}" for _, c in rarest]
        assert row[7] == f"{m['timings_s']['train_features_s']:.1f}" and row[8] == "1 |"
    base = 100 * run_files(tmp, "default")[1]["miou"]
    draws8 = 100 * run_files(tmp, "draws8")[1]["miou"]
    assert f"`draws8` {draws8 - base:.2f} points" in text


def test_a_rerun_starts_nothing(study):
    tmp, _ = study
    finished = sorted(str(p) for p in (tmp / "runs").rglob("metrics.json"))
    assert len(finished) == len(study_module.SETTINGS)
    mtimes = [os.stat(p).st_mtime_ns for p in finished]
    assert "+ " not in run_script(tmp)
    assert [os.stat(p).st_mtime_ns for p in finished] == mtimes
