"""Segmenter and ddpmseg segment on a finished tiny run: parity with evaluation, any size, resume, bad files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import segment
from conftest import shapes64
from ddpmseg.classifier import segmenter as segmenter_module
from ddpmseg.classifier.predict import view_logits
from ddpmseg.classifier.segmenter import Segmenter
from ddpmseg.data.windows import Tiling, window_starts


def test_window_starts_cover_the_long_side_with_overlap():
    assert window_starts(64, 64) == [0] and window_starts(40, 64) == [0]
    assert window_starts(96, 64) == [0, 32]
    starts = window_starts(150, 64)
    assert starts[0] == 0 and starts[-1] == 150 - 64
    assert all(b - a <= 32 for a, b in zip(starts, starts[1:]))  # neighbours share >= half a window


def _test_images(n=2):
    return sorted((shapes64() / "real" / "test").glob("*.png"))[:n]


def test_square_image_at_working_size_gives_the_evaluation_mask(tiny_interpreter_run):
    seg = Segmenter.from_run(str(tiny_interpreter_run))
    for png in _test_images():
        out = seg.predict(Image.open(png))
        # one window, no resizing: the same features and votes as evaluation's
        assert np.array_equal(out.mask, np.load(tiny_interpreter_run / "predictions" / f"{png.stem}.npy"))
    metrics = json.loads((tiny_interpreter_run / "metrics.json").read_text())
    assert out.score == pytest.approx(metrics["uncertainty"][png.stem], rel=1e-5)  # float32 sums, same order


def test_disagreement_is_the_share_of_member_votes_against_the_majority(tiny_interpreter_run):
    seg = Segmenter.from_run(str(tiny_interpreter_run))
    p = seg.predictor
    assert p.ensemble.num_members == 2 and p.cfg["tta"] == []  # two votes per pixel
    png = _test_images(1)[0]
    crop = seg.transform(Image.open(png).convert("RGB"))  # 64 x 64: the one window
    members = view_logits(p.ensemble, p.features(crop, "test image"), p.hw).argmax(-1)  # [2, P]
    want = (members[0] != members[1]).float().reshape(p.hw) / 2  # 1/2 where the two members differ, else 0
    assert 0 < want.mean() < 0.5  # the members of the tiny run disagree on some pixels, not all
    assert torch.equal(seg.window(crop, 0)[2], want)
    assert np.array_equal(seg.predict(Image.open(png)).disagreement, want.numpy())


def test_a_window_runs_the_backbone_once(tiny_interpreter_run):
    # The votes and the descriptor come from the same forward: with share_noise false every forward draws
    # fresh noise, so a second one would give the votes other features than evaluation's (and cost a forward).
    seg = Segmenter.from_run(str(tiny_interpreter_run))
    backbone, calls = seg.predictor.backbone, []
    seg.predictor.backbone = lambda x: (calls.append(x.shape), backbone(x))[1]
    seg.window(seg.transform(Image.open(_test_images(1)[0]).convert("RGB")), 0)
    assert calls == [(1, 3, 64, 64)]


def test_from_run_passes_its_log_to_the_backbone(tiny_interpreter_run, monkeypatch):
    # The guided-diffusion backbone says nothing when it opens; the others (mae, swav, dinov2, diffusers)
    # report what they loaded through this log.
    opened = segmenter_module.open_backbone

    def open_and_say(cfg, flags, device, log):
        log("opened")
        return opened(cfg, flags, device, log)

    monkeypatch.setattr(segmenter_module, "open_backbone", open_and_say)
    messages = []
    Segmenter.from_run(str(tiny_interpreter_run), log=messages.append)
    assert messages == ["opened"]


def test_non_square_image_is_segmented_at_its_own_size(tiny_interpreter_run):
    seg = Segmenter.from_run(str(tiny_interpreter_run), {"voting": "soft"})
    wide = Image.open(_test_images(1)[0]).convert("RGB").resize((150, 64))
    out = seg.predict(wide)
    assert out.mask.shape == (64, 150) and out.uncertainty.shape == (64, 150)
    assert out.probabilities.shape == (19, 64, 150)
    assert np.allclose(out.probabilities.sum(0), 1, atol=1e-5)  # window means and bilinear weights sum to 1
    assert np.array_equal(out.mask, out.probabilities.argmax(0)) and (out.uncertainty >= -1e-6).all()
    lean = seg.predict(wide, probabilities=False)  # one class map at a time: the same mask and uncertainty
    assert lean.probabilities is None and np.array_equal(lean.mask, out.mask)
    assert np.array_equal(lean.uncertainty, out.uncertainty) and lean.score == out.score


def test_stitched_uncertainty_is_the_mean_of_the_windows_covering_each_pixel(tiny_interpreter_run):
    """A 96 x 64 image at the working side 64 is two windows, columns 0-63 and 32-95, and is not resized:
    columns seen by one window carry that window's own uncertainty, the overlap the mean of the two."""
    seg = Segmenter.from_run(str(tiny_interpreter_run))
    wide = Image.open(_test_images(1)[0]).convert("RGB").resize((96, 64))
    x = seg.transform(wide)
    tiling = Tiling(*x.shape[1:], seg.size)
    assert tiling.windows == [(0, 0), (0, 32)]
    first, second = (seg.window(crop, i)[1].numpy() for i, crop in enumerate(tiling.crops(x)))
    unc = seg.predict(wide).uncertainty
    # The same float32 numbers: a single window's value divided by 1, the two windows' sum halved.
    assert np.array_equal(unc[:, :32], first[:, :32]) and np.array_equal(unc[:, 64:], second[:, 32:])
    assert np.array_equal(unc[:, 32:64], (first[:, 32:] + second[:, :32]) / 2)
    assert not np.array_equal(first[:, 32:], second[:, :32])  # the windows disagree there, so the mean shows


def _folder(tmp_path):
    """Face crops of other sizes and aspects, one unreadable file among them."""
    folder = tmp_path / "in"
    folder.mkdir()
    face = Image.open(_test_images(1)[0]).convert("RGB")
    sizes = {"tall.jpg": (48, 100), "wide.png": (130, 64), "big.webp": (96, 96)}
    for name, size in sizes.items():
        face.resize(size).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return folder, {name.split(".")[0]: size for name, size in sizes.items()}


def test_segment_folder_outputs_resume_and_unreadable_file(tmp_path, tiny_interpreter_run, capsys):
    folder, sizes = _folder(tmp_path)
    out = folder / "segmented"  # inside the input folder: a rerun must not take its own PNGs as inputs
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr()
    assert "warning:" in err.out + err.err and "broken.png" in err.out + err.err
    for stem, size in sizes.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "L" and mask.size == size
        assert Image.open(out / f"{stem}_overlay.png").size == size
        assert Image.open(out / f"{stem}_uncertainty.png").size == size
    with open(out / "segments.csv") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(sizes)
    for stem, row in rows.items():
        fractions = [float(v) for k, v in row.items() if k.startswith("fraction_")]
        assert len(fractions) == 19 and sum(fractions) == pytest.approx(1, abs=1e-5)  # 6-decimal rounding
        counts = np.bincount(np.asarray(Image.open(out / f"{stem}.png")).ravel(), minlength=19)
        assert float(row["fraction_skin"]) == pytest.approx(counts[1] / counts.sum(), abs=1e-6)
    assert not list(out.glob("**/.*.tmp"))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(folder), "--out", str(out)]) == 0
    assert "already done 3" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing segmented again
    # a folder segmented with other classes cannot be resumed: its rows would be taken as done
    (out / "segments.csv").write_text("stem,file,width,height,uncertainty,fraction_sky\n")
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(folder), "--out", str(out)]) == 2
    assert "written for other classes" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty", "only_unreadable", "missing"])
def test_segment_exits_2_when_nothing_can_be_segmented(tmp_path, tiny_interpreter_run, capsys, case):
    folder = tmp_path / "in"
    folder.mkdir()
    if case == "only_unreadable":
        (folder / "a.jpg").write_bytes(b"nope")
    target = folder if case != "missing" else tmp_path / "typo"
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(target), "--out",
                         str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "out").exists()


def test_refined_run_with_test_time_views_segments_as_evaluation_did(tmp_path, tiny64_checkpoint):
    """A run with a refiner and a random test-time view: window 0 draws the same view and refiner noise as
    evaluation's test image 0, so that image's mask is the evaluation's."""
    from ddpmseg.commands import train as train_interpreter
    from conftest import FAST_INTERPRETER

    data = shapes64() / "real"
    refine = {"method": "ddps", "iterations": 20, "width": 8, "folds": 2, "fold_members": 1, "steps": 3}
    assert train_interpreter.main([
        "--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(tmp_path / "exp"), "--training_path",
        str(data / "train"), "--testing_path", str(data / "test"), "--model_path", str(tiny64_checkpoint),
        *FAST_INTERPRETER, "--set", f"refine={json.dumps(refine)}", "--set", 'tta=["color_jitter_hflip"]']) == 0
    run = tmp_path / "exp" / "50_4_5_6_7_8"
    first = _test_images(1)[0]
    out = Segmenter.from_run(str(run)).predict(Image.open(first))
    assert np.array_equal(out.mask, np.load(run / "predictions" / f"{first.stem}.npy"))
    assert np.allclose(out.probabilities.sum(0), 1, atol=1e-5)  # the refiner's softmax
