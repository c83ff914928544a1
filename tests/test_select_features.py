"""ddpmseg select on shapes64 training images with the tiny U-Net: fold split, outputs, resume, bad inputs."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import select as select_features
from conftest import shapes64
from ddpmseg.classifier import feature_selection
from ddpmseg.common.config import ConfigError, load_config
from ddpmseg.common.errors import DataError
from ddpmseg.common.seeding import stream_seed

# A small grid and a tiny probe: 6 training images in 3 folds, 2 steps x 2 blocks, 30 iterations; the
# config's own steps x blocks are the whole grid, so the grid is not extended by them.
TRAINING_NUMBER, FOLDS = 6, 3
GRID = ["--steps", "50", "250", "--blocks", "5", "8", "--folds", str(FOLDS), "--iterations", "30"]
OWN = ["--set", "steps=[50, 250]", "--set", "blocks=[5, 8]"]

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
            "--set", f"exp_dir={tmp_path / 'exp'}", *OWN, *GRID, *extra]


class TrainingSpy:
    """Records, for each probe trained, its fold (from its seed), the images its pixels come from, and the
    images it is then scored on (whose activation maps the scoring reads, after the real calls)."""

    def __init__(self, monkeypatch, seed=0):
        self.calls: list[tuple[int, set[int], list[int]]] = []
        fold_of_seed = {stream_seed("fold_seed", seed, f): f for f in range(FOLDS)}
        real = feature_selection.train_ensemble

        def spy(store, pixels, settings, *args, **kwargs):
            h, w = pixels.hw
            self.calls.append((fold_of_seed[settings.seed], set((pixels.index // (h * w)).tolist()), []))
            return real(store, pixels, settings, *args, **kwargs)

        real_native = feature_selection.LayerSubset.native

        def scored(subset, i):
            self.calls[-1][2].append(i)
            return real_native(subset, i)

        monkeypatch.setattr(feature_selection, "train_ensemble", spy)
        monkeypatch.setattr(feature_selection.LayerSubset, "native", scored)


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
    for f, trained_on, _ in calls:
        held_out = {i for i, g in enumerate(fold) if g == f}
        assert trained_on == set(range(TRAINING_NUMBER)) - held_out


def test_each_probe_is_scored_on_its_held_out_fold_once_each(selection):
    """A probe trained without fold f votes on fold f's images, each once, and on no image it trained on."""
    fold = json.loads((selection["out"] / "selection.json").read_text())["fold_of_image"]
    for f, trained_on, scored in selection["calls"]:
        assert sorted(scored) == [i for i, g in enumerate(fold) if g == f]
        assert not trained_on & set(scored)


def test_selection_json_scores_heatmap_and_selected_config(selection, tiny64_checkpoint):
    out = selection["out"]
    report = json.loads((out / "selection.json").read_text())
    cells = report["cells"]
    assert report["grid"] == {"steps": [50, 250], "blocks": [5, 8]}
    assert [(c["steps"], c["blocks"]) for c in cells] == [([t], [b]) for t in (50, 250) for b in (5, 8)]
    for score in report["all_scores"]:
        assert len(score["fold_mious"]) == FOLDS
        assert score["miou"] == pytest.approx(statistics.mean(score["fold_mious"]), abs=1e-12)
        assert score["miou_std"] == pytest.approx(statistics.stdev(score["fold_mious"]), abs=1e-12)
        assert 0 < score["miou"] < 1
    path = report["greedy_path"]
    assert path[0] == max(cells, key=lambda c: c["miou"])  # the search starts at the best cell
    min_gain = report["probe"]["min_gain"]
    for a, b in zip(path, path[1:]):  # each step of the path passed the paired criterion, by its fold scores
        gains = [y - x for x, y in zip(a["fold_mious"], b["fold_mious"])]
        assert statistics.mean(gains) > max(min_gain, statistics.stdev(gains) / FOLDS ** 0.5)
    assert report["stopped"].startswith(("no added step", "every step")) and report["complete"] is True
    # The config's own protocol (the whole 2 x 2 grid here) is scored, and kept unless the search's end
    # beats it by the same criterion.
    scores = json.loads((out / "scores.json").read_text())["scores"]
    own = report["config_protocol"]
    assert own == scores["50,250/5,8"]
    end = path[-1]
    gains = [y - x for x, y in zip(own["fold_mious"], end["fold_mious"])]
    assert report["search_gain_over_config"]["mean"] == pytest.approx(statistics.mean(gains), abs=1e-12)
    beats = statistics.mean(gains) > max(min_gain, statistics.stdev(gains) / FOLDS ** 0.5)
    chosen = report["selected"]
    assert (chosen["steps"], chosen["blocks"]) == ((end if beats else own)["steps"], (end if beats else own)["blocks"])
    assert report["fallback"] == (not beats and (end["steps"], end["blocks"]) != (own["steps"], own["blocks"]))
    # selected.json is the input config with the chosen steps, blocks and the dim they give.
    selected = load_config(str(out / "selected.json"))
    original = load_config("experiments/celebamask64/ddpm.json")
    assert (selected["steps"], selected["blocks"]) == (chosen["steps"], chosen["blocks"])
    assert selected["selection"] == {"complete": True, "fallback": report["fallback"],
                                     "report": str(out / "selection.json")}
    assert {k: v for k, v in selected.items() if k not in ("steps", "blocks", "dim", "selection")
            and original[k] != v} == {
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
    # ... and, pixel for pixel, the heatmap of selection.json's cells with the chosen ones framed.
    from ddpmseg.classifier.selection_heatmap import heatmap
    scored = {(c["steps"][0], c["blocks"][0]): c["miou"] for c in cells}
    framed = {(t, b) for t in chosen["steps"] for b in chosen["blocks"]}
    assert np.array_equal(img, heatmap(scored, [50, 250], [5, 8], framed))


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
    assert "the search is unfinished" in printed and "rerun the same command" in printed
    assert "train it (unfinished search): ddpmseg train" in printed
    report = json.loads((budget_out / "selection.json").read_text())
    assert report["stopped"] == "the time budget (--budget_minutes) ran out" and report["complete"] is False
    # Three probes: the config's own steps x blocks first, then two single cells.
    scored = json.loads((budget_out / "scores.json").read_text())["scores"]
    assert list(scored) == ["50,250/5,8", "50/5", "50/8"] and len(report["cells"]) == 2
    assert report["config_protocol"] == scored["50,250/5,8"]
    best_cell = max(report["cells"], key=lambda c: c["miou"])
    gains = [y - x for x, y in zip(scored["50,250/5,8"]["fold_mious"], best_cell["fold_mious"])]
    beats = statistics.mean(gains) > max(report["probe"]["min_gain"], statistics.stdev(gains) / FOLDS ** 0.5)
    assert report["selected"]["miou"] == (best_cell if beats else scored["50,250/5,8"])["miou"]
    assert load_config(str(budget_out / "selected.json"))["selection"]["complete"] is False
    assert (budget_out / "selection_heatmap.png").exists()
    # A budget spent before the first probe: nothing is chosen, and the outputs say so.
    empty_out = tmp_path / "nothing"
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, empty_out, "--budget_minutes", "0.5")) == 0
    assert "nothing was scored; rerun the same command with a larger --budget_minutes" in capsys.readouterr().out
    report = json.loads((empty_out / "selection.json").read_text())
    assert (report["selected"], report["cells"], report["complete"]) == (None, [], False)
    assert (empty_out / "selection_heatmap.png").exists() and not (empty_out / "selected.json").exists()
    # A budget spent after the config's own probe alone: it is the choice, with no search gain to report.
    own_out = tmp_path / "own_only"
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, own_out, "--budget_minutes", "1.5")) == 0
    report = json.loads((own_out / "selection.json").read_text())
    assert (report["cells"], report["greedy_path"], report["search_gain_over_config"]) == ([], [], None)
    assert report["selected"]["miou"] == report["config_protocol"]["miou"]


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
    (["--repeats", "0"], "--repeats must be >= 1 (the number of k-fold splits), got 0"),
    (["--steps", "50", "50"], "--steps must list distinct values, got [50, 50]"),
])
def test_bad_inputs_get_one_error_line_and_leave_nothing(tmp_path, tiny64_checkpoint, capsys, extra, message):
    out = tmp_path / "out"
    assert select_features.main(argv(tmp_path, tiny64_checkpoint, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert not out.exists()


def test_the_configs_own_steps_and_blocks_join_the_grid(tiny64_checkpoint, tmp_path):
    """A config whose steps x blocks lie outside the requested grid: they are added to it, so the
    selection can fall back on them (nothing is extracted here: the grid is fixed at construction)."""
    data = shapes64() / "real"
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "training_path": str(data / "train"), "model_path": str(tiny64_checkpoint), "training_number": 4,
        "steps": [150], "blocks": [5, 9], "device": "cpu"})
    from ddpmseg.common.model_flags import resolve_model_flags
    logged = []
    sel = feature_selection.Selection(cfg, resolve_model_flags(cfg), torch.device("cpu"), str(tmp_path), [50, 250],
                                      [5, 8], feature_selection.ProbeSettings(folds=2), log=logged.append)
    assert (sel.steps, sel.blocks, sel.own) == ([50, 150, 250], [5, 8, 9], ([150], [5, 9]))
    assert any("the config's own steps [150] x blocks [5, 9]" in m for m in logged)


def score(*fold_mious: float, steps=(50,), blocks=(5,)) -> feature_selection.Score:
    folds = torch.tensor(fold_mious, dtype=torch.float64)
    return feature_selection.Score(list(steps), list(blocks), float(folds.mean()), float(folds.std()),
                                   list(fold_mious))


def test_a_candidate_must_beat_min_gain_and_its_paired_standard_error():
    current = score(0.30, 0.40, 0.50, 0.60)  # folds differ by 10 points: the fold spread
    # +2 points on every fold: paired standard error 0, so the mean gain decides.
    assert feature_selection.improves(score(0.32, 0.42, 0.52, 0.62), current, min_gain=0.002)
    assert not feature_selection.improves(score(0.32, 0.42, 0.52, 0.62), current, min_gain=0.03)  # 2 < 3 points
    # Mean gain +1 point but gains +5, -3, +4, -2: standard error sqrt(var/4) = 2.04 points > 1.
    noisy = score(0.35, 0.37, 0.54, 0.58)
    assert feature_selection.paired_gain(noisy, current) == pytest.approx(
        (0.01, statistics.stdev([0.05, -0.03, 0.04, -0.02]) / 2), abs=1e-12)
    assert not feature_selection.improves(noisy, current, min_gain=0.002)
    # The same mean gain, consistent across folds (+0.5 to +1.5 points): taken.
    assert feature_selection.improves(score(0.305, 0.415, 0.51, 0.61), current, min_gain=0.002)


def test_a_gain_equal_to_min_gain_or_to_its_standard_error_does_not_replace():
    """Both bounds are strict. The fold values are exact in binary: gains 0.25 and 0.5 (mean 0.375, standard
    error 0.125); gains 0 and 0.5 (mean 0.25 and standard error 0.25, both computed exactly)."""
    current = score(0.25, 0.25)
    steady = score(0.5, 0.75)
    assert feature_selection.paired_gain(steady, current) == (0.375, 0.125)
    assert not feature_selection.improves(steady, current, min_gain=0.375)
    assert feature_selection.improves(steady, current, min_gain=0.25)
    uneven = score(0.25, 0.75)
    assert feature_selection.paired_gain(uneven, current) == (0.25, 0.25)
    assert not feature_selection.improves(uneven, current, min_gain=0.0)


def test_the_search_result_falls_back_on_the_configs_own_choice_unless_beaten():
    own = score(0.30, 0.40, 0.50, 0.60, steps=(50, 150, 250), blocks=(4, 5, 6))
    noisy_end = score(0.35, 0.37, 0.54, 0.58, steps=(10,), blocks=(4,))  # higher mean, not beyond its error
    result = feature_selection.SearchResult(own, [noisy_end], [noisy_end], "stopped", True, min_gain=0.002)
    assert result.chosen is own and result.fallback
    better_end = score(0.33, 0.43, 0.53, 0.63, steps=(10,), blocks=(4,))
    result = feature_selection.SearchResult(own, [better_end], [better_end], "stopped", True, min_gain=0.002)
    assert result.chosen is better_end and not result.fallback
    # The search ending on the config's own choice is no fallback; nothing scored chooses nothing.
    assert not feature_selection.SearchResult(own, [own], [own], "stopped", True, 0.002).fallback
    assert feature_selection.SearchResult(None, [], [], "budget", False, 0.002).chosen is None


class ScriptedSelection:
    """What Selection.search and compare_noise_draws read of a Selection, with scripted scores: a candidate's
    mIoU is the sum of its steps' and blocks' values (plus ``draw_gain[K]`` with K noise draws), on every fold
    (offsets 0, +1 and -1 points: paired gains have no spread, so min_gain alone decides). ``budget``: the
    number of probes before the time is up."""

    def __init__(self, steps, blocks, step_value, block_value, own, budget=None, noise_draws=None, draw_gain=None,
                 full_value=None, confirm=True):
        self.steps, self.blocks, self.own, self.budget = steps, blocks, own, budget
        self.step_value, self.block_value, self.draw_gain = step_value, block_value, draw_gain or {}
        self.full_value = full_value or {}  # candidate key -> its mIoU trained in full (default: the probe's)
        self.probe = feature_selection.ProbeSettings(confirm=confirm)
        self.cfg, self.noise_draws = {"noise_draws": 1, "model_num": 10}, noise_draws
        self.calls = []

    step_rows = feature_selection.Selection.step_rows

    def score(self, steps, blocks, noise_draws=None, full=False):
        if len(self.calls) == self.budget:
            raise feature_selection.BudgetSpent
        self.calls.append((sorted(steps), sorted(blocks)) + ((noise_draws,) if noise_draws else ())
                          + (("full",) if full else ()))
        v = sum(self.step_value[t] for t in steps) + sum(self.block_value[b] for b in blocks)
        v += self.draw_gain.get(noise_draws, 0)
        if full:
            v = self.full_value.get(feature_selection.candidate_key(steps, blocks), v)
        return score(v, v + 0.01, v - 0.01, steps=sorted(steps), blocks=sorted(blocks))


def cells(scores):
    return [(s.steps, s.blocks) for s in scores]


def test_greedy_search_adds_the_best_step_or_block_while_it_gains_more_than_min_gain():
    # Single cells: 10/1 is best (0.5). Round 1: + block 2 gains 10 points, + step 20 5, + block 3 0.05;
    # round 2: + step 20 (5 points); round 3: + block 3 gains 0.05 points < min_gain 0.2: stop there.
    sel = ScriptedSelection([10, 20], [1, 2, 3], {10: 0.30, 20: 0.05}, {1: 0.20, 2: 0.10, 3: 0.0005},
                            own=([10, 20], [1, 2, 3]))
    result = feature_selection.Selection.search(sel)
    assert sel.calls == [([10, 20], [1, 2, 3]), *[([t], [b]) for t in (10, 20) for b in (1, 2, 3)],
                         ([10, 20], [1]), ([10], [1, 2]), ([10], [1, 3]),  # round 1: steps, then blocks
                         ([10, 20], [1, 2]), ([10], [1, 2, 3]), ([10, 20], [1, 2, 3])]
    assert cells([result.own]) == [([10, 20], [1, 2, 3])]
    assert cells(result.singles) == [([t], [b]) for t in (10, 20) for b in (1, 2, 3)]
    assert cells(result.path) == [([10], [1]), ([10], [1, 2]), ([10, 20], [1, 2])]
    assert result.stopped == ("no added step or block raised CV mIoU by more than 0.20 points and its paired "
                              "standard error")
    assert (result.complete, result.min_gain) == (True, 0.002)
    # Block 3 worth a point: it is taken too, and the search stops with the whole grid chosen.
    sel.block_value[3] = 0.01
    result = feature_selection.Selection.search(sel)
    assert cells(result.path)[-1] == ([10, 20], [1, 2, 3]) and len(result.path) == 4
    assert result.stopped == "every step and block of the grid is in the selection"
    assert (result.complete, result.min_gain) == (True, 0.002)
    # A min_gain of 20 points (above the best gain, 10) stops the search at the best cell; the reason names it.
    sel.probe = feature_selection.ProbeSettings(min_gain=0.2)
    result = feature_selection.Selection.search(sel)
    assert cells(result.path) == [([10], [1])] and result.min_gain == 0.2
    assert result.stopped == ("no added step or block raised CV mIoU by more than 20.00 points and its paired "
                              "standard error")
    assert cells([result.own]) == [([10, 20], [1, 2, 3])] and len(result.singles) == 6


def test_search_over_blocks_alone_for_a_backbone_without_timesteps():
    sel = ScriptedSelection([], [1, 2], {}, {1: 0.5, 2: 0.1}, own=([], [1]))
    result = feature_selection.Selection.search(sel)
    assert sel.calls == [([], [1]), ([], [1]), ([], [2]), ([], [1, 2])]
    assert cells(result.path) == [([], [1]), ([], [1, 2])]


def test_a_budget_spent_keeps_what_was_scored():
    grid = ([10, 20], [1, 2, 3], {10: 0.30, 20: 0.05}, {1: 0.20, 2: 0.10, 3: 0.0005})
    ran_out = "the time budget (--budget_minutes) ran out"
    # During the single cells (own and two cells scored): the best cell so far is the path.
    result = feature_selection.Selection.search(ScriptedSelection(*grid, own=([10], [1, 2]), budget=3))
    assert cells(result.singles) == [([10], [1]), ([10], [2])] and cells(result.path) == [([10], [1])]
    assert (result.stopped, result.complete) == (ran_out, False)
    # During the first greedy round: the path is the best cell, once.
    result = feature_selection.Selection.search(ScriptedSelection(*grid, own=([10], [1, 2]), budget=8))
    assert cells(result.path) == [([10], [1])] and (result.stopped, result.complete) == (ran_out, False)
    # Before anything: nothing scored, nothing chosen.
    result = feature_selection.Selection.search(ScriptedSelection(*grid, own=([10], [1, 2]), budget=0))
    assert (result.own, result.singles, result.path, result.chosen) == (None, [], [], None)


def test_a_search_result_replaces_the_configs_own_only_if_it_wins_trained_in_full_too():
    # The probe's search ends on 10,20/1,2 (0.65), 30 points above the config's own 10,20/3 (0.3505).
    grid = ([10, 20], [1, 2, 3], {10: 0.30, 20: 0.05}, {1: 0.20, 2: 0.10, 3: 0.0005})

    def select(full_value, **kw):
        sel = ScriptedSelection(*grid, own=([10, 20], [3]), full_value=full_value, **kw)
        searched = feature_selection.Selection.search(sel)
        return sel, searched, feature_selection.Selection.confirm(sel, searched)

    # Trained in full, the config's own scores 0.40 and the search's end 0.39: the config's own is kept.
    sel, searched, result = select({"10,20/3": 0.40, "10,20/1,2": 0.39})
    assert cells([searched.chosen]) == [([10, 20], [1, 2])]  # the probe alone would have replaced it
    assert sel.calls[-2:] == [([10, 20], [3], "full"), ([10, 20], [1, 2], "full")]
    assert result.confirmation.members == 10
    assert (result.confirmation.own.miou, result.confirmation.search.miou) == pytest.approx((0.40, 0.39))
    assert result.chosen is result.own and result.fallback and result.complete
    assert cells([result.probe_choice]) == [([10, 20], [1, 2])]
    # The end wins by 0.1 points trained in full, under min_gain: still the config's own.
    result = select({"10,20/3": 0.40, "10,20/1,2": 0.401})[2]
    assert result.chosen is result.own and result.fallback
    # By 1 point on every fold: the search's end, checked.
    sel, _, result = select({"10,20/3": 0.40, "10,20/1,2": 0.41})
    assert cells([result.chosen]) == [([10, 20], [1, 2])] and not result.fallback
    # confirm off: no full training, the probe decides.
    sel, _, result = select({"10,20/3": 0.40, "10,20/1,2": 0.39}, confirm=False)
    assert not [c for c in sel.calls if "full" in c] and result.confirmation is None
    assert cells([result.chosen]) == [([10, 20], [1, 2])]
    # A budget that runs out during the check: the config's own, and the search is unfinished.
    probes = len(select({})[0].calls) - 2
    for budget in (probes, probes + 1):
        _, _, result = select({"10,20/3": 0.40, "10,20/1,2": 0.45}, budget=budget)
        assert result.chosen is result.own and result.fallback and result.complete is False  # JSON false
        assert result.stopped == "the time budget (--budget_minutes) ran out before the check by full training"


def test_no_full_training_when_the_probe_keeps_the_configs_own():
    # The search ends on 10/1,2 (0.6), 0.1 points below the config's own 10,20/1,2: nothing to check.
    sel = ScriptedSelection([10, 20], [1, 2], {10: 0.30, 20: 0.001}, {1: 0.20, 2: 0.10}, own=([10, 20], [1, 2]))
    result = feature_selection.Selection.confirm(sel, feature_selection.Selection.search(sel))
    assert cells([result.path[-1]]) == [([10], [1, 2])]
    assert not [c for c in sel.calls if "full" in c] and result.confirmation is None
    assert cells([result.chosen]) == [([10, 20], [1, 2])] and result.fallback


def test_the_full_training_check_trains_the_configs_members_to_early_stopping(tiny64_checkpoint, tmp_path,
                                                                              monkeypatch):
    """A full-training score trains model_num members with the config's own stopping rule, with the probe's
    fold seeds; its key names the training, so it never stands in for the probe's score of the same cells."""
    data = shapes64() / "real"
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "training_path": str(data / "train"), "model_path": str(tiny64_checkpoint), "training_number": 4,
        "steps": [50], "blocks": [5], "device": "cpu", "model_num": 3, "max_epochs": 2})
    from ddpmseg.common.model_flags import resolve_model_flags
    probe = feature_selection.ProbeSettings(folds=2, members=1, iterations=5)
    sel = feature_selection.Selection(cfg, resolve_model_flags(cfg), torch.device("cpu"), str(tmp_path), [50], [5],
                                      probe, log=lambda m: None)
    sel.extract()
    calls = []
    real = feature_selection.train_ensemble

    def spy(store, pixels, settings, exp_dir, members, **kwargs):
        calls.append((settings, members, kwargs["max_steps"]))
        return real(store, pixels, settings, exp_dir, members, **kwargs)

    monkeypatch.setattr(feature_selection, "train_ensemble", spy)
    probe_score = sel.score([50], [5])
    full_score = sel.score([50], [5], full=True)
    assert [(m, steps) for _, m, steps in calls] == [([0], 5)] * 2 + [([0, 1, 2], None)] * 2
    want = feature_selection.EnsembleSettings.from_config(cfg)
    for j, (settings, _, _) in enumerate(calls[2:]):
        assert settings == dataclasses.replace(want, seed=stream_seed("fold_seed", cfg["seed"], j))
    assert calls[0][0].early_stop_patience == 5  # the probe: its iterations, no early stop
    assert set(sel.scores) == {"50/5", "50/5 full training, 3 members"}
    assert sel.scores["50/5 full training, 3 members"] is full_score and sel.scores["50/5"] is probe_score
    assert full_score.fold_mious != probe_score.fold_mious
    # selection.json of a search that was checked by the full training, by value.
    check = feature_selection.Confirmation(3, full_score, full_score)
    result = feature_selection.SearchResult(probe_score, [probe_score], [probe_score], "stopped", True, 0.002, check)
    selected = sel.write_outputs(result, 1.5)
    report = json.loads((tmp_path / "selection.json").read_text())
    assert report["full_training_check"] == json.loads(json.dumps(feature_selection.confirmation_report(check, 0.002)))
    assert report["full_training_check"]["gain"] == {"mean": 0.0, "standard_error": 0.0}
    assert report["seconds"] == 1.5 and report["fold_splits"] == [report["fold_of_image"]]
    assert report["selected"]["dim"] == selected["dim"] == [64, 64, sel.store.dim]  # the 50 x 5 cell's channels
    assert report["search_gain_over_config"] == {"mean": 0.0, "standard_error": 0.0}


def test_noise_draws_keep_the_best_count_only_if_it_improves_on_the_configs():
    def compare(draw_gain, budget=None):
        sel = ScriptedSelection([10], [1], {10: 0.3}, {1: 0.2}, own=([10], [1]), noise_draws=[2, 4],
                                draw_gain=draw_gain)
        chosen = sel.score([10], [1])
        sel.budget = budget
        kept, scores = feature_selection.Selection.compare_noise_draws(sel, chosen)
        return kept, {k: round(s.miou, 6) for k, s in scores.items()}

    # 2 draws gain 5 points, 4 draws 1 point: the best count, 2, is kept.
    assert compare({2: 0.05, 4: 0.01}) == (2, {1: 0.5, 2: 0.55, 4: 0.51})
    # The best count gains 0.1 points only (< min_gain): the config's own count stays.
    assert compare({2: 0.001, 4: -0.01}) == (1, {1: 0.5, 2: 0.501, 4: 0.49})
    # The budget runs out before 4 draws are scored: the counts scored so far decide.
    assert compare({2: 0.05, 4: 0.1}, budget=2) == (2, {1: 0.5, 2: 0.55})


def test_repeated_splits_are_independent_and_split_zero_is_cross_fittings():
    from ddpmseg.classifier.crossfit import fold_assignment
    splits = [fold_assignment(12, 4, seed=0, split=r) for r in range(3)]
    assert torch.equal(splits[0], fold_assignment(12, 4, seed=0))
    assert not torch.equal(splits[0], splits[1]) and not torch.equal(splits[1], splits[2])
    for fold in splits:  # each split is balanced: 3 images per fold
        assert torch.bincount(fold).tolist() == [3, 3, 3, 3]


def test_repeats_score_every_fold_of_every_split(tiny64_checkpoint, tmp_path, monkeypatch):
    """repeats=2: a candidate's fold scores are split 0's folds, then split 1's, each probe trained on the
    images outside its own split's held-out fold and seeded by its running fold index."""
    data = shapes64() / "real"
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "training_path": str(data / "train"), "model_path": str(tiny64_checkpoint), "training_number": 4,
        "steps": [50], "blocks": [5], "device": "cpu"})
    from ddpmseg.classifier.crossfit import fold_assignment
    from ddpmseg.common.model_flags import resolve_model_flags
    probe = feature_selection.ProbeSettings(folds=2, repeats=2, members=1, iterations=5)
    sel = feature_selection.Selection(cfg, resolve_model_flags(cfg), torch.device("cpu"), str(tmp_path), [50], [5],
                                      probe, log=lambda m: None)
    sel.extract()
    calls = []
    real = feature_selection.train_ensemble

    def spy(store, pixels, settings, *args, **kwargs):
        h, w = pixels.hw
        calls.append((settings.seed, set((pixels.index // (h * w)).tolist())))
        return real(store, pixels, settings, *args, **kwargs)

    monkeypatch.setattr(feature_selection, "train_ensemble", spy)
    result = sel.score([50], [5])
    assert len(result.fold_mious) == 4
    for j, (seed, trained_on) in enumerate(calls):
        split = fold_assignment(4, 2, cfg["seed"], split=j // 2)
        assert seed == stream_seed("fold_seed", cfg["seed"], j)
        assert trained_on == set((split != j % 2).nonzero().flatten().tolist())


def test_noise_draws_score_the_selection_with_each_count_and_keep_one_only_if_it_improves(
        selection, tiny64_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text((selection["out"] / "scores.json").read_text())  # the search is reused
    stores = []
    real = feature_selection.train_ensemble
    monkeypatch.setattr(feature_selection, "train_ensemble",
                        lambda store, *a, **kw: stores.append(store.native(0)) or real(store, *a, **kw))
    assert select_features.main(argv(selection["tmp"], tiny64_checkpoint, out, "--noise_draws", "1", "2")) == 0
    report = json.loads((out / "selection.json").read_text())
    chosen = report["selected"]
    scores = json.loads((out / "scores.json").read_text())["scores"]
    key = f"{','.join(map(str, chosen['steps']))}/{','.join(map(str, chosen['blocks']))}"
    draws = report["noise_draws"]
    assert draws["scores"]["1"] == {k: chosen[k] for k in draws["scores"]["1"]}  # the config's own: the search's
    assert draws["scores"]["2"] == scores[f"{key} x2 draws"]
    assert len(stores) == FOLDS  # only the two-draw candidate was trained, once per fold
    two, one = (feature_selection.Score(**draws["scores"][k]) for k in ("2", "1"))
    assert draws["kept"] == (2 if feature_selection.improves(two, one, report["probe"]["min_gain"]) else 1)
    assert load_config(str(out / "selected.json"))["noise_draws"] == draws["kept"]
    assert f"the selected config keeps {draws['kept']}" in capsys.readouterr().out
    # Those probes trained on the chosen layers extracted with two draws: training image 0's maps as
    # a two-draw extractor gives them, stored in float16.
    from ddpmseg.common.model_flags import resolve_model_flags
    from ddpmseg.data.folders import ImageLabelDataset
    from ddpmseg.features.ddpm import FeatureExtractorDDPM
    cfg = load_config(str(out / "selected.json"), {"noise_draws": 2})
    ext = FeatureExtractorDDPM.from_config(cfg, resolve_model_flags(cfg), torch.device("cpu"), lambda m: None)
    train = ImageLabelDataset(cfg["training_path"], resolution=64, num_images=1, number_class=cfg["number_class"],
                              ignore_label=cfg["ignore_label"], palette=cfg["palette"])
    (_, image, _), = list(train.windows())
    want = ext(image[None])
    assert len(stores[0]) == len(want)
    assert all(torch.equal(a, w[0].half()) for a, w in zip(stores[0], want))


@pytest.mark.parametrize("extra, message", [
    (["--noise_draws", "2", "2"], "--noise_draws must list distinct counts >= 1, got [2, 2]"),
    (["--noise_draws", "0"], "--noise_draws must list distinct counts >= 1, got [0]"),
])
def test_bad_noise_draws_get_one_error_line_and_leave_nothing(tmp_path, tiny64_checkpoint, capsys, extra, message):
    out = tmp_path / "out"
    assert select_features.main(argv(tmp_path, tiny64_checkpoint, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert not out.exists()


def test_the_printed_report_says_why_the_configs_own_was_kept(capsys):
    own = score(0.30, 0.40, 0.50, steps=(50, 150), blocks=(4, 5))
    end = score(0.40, 0.50, 0.60, steps=(10,), blocks=(4,))  # beats own by 10 points in the probe's CV
    check = feature_selection.Confirmation(10, score(0.38, 0.48, 0.58, steps=(50, 150), blocks=(4, 5)),
                                           score(0.36, 0.46, 0.56, steps=(10,), blocks=(4,)))
    result = feature_selection.SearchResult(own, [end], [end], "stopped", True, 0.002, check)
    probe = feature_selection.ProbeSettings(folds=3)
    select_features.report(result, {"dim": [64, 64, 1152]}, probe, "out")
    printed = capsys.readouterr().out.splitlines()
    assert printed[3:5] == [
        "the config's own steps [50, 150] x blocks [4, 5], full training (10 members): CV mIoU 48.00 ± 10.00",
        "the search's steps [10] x blocks [4], full training (10 members): CV mIoU 46.00 ± 10.00"]
    assert printed[5] == ("selected steps [50, 150] x blocks [4, 5] (dim 1152), kept: the search's result beat it "
                          "in the probe's CV but not trained in full (by more than --min_gain and its paired "
                          "standard error); outputs in out")
    # Out of time before the check: said so.
    result = feature_selection.SearchResult(own, [end], [end], "budget", False, 0.002,
                                            feature_selection.Confirmation(10, check.own))
    select_features.report(result, {"dim": [64, 64, 1152]}, probe, "out")
    assert ("selected steps [50, 150] x blocks [4, 5] (dim 1152), kept: the budget ran out before the search's "
            "result was checked by full training; outputs in out") in capsys.readouterr().out


def test_the_full_training_check_is_recorded_with_both_scores_the_paired_gain_and_the_verdict():
    """selection.json's "full_training_check", by value: gains 0.25 and 0.5 (mean 0.375, standard error
    0.125, exact in binary) pass a min_gain of 0.25 and not one of 0.375; a check cut short by the budget
    records what it scored and no gain."""
    from dataclasses import asdict
    own, search = score(0.25, 0.25, steps=(50, 150), blocks=(4, 5)), score(0.5, 0.75, steps=(10,), blocks=(4,))
    check = feature_selection.Confirmation(10, own, search)
    assert feature_selection.confirmation_report(check, 0.25) == {
        "members": 10, "config_protocol": asdict(own), "search": asdict(search),
        "gain": {"mean": 0.375, "standard_error": 0.125}, "passed": True}
    assert feature_selection.confirmation_report(check, 0.375)["passed"] is False
    for cut in (feature_selection.Confirmation(10, own), feature_selection.Confirmation(10, None, search)):
        assert feature_selection.confirmation_report(cut, 0.0) == {
            "members": 10, "config_protocol": None if cut.own is None else asdict(own),
            "search": None if cut.search is None else asdict(search), "gain": None, "passed": False}
    assert feature_selection.confirmation_report(None, 0.0) is None


def test_an_ignore_label_is_left_out_of_the_probes_training_and_of_their_scores(tiny64_checkpoint, tmp_path,
                                                                              monkeypatch):
    """With ignore_label 0 (the procedural set's background, in every image), the probes' training pixels
    are exactly the other pixels of the training windows, and every fold is scored by an IoU that ignores
    label 0 too (its constructor arguments recorded around the real one)."""
    from ddpmseg.common.model_flags import resolve_model_flags
    data = shapes64() / "real"
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "training_path": str(data / "train"), "model_path": str(tiny64_checkpoint), "training_number": 4,
        "steps": [50], "blocks": [5], "device": "cpu", "ignore_label": 0, "min_region_pixels": 0})
    logged = []
    sel = feature_selection.Selection(cfg, resolve_model_flags(cfg), torch.device("cpu"), str(tmp_path), [50, 250],
                                      [5, 8], feature_selection.ProbeSettings(folds=2, members=1, iterations=3),
                                      log=logged.append)
    sel.extract()
    assert len(sel.store.layer_shapes) == 4  # the grid's 2 steps x 2 blocks, not the config's 1 x 1
    assert logged[-1] == (f"candidate store: 4 training images x 2 steps x 2 blocks, {sel.store.nbytes / 2**20:.1f} "
                          "MiB (float16, native resolution)")
    assert 0.1 < sel.store.nbytes / 2**20 < 10  # so that the line's one decimal shows the unit's scale
    windows = torch.stack(sel.labels).reshape(-1)
    assert torch.equal(sel.pixels.index, torch.nonzero(windows != 0).squeeze(1))
    assert torch.equal(sel.pixels.labels, windows[windows != 0])
    made = []
    real = feature_selection.IoUAccumulator

    def recorded(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_selection, "IoUAccumulator", recorded)
    first = sel.score([50], [5])
    assert made == [(19, 0), (19, 0)]
    # The score's mean is the float64 mean of its folds (two: exact), and asking with the config's own
    # number of noise draws is the same candidate, already scored.
    assert first.miou == (first.fold_mious[0] + first.fold_mious[1]) / 2
    assert sel.score([50], [5], noise_draws=cfg["noise_draws"]) is first and len(made) == 2
    # Another number of draws extracts exactly the candidate's steps x blocks again.
    extractors = []
    real_store = sel.training_store
    monkeypatch.setattr(sel, "training_store", lambda backbone, desc: extractors.append(backbone) or
                        real_store(backbone, desc))
    sel.score([250], [8], noise_draws=2)
    assert [(b.steps, b.blocks, 1 + len(b.extra_draws)) for b in extractors] == [([250], [8], 2)]


def test_the_selection_is_built_from_the_config(tiny64_checkpoint, tmp_path):
    """What the constructor takes from the config, by value: the grid widened by the config's own step when
    only its step is outside (step 5 is in the grid as a step, block 5 as a block: a mix-up of the two sets
    would hide it), the training folder's reading settings, folds equal to the number of images (allowed),
    the budget's deadline, and the settings a rerun must match to reuse scores (everything that can change
    a probe's score: not the test set, the device, the steps, blocks and dim of the config, nor model_num)."""
    import shutil
    from ddpmseg.common.model_flags import resolve_model_flags
    images, masks = tmp_path / "images", tmp_path / "masks"  # masks in a folder of their own
    images.mkdir(), masks.mkdir()
    for f in sorted((shapes64() / "real" / "train").iterdir())[:8]:  # 4 images and their masks
        shutil.copy(f, (images if f.suffix == ".png" else masks) / f.name)
    # A fifth image twice as wide as the working size: several windows, one image.
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(images / "zz_wide.png")
    np.save(masks / "zz_wide.npy", np.zeros((64, 128), np.int64))
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "training_path": str(images), "training_masks_path": str(masks), "model_path": str(tiny64_checkpoint),
        "training_number": 5, "steps": [150], "blocks": [5], "device": "cpu", "ignore_label": 3})
    flags = resolve_model_flags(cfg)
    logged = []
    before = time.time()
    probe = feature_selection.ProbeSettings(folds=5, repeats=2)
    sel = feature_selection.Selection(cfg, flags, torch.device("cpu"), str(tmp_path / "out"), [5, 50], [5, 8], probe,
                                      budget_minutes=2, log=logged.append)
    assert (sel.steps, sel.blocks) == ([5, 50, 150], [5, 8])
    assert "the grid also holds the config's own steps [150] x blocks [5], the fallback" in logged
    assert before + 120 <= sel.deadline <= time.time() + 120
    ds = sel.train_set
    assert (len(ds), ds.number_class, ds.ignore_label, ds.palette) == (5, 19, 3, cfg["palette"])
    assert ds.masks_dir == str(masks) and cfg["palette"] is not None
    windows = ds.windows_per_image()
    assert windows == [1, 1, 1, 1, 3]  # overlapping windows cover the wide image
    for split in range(2):  # 5 folds of 5 images: one image each; the wide image's windows share its fold
        image_folds, window_folds = sel.image_folds[split].tolist(), sel.folds[split].tolist()
        assert sorted(image_folds) == [0, 1, 2, 3, 4]
        assert window_folds == [f for f, k in zip(image_folds, windows) for _ in range(k)]
    assert sel.image_folds[0].tolist() != sel.image_folds[1].tolist()  # two splits, not one twice
    assert sel.noise_draw_scores is None
    # Store layers step-major over the grid's 3 steps x 2 blocks, whatever order they are asked in.
    assert sel.layers_of([150, 50], [8, 5]) == [2, 3, 4, 5] and sel.layers_of([5], [8]) == [1]
    left_out = ("exp_dir", "testing_path", "testing_masks_path", "testing_number", "device", "steps", "blocks", "dim",
                "model_num")
    # More images asked for than the folder holds: the error names the config's key.
    with pytest.raises(DataError, match="'training_number' is 6, but .* holds only 5 images"):
        feature_selection.Selection({**cfg, "training_number": 6}, flags, torch.device("cpu"), str(tmp_path / "out"),
                                    [5, 50], [5, 8], probe)
    # The config's own steps x blocks already in the grid: nothing is added, nothing said.
    logged.clear()
    same = feature_selection.Selection(cfg, flags, torch.device("cpu"), str(tmp_path / "out"), [150], [5], probe,
                                       log=logged.append)
    assert (same.steps, same.blocks) == ([150], [5]) and not [m for m in logged if "also holds" in m]
    assert sel.settings == {"config": {k: v for k, v in cfg.items() if k not in left_out}, "model_flags": flags,
                            "grid": {"steps": [5, 50, 150], "blocks": [5, 8]},
                            "probe": {"folds": 5, "repeats": 2, "members": 2, "iterations": 600}}
    assert set(cfg) > set(left_out) and "training_path" in sel.settings["config"]


def test_the_grid_must_be_distinct_and_not_empty():
    """Steps are checked only for a backbone with timesteps (the others have no steps to list)."""
    for steps, blocks, uses, bad in (([50, 50], [1], True, "--steps must list distinct values, got [50, 50]"),
                                     ([], [1], True, "--steps must list distinct values, got []"),
                                     ([50], [2, 2], True, "--blocks must list distinct values, got [2, 2]"),
                                     ([], [], False, "--blocks must list distinct values, got []"),
                                     ([], [3, 3], False, "--blocks must list distinct values, got [3, 3]")):
        with pytest.raises(ConfigError) as err:
            feature_selection.check_distinct(steps, blocks, uses)
        assert str(err.value) == bad
    feature_selection.check_distinct([50, 50], [1, 2], False)  # steps unused: not checked
    feature_selection.check_distinct([50], [1], True)
    with pytest.raises(ConfigError) as err:
        feature_selection.check_noise_draws([1, 2], False, "mae")
    assert str(err.value) == "model_type 'mae' adds no noise, so there are no noise draws to compare: drop --noise_draws"


def test_a_backbone_that_reads_its_config_and_logs_gets_both(tmp_path):
    """diffusers with random weights: its default grid depends on the config (random_weights), and loading
    it logs a line: the selection passes the config to both grid calls (the default grid, then the one
    widened by the config's own steps) and its log to the loader."""
    from ddpmseg.common.model_flags import resolve_model_flags
    from ddpmseg.features.registry import backbone_class
    data = shapes64() / "real"
    cfg = load_config("experiments/celebamask64/diffusers.json", {
        "training_path": str(data / "train"), "training_number": 4, "steps": [55], "device": "cpu"})
    flags = resolve_model_flags(cfg)
    logged = []
    sel = feature_selection.Selection(cfg, flags, torch.device("cpu"), str(tmp_path), None, None,
                                      feature_selection.ProbeSettings(folds=2), log=logged.append)
    default_steps, default_blocks = backbone_class("diffusers").candidate_grid(cfg, flags)
    assert 55 not in default_steps
    assert (sel.steps, sel.blocks) == (sorted(default_steps + [55]), default_blocks)
    assert "diffusers: random weights (seed 0), the google/ddpm-256 architecture" in logged
    # Another number of noise draws builds the backbone again, through the same log.
    (tmp_path / "small").mkdir()
    small = feature_selection.Selection(cfg, flags, torch.device("cpu"), str(tmp_path / "small"), [55], [2],
                                        feature_selection.ProbeSettings(folds=2, members=1, iterations=3),
                                        log=logged.append)
    small.extract()
    logged.clear()
    small.score([55], [2], noise_draws=2)
    assert logged == ["diffusers: random weights (seed 0), the google/ddpm-256 architecture"]
