"""ddpmseg select on shapes64 training images with the tiny U-Net: fold split, outputs, resume, bad inputs."""
from __future__ import annotations

import json
import os
import statistics
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import select as select_features
from conftest import shapes64
from ddpmseg.classifier import feature_selection
from ddpmseg.common.config import load_config
from ddpmseg.common.seeding import stream_seed

# A small grid and a tiny probe: 6 training images in 3 folds, 2 steps x 2 blocks, 30 iterations.
TRAINING_NUMBER, FOLDS = 6, 3
GRID = ["--steps", "50", "250", "--blocks", "5", "8", "--folds", str(FOLDS), "--iterations", "30"]

# Every path the process opens or lists while the flag is on (sys.addaudithook cannot be removed,
# so one hook serves every test and records only in between).
_SEEN: list[str] = []
_RECORDING = [False]


def _audit(event, args):
    if (_RECORDING[0] and event in ("open", "os.listdir", "os.scandir") and args
            and isinstance(args[0], (str, bytes, os.PathLike))):
        _SEEN.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


def argv(tmp_path, ckpt, out, *extra, testing_path=None):
    data = shapes64() / "real"
    return ["--exp", "experiments/celebamask64/ddpm.json", "--out", str(out),
            "--set", f"training_path={data / 'train'}", "--set", f"testing_path={testing_path or data / 'test'}",
            "--set", f"model_path={ckpt}", "--set", f"training_number={TRAINING_NUMBER}",
            "--set", f"exp_dir={tmp_path / 'exp'}", *GRID, *extra]


class TrainingSpy:
    """Records, for each probe trained, its fold (from its seed) and the images its pixels come from."""

    def __init__(self, monkeypatch, seed=0):
        self.calls: list[tuple[int, set[int]]] = []
        fold_of_seed = {stream_seed("fold_seed", seed, f): f for f in range(FOLDS)}
        real = feature_selection.train_ensemble

        def spy(store, pixels, settings, *args, **kwargs):
            h, w = pixels.hw
            self.calls.append((fold_of_seed[settings.seed], set((pixels.index // (h * w)).tolist())))
            return real(store, pixels, settings, *args, **kwargs)

        monkeypatch.setattr(feature_selection, "train_ensemble", spy)


@pytest.fixture(scope="module")
def selection(tmp_path_factory, tiny64_checkpoint):
    """One finished selection whose test folder holds only unreadable files; every opened path recorded."""
    tmp = tmp_path_factory.mktemp("select")
    unreadable = tmp / "test_set"
    unreadable.mkdir()
    (unreadable / "0.png").write_bytes(b"not an image")
    (unreadable / "0.npy").write_bytes(b"not an array")
    mp = pytest.MonkeyPatch()
    spy = TrainingSpy(mp)
    _SEEN.clear()
    _RECORDING[0] = True
    try:
        code = select_features.main(argv(tmp, tiny64_checkpoint, tmp / "out", testing_path=unreadable))
    finally:
        _RECORDING[0] = False
        mp.undo()
    assert code == 0
    return {"out": tmp / "out", "seen": list(_SEEN), "test_dirs": [unreadable, shapes64() / "real" / "test"],
            "calls": spy.calls, "tmp": tmp}


def test_no_test_set_file_is_ever_opened(selection):
    seen = selection["seen"]
    assert any("/real/train/" in p for p in seen)  # the recording works: training images were read
    for folder in selection["test_dirs"]:
        root = os.path.realpath(folder)
        assert not [p for p in seen if p == root or p.startswith(root + os.sep)]


def test_folds_partition_the_training_images_and_probes_never_train_on_their_held_out_fold(selection):
    report = json.loads((selection["out"] / "selection.json").read_text())
    fold = report["fold_of_image"]
    assert len(fold) == TRAINING_NUMBER and sorted(set(fold)) == list(range(FOLDS))
    sizes = [fold.count(f) for f in range(FOLDS)]
    assert max(sizes) - min(sizes) <= 1
    assert report["training_images"] == sorted(p.name for p in (shapes64() / "real" / "train").glob(
        "*.png"))[:TRAINING_NUMBER]
    calls = selection["calls"]
    assert len(calls) == FOLDS * len(report["all_scores"])  # one probe per fold per candidate
    for f, trained_on in calls:
        held_out = {i for i, g in enumerate(fold) if g == f}
        assert trained_on == set(range(TRAINING_NUMBER)) - held_out


def test_selection_json_scores_heatmap_and_selected_config(selection, tiny64_checkpoint):
    out = selection["out"]
    report = json.loads((out / "selection.json").read_text())
    cells = report["cells"]
    assert [(c["steps"], c["blocks"]) for c in cells] == [([t], [b]) for t in (50, 250) for b in (5, 8)]
    for score in report["all_scores"]:
        assert len(score["fold_mious"]) == FOLDS
        assert score["miou"] == pytest.approx(statistics.mean(score["fold_mious"]), abs=1e-12)
        assert score["miou_std"] == pytest.approx(statistics.stdev(score["fold_mious"]), abs=1e-12)
        assert 0 < score["miou"] < 1
    path = report["greedy_path"]
    assert path[0] == max(cells, key=lambda c: c["miou"])  # the search starts at the best cell
    assert all(b["miou"] > a["miou"] + report["probe"]["min_gain"] for a, b in zip(path, path[1:]))
    chosen = report["selected"]
    assert (chosen["steps"], chosen["blocks"]) == (path[-1]["steps"], path[-1]["blocks"])
    assert report["stopped"].startswith(("no added step", "every step"))
    # The config's own protocol (steps 50, 150, 250) is not in this grid, so it is not scored; a grid
    # holding it is scored in the resume test below.
    assert report["config_protocol"] is None
    # selected.json is the input config with the chosen steps, blocks and the dim they give.
    selected = load_config(str(out / "selected.json"))
    original = load_config("experiments/celebamask64/ddpm.json")
    assert (selected["steps"], selected["blocks"]) == (chosen["steps"], chosen["blocks"])
    assert {k: v for k, v in selected.items() if k not in ("steps", "blocks", "dim") and original[k] != v} == {
        "training_path": str(shapes64() / "real" / "train"), "testing_path": selected["testing_path"],
        "model_path": str(tiny64_checkpoint), "training_number": TRAINING_NUMBER,
        "exp_dir": str(selection["tmp"] / "exp")}
    from ddpmseg.features.ddpm import FeatureExtractorDDPM
    from ddpmseg.common.model_flags import resolve_model_flags
    from guided_diffusion.checkpoint import load_model_and_diffusion
    model, diffusion = load_model_and_diffusion(str(tiny64_checkpoint), resolve_model_flags(selected))
    acts = FeatureExtractorDDPM(steps=selected["steps"], blocks=selected["blocks"], model=model,
                                diffusion=diffusion)(torch.zeros(1, 3, 64, 64))
    assert selected["dim"] == [64, 64, sum(a.shape[1] for a in acts)]
    # The heatmap: a cell grid, the chosen cells framed in red and the others not.
    from ddpmseg.classifier.selection_heatmap import _CELL_PX, _FRAME, _MARGIN_PX
    img = np.asarray(Image.open(out / "selection_heatmap.png").convert("RGB"))
    for i, t in enumerate((50, 250)):
        for j, b in enumerate((5, 8)):
            corner = tuple(img[_MARGIN_PX + i * _CELL_PX + 1, _MARGIN_PX + j * _CELL_PX + 1])
            assert (corner == _FRAME) == (t in chosen["steps"] and b in chosen["blocks"]), (t, b)


def test_resume_scores_only_what_is_missing_and_budget_stops_cleanly(selection, tiny64_checkpoint, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # A copy of the finished scores minus two candidates: the rerun trains probes for those two only.
    saved = json.loads((selection["out"] / "scores.json").read_text())
    dropped = sorted(saved["scores"])[:2]
    for key in dropped:
        del saved["scores"][key]
    (out / "scores.json").write_text(json.dumps(saved))
    spy = TrainingSpy(monkeypatch)
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, out)) == 0
    assert len(spy.calls) == 2 * FOLDS
    assert json.loads((out / "selection.json").read_text())["selected"] == json.loads(
        (selection["out"] / "selection.json").read_text())["selected"]
    assert "resuming: " in capsys.readouterr().out
    # A budget that runs out after three probes: outputs from what was scored, and it says so.
    clock = iter(range(0, 10**6, 60))  # every probe (and the start) takes a minute
    monkeypatch.setattr(feature_selection, "time", SimpleNamespace(time=lambda: next(clock)))
    budget_out = tmp_path / "budget"
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, budget_out, "--budget_minutes", "3.5")) == 0
    printed = capsys.readouterr().out
    assert "budget" in printed and "rerun the same command to continue" in printed
    report = json.loads((budget_out / "selection.json").read_text())
    assert report["stopped"] == "the time budget (--budget_minutes) ran out"
    assert len(report["cells"]) == 3 and len(json.loads((budget_out / "scores.json").read_text())["scores"]) == 3
    assert report["selected"]["miou"] == max(c["miou"] for c in report["cells"])
    assert (budget_out / "selected.json").exists() and (budget_out / "selection_heatmap.png").exists()


def test_scores_of_other_settings_are_not_reused(selection, tiny64_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text((selection["out"] / "scores.json").read_text())
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, out, "--members", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "holds scores of another config, grid or probe" in err


@pytest.mark.parametrize("extra, message", [
    (["--steps", "50", "1000"], "steps [1000] do not exist: this diffusion has 1000 steps"),
    (["--blocks", "5", "12"], "blocks [12] do not exist: this U-Net has decoder blocks (output_blocks) 0..11"),
    (["--folds", "7"], "--folds 7 is more than the 6 training images"),
    (["--folds", "1"], "--folds must be >= 2"),
    (["--budget_minutes", "0"], "--budget_minutes must be > 0"),
])
def test_bad_inputs_get_one_error_line_and_leave_nothing(tmp_path, tiny64_checkpoint, capsys, extra, message):
    out = tmp_path / "out"
    assert select_features.main(argv(tmp_path, tiny64_checkpoint, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert not out.exists()


def test_the_configs_own_steps_and_blocks_are_scored_for_comparison(selection, tiny64_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text((selection["out"] / "scores.json").read_text())  # same settings: reused
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, out, "--set", "steps=[250, 50]",
                                     "--set", "blocks=[8, 5]")) == 0
    report = json.loads((out / "selection.json").read_text())
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert report["config_protocol"] == scores["50,250/5,8"]  # every cell of the grid: the whole store
    assert "the config's own steps [50, 250] x blocks [5, 8]: CV mIoU" in capsys.readouterr().out
