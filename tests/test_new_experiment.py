"""ddpmseg new, and the whole road a new user takes: JPEGs + RGB masks -> config -> training ->
ddpmseg segment on images of other sizes; bad inputs stop with one error line and write nothing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ddpmseg.commands import new as new_experiment
from ddpmseg.commands import segment
from ddpmseg.commands import train as train_interpreter
from conftest import CELEBAMASK64, FAST_INTERPRETER, require
from ddpmseg.common.config import ConfigError, load_config
from ddpmseg.classifier.new_experiment import closest_published, distinct_palette, read_classes


def _celeba():
    meta = json.loads((require(CELEBAMASK64) / "classes.json").read_text())
    return meta["class_names"], meta["palette_rgb"]


def _user_data(root, n_train=3, n_test=2):
    """A dataset as a new user has it: JPEG images and RGB palette masks in images/ + masks/ folders
    (train under root/train, test under root/test), the same JPEGs with .npy labels under root/npy,
    and a class file with celebamask64's names and colours."""
    names, palette = _celeba()
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        (root / "npy" / split).mkdir(parents=True)
        for png in sorted((require(CELEBAMASK64) / "real" / split).glob("*.png"))[:n]:
            jpg = root / split / "images" / f"{png.stem}.jpg"
            Image.open(png).convert("RGB").save(jpg, quality=90)
            ids = np.load(png.with_suffix(".npy"))
            Image.fromarray(np.asarray(palette, np.uint8)[ids]).save(root / split / "masks" / f"{png.stem}.png")
            shutil.copy(jpg, root / "npy" / split / jpg.name)
            np.save(root / "npy" / split / f"{png.stem}.npy", ids)
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(names, palette)))
    return root


def _new(root, ckpt, *extra, name="faces"):
    return new_experiment.main(["--name", name, "--images", str(root / "train" / "images"), "--masks",
                                str(root / "train" / "masks"), "--model_path", str(ckpt), "--classes",
                                str(root / "classes.txt"), "--test_images", str(root / "test" / "images"),
                                "--test_masks", str(root / "test" / "masks"), "--steps", "50", *extra])


def test_read_classes_and_palette(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nsky\n\nroad\n")
    assert read_classes(str(tmp_path / "a.txt")) == (["sky", "road"], None)
    (tmp_path / "b.txt").write_text("sky 0 0 255\nroad 128 128 128\n")
    assert read_classes(str(tmp_path / "b.txt")) == (["sky", "road"], [[0, 0, 255], [128, 128, 128]])
    for bad, message in (("sky 0 0 255\nroad\n", "on every line or on none"), ("sky 0 0 256\nroad\n", "line 1"),
                         ("sky\n", "at least 2")):
        (tmp_path / "c.txt").write_text(bad)
        with pytest.raises(ConfigError, match=message):
            read_classes(str(tmp_path / "c.txt"))
    pal = distinct_palette(300)
    assert len({tuple(c) for c in pal}) == 300 and pal[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def test_closest_published_config_matches_resolution_then_architecture():
    flags64 = json.loads((require(CELEBAMASK64).parents[1] / "checkpoints" / "faces64_ema.json").read_text())["flags"]
    from guided_diffusion.script_util import merged_flags
    name, steps, blocks = closest_published(64, merged_flags(flags64))
    assert name == "experiments/celebamask64/ddpm.json" and blocks == [4, 5, 6, 7, 8] and steps == [50, 150, 250]
    # the 256 px configs give no model_flags: their U-Net is the guided-diffusion default at 256 px
    name, _, blocks = closest_published(256, merged_flags({"image_size": 256}))
    assert blocks == [5, 6, 7, 8, 12] and json.load(open(name))["dim"][0] == 256


def test_new_user_road_jpeg_rgb_masks_to_segmented_images(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _user_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert _new(root, tiny64_checkpoint) == 0
    out = capsys.readouterr().out
    assert "experiments/celebamask64/ddpm.json (closest published config)" in out
    assert "ddpmseg train --exp experiments/faces/ddpm.json" in out
    cfg = load_config("experiments/faces/ddpm.json")  # validates
    names, palette = _celeba()
    # 384 = the tiny U-Net's channels of blocks 4..8 at one step, which FAST_INTERPRETER states independently
    assert cfg["dim"] == [64, 64, 384] and cfg["blocks"] == [4, 5, 6, 7, 8] and cfg["steps"] == [50]
    assert (cfg["class_names"], cfg["palette"], cfg["ignore_label"]) == (names, palette, None)
    assert (cfg["training_number"], cfg["testing_number"]) == (3, 2)
    assert cfg["model_flags"]["num_channels"] == json.loads(tiny64_checkpoint.with_suffix(".json").read_text())[
        "flags"]["num_channels"]
    assert not list((tmp_path / "experiments").glob(".*"))  # no staging folder left behind

    assert train_interpreter.main(["--exp", "experiments/faces/ddpm.json", *FAST_INTERPRETER]) == 0
    assert train_interpreter.main(["--exp", "experiments/faces/ddpm.json", "--exp_dir", "npy_run",
                                   "--training_path", str(root / "npy" / "train"), "--training_masks_path", "",
                                   "--testing_path", str(root / "npy" / "test"), "--testing_masks_path", "",
                                   *FAST_INTERPRETER]) == 0
    run = tmp_path / "pixel_classifiers" / "faces" / "50_4_5_6_7_8"
    png_layout = json.loads((run / "metrics.json").read_text())
    npy_layout = json.loads((tmp_path / "npy_run" / "50_4_5_6_7_8" / "metrics.json").read_text())
    assert png_layout["num_images"] == 2
    # the same pixels and labels reach the same computation: identical numbers, not close ones
    assert png_layout["miou"] == npy_layout["miou"]
    assert png_layout["per_class_iou"] == npy_layout["per_class_iou"]

    shots = tmp_path / "shots"
    shots.mkdir()
    face = Image.open(root / "test" / "images" / sorted((root / "test" / "images").iterdir())[0].name)
    sizes = {"landscape": (120, 70), "portrait": (50, 90), "large": (160, 160)}
    for stem, size in sizes.items():
        face.resize(size).save(shots / f"{stem}.jpg")
    assert segment.main(["--run", str(run), "--images", str(shots), "--out", "segmented"]) == 0
    for stem, size in sizes.items():
        for suffix in ("", "_overlay", "_uncertainty"):
            assert Image.open(tmp_path / "segmented" / f"{stem}{suffix}.png").size == size
    assert (tmp_path / "segmented" / "segments.csv").read_text().count("\n") == 1 + len(sizes)


def _break(root, kind):
    masks = sorted((root / "train" / "masks").glob("*.png"))
    if kind == "unknown colour":
        rgb = np.array(Image.open(masks[0]))
        rgb[:2, :2] = (7, 7, 7)
        Image.fromarray(rgb).save(masks[0])
        return "(7, 7, 7) on 4 pixels"
    if kind == "size mismatch":
        Image.open(masks[1]).resize((64, 32), Image.Resampling.NEAREST).save(masks[1])
        return "(32, 64) does not match"
    if kind == "mask of another stem":
        masks[2].rename(masks[2].with_name("99999.png"))
        return "99999.png"
    if kind == "unreadable image":
        (root / "train" / "images" / "zz.jpg").write_bytes(b"not a jpeg")
        shutil.copy(masks[0], masks[0].with_name("zz.png"))
        return "zz.jpg: cannot be read as an image"
    if kind == "empty folder":
        shutil.rmtree(root / "train" / "images")
        (root / "train" / "images").mkdir()
        return "no images in"
    if kind == "rgb masks without colours":
        names, _ = _celeba()
        (root / "classes.txt").write_text("\n".join(names) + "\n")
        return "needs the class colours"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["unknown colour", "size mismatch", "mask of another stem", "unreadable image",
                                  "empty folder", "rgb masks without colours"])
def test_bad_data_is_one_error_line_and_writes_nothing(tmp_path, tiny64_checkpoint, monkeypatch, capsys, kind):
    root = _user_data(tmp_path / "data", n_train=3, n_test=1)
    message = _break(root, kind)
    monkeypatch.chdir(tmp_path)
    assert _new(root, tiny64_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("error:") == 1
    assert not (tmp_path / "experiments" / "faces").exists() and not list(tmp_path.glob("experiments/.*"))


def test_existing_name_is_refused_without_force(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _user_data(tmp_path / "data", n_train=3, n_test=1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "faces").mkdir(parents=True)
    (tmp_path / "experiments" / "faces" / "ddpm.json").write_text("{}")
    assert _new(root, tiny64_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err
    assert (tmp_path / "experiments" / "faces" / "ddpm.json").read_text() == "{}"
    assert _new(root, tiny64_checkpoint, "--force") == 0
    assert load_config("experiments/faces/ddpm.json")["testing_number"] == 1


def test_test_fraction_splits_into_linked_folders(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _user_data(tmp_path / "data", n_train=4, n_test=0)
    monkeypatch.chdir(tmp_path)
    assert new_experiment.main(["--name", "split", "--images", str(root / "train" / "images"), "--masks",
                                str(root / "train" / "masks"), "--model_path", str(tiny64_checkpoint), "--classes",
                                str(root / "classes.txt"), "--test_fraction", "0.25", "--steps", "50"]) == 0
    cfg = load_config("experiments/split/ddpm.json")
    assert (cfg["training_number"], cfg["testing_number"]) == (3, 1)
    assert cfg["testing_path"] == "experiments/split/split/test"
    train = sorted(p.name for p in (tmp_path / cfg["training_path"] / "images").iterdir())
    test = sorted(p.name for p in (tmp_path / cfg["testing_path"] / "masks").iterdir())
    assert len(train) == 3 and len(test) == 1 and test[0].replace(".png", ".jpg") not in train
