"""ddpmseg suggest: a hand-built ensemble whose uncertainty is known in closed form ranks a pool as expected."""
from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import suggest
from ddpmseg.common.config import load_config, save_config
from ddpmseg.classifier.ensemble import PixelEnsemble
from ddpmseg.classifier.suggest import SHEET_TILE_PX
from ddpmseg.classifier.train import model_path

K, GAIN = 19, 4.0  # the celebamask64 classes; logit scale of the members' confident class
BN_SCALE = 1 / math.sqrt(1 + 1e-5)  # eval-mode BatchNorm with running mean 0, variance 1
TOP = int(64 * 64 * 0.1)  # pixels in the image score's top fraction (uncertainty_top_fraction 0.1)


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """An rgb_xy run of two members: member m puts logit GAIN * relu(red) on class m and 0 elsewhere, so
    where the red channel r (in [-1, 1]) is positive they disagree with a confidence that grows with r,
    and where it is not they agree (all logits 0, both vote class 0) with zero mutual information."""
    run = tmp_path_factory.mktemp("run")
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "model_type": "rgb_xy", "steps": [], "blocks": [], "dim": [64, 64, 5], "model_path": "", "model_num": 2,
        "exp_dir": str(run)})
    save_config({**cfg, "model_flags": {}}, str(run / "config.json"))
    ens = PixelEnsemble(2, 5, K)
    with torch.no_grad():
        for w in ens.weights:
            w.zero_()
        ens.weights[0][:, 0, 0] = 1  # feature 0 (red) -> hidden unit 0, then ReLU
        ens.weights[1][:, 0, 0] = 1
        for m in range(2):
            ens.weights[2][m, 0, m] = GAIN
    for m in range(2):
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in ens.member_state_dict(m).items()}},
                   model_path(str(run), m))
    return run


def expected_pixel_scores(red: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mutual information, vote disagreement) of each pixel of red values 0..255, from the design alone."""
    r = torch.from_numpy(red.astype(np.float64)) / 255 * 2 - 1
    a = GAIN * BN_SCALE ** 2 * r.clamp(min=0)
    p_hi, p_lo = a.exp() / (a.exp() + K - 1), 1 / (a.exp() + K - 1)
    entropy = lambda p: -(p * p.log())  # noqa: E731
    member = entropy(p_hi) + (K - 1) * entropy(p_lo)
    mean = 2 * entropy((p_hi + p_lo) / 2) + (K - 2) * entropy(p_lo)
    return (mean - member).numpy(), np.where(a.numpy() > 0, 0.5, 0.0)


def top_mean(x: np.ndarray) -> float:
    return float(np.sort(x.ravel())[-TOP:].mean())


# Pool images by the red value of their pixels: uniform, or a small bright patch on black.
def _reds():
    patch = np.zeros((64, 64))
    patch[:16, :16] = 255  # 256 pixels: fewer than the 409 of the top fraction
    return {"a_bright": np.full((64, 64), 255.0), "b_medium": np.full((64, 64), 191.0), "c_patch": patch,
            "d_dark": np.zeros((64, 64))}


@pytest.fixture
def pool(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for stem, red in _reds().items():
        rgb = np.zeros((64, 64, 3), dtype=np.uint8)
        rgb[..., 0] = red.astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{stem}.png")
    return folder


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_known_uncertainty_ranks_the_pool_as_expected(known_run, pool, tmp_path, capsys):
    expected = {stem: tuple(map(top_mean, expected_pixel_scores(red))) for stem, red in _reds().items()}
    # The strategies disagree: by uncertainty the bright patch beats the medium image, by disagreement not.
    assert expected["a_bright"][0] > expected["c_patch"][0] > expected["b_medium"][0] > 0 == expected["d_dark"][0]
    for strategy, column in (("uncertainty", 0), ("disagreement", 1)):
        out = tmp_path / strategy
        assert suggest.main(["--run", str(known_run), "--pool", str(pool), "--k", "3", "--strategy", strategy,
                             "--out", str(out)]) == 0
        rows = read_csv(out / "suggestions.csv")
        want = sorted(expected, key=lambda s: (-expected[s][column], s))[:3]  # ties go by stem
        assert [r["stem"] for r in rows] == want and [r["rank"] for r in rows] == ["1", "2", "3"]
        for r in rows:
            # float32 softmax/log over 19 classes in the ensemble vs float64 here
            assert float(r["uncertainty"]) == pytest.approx(expected[r["stem"]][0], rel=1e-4, abs=1e-6)
            assert float(r["disagreement"]) == pytest.approx(expected[r["stem"]][1], abs=1e-6)
        sheet = Image.open(out / "suggestions.png")
        assert sheet.height > 3 * SHEET_TILE_PX  # three rows, titles and legend
    assert [r["stem"] for r in read_csv(tmp_path / "uncertainty" / "suggestions.csv")] == [
        "a_bright", "c_patch", "b_medium"]
    assert [r["stem"] for r in read_csv(tmp_path / "disagreement" / "suggestions.csv")] == [
        "a_bright", "b_medium", "c_patch"]  # 0.5, 0.5 (tie: stem order), 256/409 * 0.5
    assert "suggested 3 of 4 pool images" in capsys.readouterr().out


def _image(stem: str, uncertainty: float, descriptor) -> "PoolImage":
    from ddpmseg.classifier.suggest import PoolImage
    d = np.asarray(descriptor, dtype=np.float32)
    return PoolImage(stem, stem, uncertainty, 0.0, d / np.linalg.norm(d), [])


def test_spread_out_weighs_uncertainty_by_distance_to_the_nearest_chosen_image():
    from ddpmseg.classifier.suggest import spread_out
    images = [_image("a", 1.0, [1, 0]), _image("b", 0.9, [1, 0.01]), _image("c", 0.5, [0, 1]),
              _image("d", 0.2, [-1, 0])]
    # After a: b is a near-copy (distance 5e-5, gain 4.5e-5); c is at distance 1 (gain 0.5), d at 2 (0.4).
    # After a and c: b's nearest is a (gain 4.5e-5), d's nearest is c at distance 1 (gain 0.2).
    assert [im.stem for im in spread_out(images)] == ["a", "c", "d", "b"]
    # No uncertainty anywhere: distance alone, the first image first (ties keep the given order).
    flat = [_image(s, 0.0, d) for s, d in (("a", [1, 0]), ("b", [1, 0.01]), ("c", [0, 1]), ("d", [-1, 0]))]
    assert [im.stem for im in spread_out(flat)] == ["a", "d", "c", "b"]


def test_diverse_strategy_skips_a_copy_of_the_image_already_chosen(known_run, tmp_path):
    """Two identical bright-red images and a slightly less red, green one: by uncertainty the copy comes
    second, by 'diverse' the green one does (the copy's feature distance to the first is exactly 0)."""
    folder = tmp_path / "pool"
    folder.mkdir()
    for stem, (red, green) in {"a1": (255, 0), "a2": (255, 0), "d_dark": (0, 0), "e_green": (250, 255)}.items():
        rgb = np.zeros((64, 64, 3), dtype=np.uint8)
        rgb[..., 0], rgb[..., 1] = red, green
        Image.fromarray(rgb).save(folder / f"{stem}.png")
    orders = {}
    for strategy in ("uncertainty", "diverse"):
        out = tmp_path / strategy
        assert suggest.main(["--run", str(known_run), "--pool", str(folder), "--k", "4", "--strategy", strategy,
                             "--out", str(out)]) == 0
        orders[strategy] = [r["stem"] for r in read_csv(out / "suggestions.csv")]
    assert orders["uncertainty"] == ["a1", "a2", "e_green", "d_dark"]
    # d_dark and a2 both gain 0 at the third pick (no uncertainty / no distance): stem order decides.
    assert orders["diverse"] == ["a1", "e_green", "a2", "d_dark"]


def test_random_strategy_is_the_seeded_permutation(known_run, pool, tmp_path):
    from ddpmseg.common.seeding import stream_generator

    stems = sorted(_reds())
    for seed in (0, 1):
        out = tmp_path / f"random{seed}"
        assert suggest.main(["--run", str(known_run), "--pool", str(pool), "--k", "4", "--strategy", "random",
                             "--seed", str(seed), "--out", str(out)]) == 0
        order = torch.randperm(4, generator=stream_generator("suggest_order", seed)).tolist()
        assert [r["stem"] for r in read_csv(out / "suggestions.csv")] == [stems[i] for i in order]


def test_contact_sheet_rows_show_image_prediction_and_uncertainty(known_run, pool, tmp_path):
    out = tmp_path / "out"
    assert suggest.main(["--run", str(known_run), "--pool", str(pool), "--k", "1", "--strategy", "uncertainty",
                         "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out / "suggestions.png").convert("RGB"))
    from ddpmseg.common.report import _GAP_PX, _LINE_PX
    from ddpmseg.classifier.segment_folder import uncertainty_image
    from ddpmseg.classifier.suggest import _LABEL_PX
    row = sheet[_LINE_PX:_LINE_PX + SHEET_TILE_PX, _LABEL_PX:]
    assert (row[:, :SHEET_TILE_PX] == [255, 0, 0]).all()  # a_bright: pure red
    palette = json.loads((known_run / "config.json").read_text())["palette"]
    prediction = row[:, SHEET_TILE_PX + _GAP_PX:2 * SHEET_TILE_PX + _GAP_PX]
    assert (prediction == palette[0]).all()  # both members score class 0 and 1 equally: the tie goes to 0
    mi = expected_pixel_scores(np.full((1, 1), 255.0))[0]
    heat = row[:, 2 * (SHEET_TILE_PX + _GAP_PX):]
    assert np.abs(heat.astype(int) - uncertainty_image(mi)[0, 0]).max() <= 1  # float32 vs float64 colour


def test_unreadable_pool_file_is_skipped_with_a_warning(known_run, pool, tmp_path, capsys):
    (pool / "broken.png").write_bytes(b"not an image")
    assert suggest.main(["--run", str(known_run), "--pool", str(pool), "--k", "4", "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.out + captured.err and "broken.png" in captured.out + captured.err
    assert len(read_csv(tmp_path / "o" / "suggestions.csv")) == 4


@pytest.mark.parametrize("case, message", [
    ("k_too_large", "--k 5 must be between 1 and the 4 images"),
    ("k_zero", "--k 0 must be between 1 and the 4 images"),
    ("empty_pool", "no images in"),
    ("missing_pool", "no such folder"),
    ("no_members", "lacks ensemble members [1]"),
    ("not_a_run", "has no config.json"),
])
def test_bad_inputs_get_one_error_line_and_leave_nothing(known_run, pool, tmp_path, capsys, case, message):
    run, k = known_run, {"k_too_large": "5", "k_zero": "0"}.get(case, "2")
    if case == "empty_pool":
        shutil.rmtree(pool)
        pool.mkdir()
    elif case == "missing_pool":
        pool = tmp_path / "typo"
    elif case in ("no_members", "not_a_run"):
        run = tmp_path / "run"
        shutil.copytree(known_run, run)
        (run / ("model_1.pth" if case == "no_members" else "config.json")).unlink()
    out = tmp_path / "out"
    assert suggest.main(["--run", str(run), "--pool", str(pool), "--k", k, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert not out.exists()
