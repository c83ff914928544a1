"""ddpmseg new, and the whole road a new user takes: JPEGs + RGB masks -> config -> training ->
ddpmseg segment on images of other sizes; bad inputs stop with one error line and write nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmseg.commands import new as new_experiment
from ddpmseg.commands import segment
from ddpmseg.commands import train as train_interpreter
from conftest import CELEBAMASK64, FACES_CKPT, FAST_INTERPRETER, require, shapes64, strict_json
from ddpmseg.common.config import ConfigError, load_config
from ddpmseg.classifier.new_experiment import PUBLISHED_DATASETS, closest_published
from ddpmseg.data.classes import distinct_palette, read_classes


def _classes():
    meta = json.loads((shapes64() / "classes.json").read_text())
    return meta["class_names"], meta["palette_rgb"]


def _user_data(root, n_train=3, n_test=2):
    """A dataset as a new user has it: JPEG images and RGB palette masks in images/ + masks/ folders
    (train under root/train, test under root/test), the same JPEGs with .npy labels under root/npy,
    and a class file with the shapes64 names and colours."""
    names, palette = _classes()
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        (root / "npy" / split).mkdir(parents=True)
        for png in sorted((shapes64() / "real" / split).glob("*.png"))[:n]:
            jpg = root / split / "images" / f"{png.stem}.jpg"
            Image.open(png).convert("RGB").save(jpg, quality=90)
            ids = np.load(png.with_suffix(".npy"))
            Image.fromarray(np.asarray(palette, np.uint8)[ids]).save(root / split / "masks" / f"{png.stem}.png")
            shutil.copy(jpg, root / "npy" / split / jpg.name)
            np.save(root / "npy" / split / f"{png.stem}.npy", ids)
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(names, palette)))
    return root


def _new(root, ckpt, *extra, name="shapes"):
    return new_experiment.main(["--name", name, "--images", str(root / "train" / "images"), "--masks",
                                str(root / "train" / "masks"), "--model_path", str(ckpt), "--classes",
                                str(root / "classes.txt"), "--test_images", str(root / "test" / "images"),
                                "--test_masks", str(root / "test" / "masks"), "--steps", "50",
                                "--allow_missing_classes", *extra])  # 3 images do not show every class


def test_read_classes_and_palette(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nsky\n\nroad\n")
    assert read_classes(str(tmp_path / "a.txt")) == (["sky", "road"], None, None)
    (tmp_path / "b.txt").write_text("sky 0 0 255\nroad 128 128 128\n")
    assert read_classes(str(tmp_path / "b.txt")) == (["sky", "road"], [[0, 0, 255], [128, 128, 128]], None)
    for bad, message in (("sky 0 0 255\nroad\n", "on every line or on none"), ("sky 0 0 256\nroad\n", "line 1"),
                         ("sky\n", "at least 2")):
        (tmp_path / "c.txt").write_text(bad)
        with pytest.raises(ConfigError, match=message):
            read_classes(str(tmp_path / "c.txt"))
    pal = distinct_palette(300)
    assert len({tuple(c) for c in pal}) == 300 and pal[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def test_class_names_may_hold_spaces_and_labelme2voc_labels_set_the_ignore_label(tmp_path):
    (tmp_path / "tab.txt").write_text("background\t0 0 0\nleft eye\t255 0 170\n")
    assert read_classes(str(tmp_path / "tab.txt")) == (["background", "left eye"], [[0, 0, 0], [255, 0, 170]], None)
    (tmp_path / "quoted.txt").write_text('"background" 0 0 0\n"left eye" 255 0 170\n\'right eye\' 1 2 3\n')
    assert read_classes(str(tmp_path / "quoted.txt")).names == ["background", "left eye", "right eye"]
    # the issue's own line: the three numbers at the end are the colour, the words before them the name
    (tmp_path / "plain.txt").write_text("background 0 0 0\nleft eye 255 0 170\n")
    assert read_classes(str(tmp_path / "plain.txt")) == (["background", "left eye"], [[0, 0, 0], [255, 0, 170]],
                                                         None)
    (tmp_path / "names.txt").write_text("background\nleft eye\n")
    assert read_classes(str(tmp_path / "names.txt")) == (["background", "left eye"], None, None)
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ncat\n")  # labelme2voc
    assert read_classes(str(tmp_path / "labels.txt")) == (["_background_", "cat"], None, 255)
    for bad, message in (("sky\t0 0\nroad\n", "line 1"), ('"sky 0 0 0\nroad\n', "line 1"),
                         ("sky\nsky\n", "'sky' is listed twice"), ("a\t\nb\tx\n", "line 2"),
                         ("__ignore__\nsky\n", "lists 1 class")):
        (tmp_path / "c.txt").write_text(bad)
        with pytest.raises(ConfigError, match=message):
            read_classes(str(tmp_path / "c.txt"))


def test_closest_config_is_a_published_one_never_the_users_own(tmp_path, tiny64_checkpoint):
    from guided_diffusion.script_util import merged_flags

    repo = Path(__file__).resolve().parents[1] / "experiments"
    folder = tmp_path / "experiments"
    shutil.copytree(repo / "celebamask64", folder / "celebamask64")
    # the user's earlier experiment with their own, wider U-Net: the same size and, unlike any published
    # config, the same architecture as the checkpoint asked about
    wide = {**json.loads(tiny64_checkpoint.with_suffix(".json").read_text())["flags"], "num_channels": 64}
    mine = {**json.loads((repo / "celebamask64" / "ddpm.json").read_text()), "blocks": [1, 2], "model_flags": wide}
    (folder / "mine").mkdir()
    (folder / "mine" / "ddpm.json").write_text(json.dumps(mine))
    name, _, blocks = closest_published(64, merged_flags(wide), folder=str(folder))
    assert name == "experiments/celebamask64/ddpm.json" and blocks == [4, 5, 6, 7, 8]
    # every dataset folder of the repository's experiments/ is a published one
    assert set(PUBLISHED_DATASETS) == {p.parent.name for p in repo.glob("*/ddpm.json")}


def test_closest_published_config_matches_resolution_then_architecture():
    flags64 = json.loads(require(FACES_CKPT.with_suffix(".json")).read_text())["flags"]
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
    assert "ddpmseg train --exp experiments/shapes/ddpm.json" in out
    cfg = load_config("experiments/shapes/ddpm.json")  # validates
    names, palette = _classes()
    # 384 = the tiny U-Net's channels of blocks 4..8 at one step, which FAST_INTERPRETER states independently
    assert cfg["dim"] == [64, 64, 384] and cfg["blocks"] == [4, 5, 6, 7, 8] and cfg["steps"] == [50]
    assert (cfg["class_names"], cfg["palette"], cfg["ignore_label"]) == (names, palette, None)
    assert (cfg["training_number"], cfg["testing_number"]) == (3, 2)
    assert cfg["model_flags"]["num_channels"] == json.loads(tiny64_checkpoint.with_suffix(".json").read_text())[
        "flags"]["num_channels"]
    assert not list((tmp_path / "experiments").glob(".*"))  # no staging folder left behind

    assert train_interpreter.main(["--exp", "experiments/shapes/ddpm.json", *FAST_INTERPRETER]) == 0
    assert train_interpreter.main(["--exp", "experiments/shapes/ddpm.json", "--exp_dir", "npy_run",
                                   "--training_path", str(root / "npy" / "train"), "--training_masks_path", "",
                                   "--testing_path", str(root / "npy" / "test"), "--testing_masks_path", "",
                                   *FAST_INTERPRETER]) == 0
    run = tmp_path / "pixel_classifiers" / "shapes" / "50_4_5_6_7_8"
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
        names, _ = _classes()
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
    assert not (tmp_path / "experiments" / "shapes").exists() and not list(tmp_path.glob("experiments/.*"))


def test_existing_name_is_refused_without_force(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _user_data(tmp_path / "data", n_train=3, n_test=1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "shapes").mkdir(parents=True)
    (tmp_path / "experiments" / "shapes" / "ddpm.json").write_text("{}")
    assert _new(root, tiny64_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err
    assert (tmp_path / "experiments" / "shapes" / "ddpm.json").read_text() == "{}"
    assert _new(root, tiny64_checkpoint, "--force") == 0
    assert load_config("experiments/shapes/ddpm.json")["testing_number"] == 1


def test_test_fraction_splits_into_linked_folders(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _user_data(tmp_path / "data", n_train=4, n_test=0)
    monkeypatch.chdir(tmp_path)
    assert new_experiment.main(["--name", "split", "--images", str(root / "train" / "images"), "--masks",
                                str(root / "train" / "masks"), "--model_path", str(tiny64_checkpoint), "--classes",
                                str(root / "classes.txt"), "--test_fraction", "0.25", "--steps", "50",
                                "--allow_missing_classes"]) == 0
    cfg = load_config("experiments/split/ddpm.json")
    assert (cfg["training_number"], cfg["testing_number"]) == (3, 1)
    assert cfg["testing_path"] == "experiments/split/split/test"
    train = sorted(p.name for p in (tmp_path / cfg["training_path"] / "images").iterdir())
    test = sorted(p.name for p in (tmp_path / cfg["testing_path"] / "masks").iterdir())
    assert len(train) == 3 and len(test) == 1 and test[0].replace(".png", ".jpg") not in train


# celebamask64 ids turned into the few classes of a user's own labelling: skin 1, hair 13.
SKIN, HAIR = 1, 13
# A short training that still gives every class trained members (the "Why" runs: --set max_epochs=1).
ONE_EPOCH = ["--set", "model_num=2", "--set", "max_epochs=1"]


def _exported(root, n_train=3, n_test=2, mode="binary"):
    """celebamask64 shapes as an annotation tool exports them, under root/{train,test}/{images,masks}:
    "binary": greyscale 0/255 PNG masks of the skin; "voc": palette PNGs in the VOC colour map with
    background 0, skin 1, hair 2 and a 255 border (width 1) wherever two classes meet, as VOC draws them."""
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for png in sorted((require(CELEBAMASK64) / "real" / split).glob("*.png"))[:n]:
            Image.open(png).convert("RGB").save(root / split / "images" / f"{png.stem}.jpg", quality=95)
            ids = np.load(png.with_suffix(".npy"))
            if mode == "binary":
                Image.fromarray(np.where(ids == SKIN, 255, 0).astype(np.uint8), "L").save(
                    root / split / "masks" / f"{png.stem}.png")
                continue
            label = np.select([ids == SKIN, ids == HAIR], [1, 2], 0).astype(np.uint8)
            edge = np.zeros_like(label, bool)
            edge[:, 1:] |= label[:, 1:] != label[:, :-1]
            edge[1:] |= label[1:] != label[:-1]
            label[edge] = 255
            mask = Image.fromarray(label, "P")
            mask.putpalette([v for c in distinct_palette(256) for v in c])
            mask.save(root / split / "masks" / f"{png.stem}.png")
    return root


def _masks(root, split):
    return [np.array(Image.open(p)) for p in sorted((root / split / "masks").glob("*.png"))]


def _new_exported(root, ckpt, *extra, name="mine"):
    return new_experiment.main(["--name", name, "--images", str(root / "train" / "images"), "--masks",
                                str(root / "train" / "masks"), "--model_path", str(ckpt), "--test_images",
                                str(root / "test" / "images"), "--test_masks", str(root / "test" / "masks"),
                                "--steps", "50", *extra])


def _train(name):
    """train_interpreter.py on experiments/NAME for one epoch; its run folder and metrics (parsed strictly)."""
    assert train_interpreter.main(["--exp", f"experiments/{name}/ddpm.json", *ONE_EPOCH]) == 0
    run = next(Path("pixel_classifiers", name).iterdir())
    for path in run.glob("*.json"):  # every metrics file is JSON a strict parser accepts
        strict_json(path.read_text())
    return run, strict_json((run / "metrics.json").read_text())


def test_binary_0_255_masks_train_on_both_classes(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _exported(tmp_path / "data", mode="binary")
    (root / "classes.txt").write_text("background\nskin\n")
    monkeypatch.chdir(tmp_path)
    assert _new_exported(root, tiny64_checkpoint, "--classes", str(root / "classes.txt")) == 0
    out = capsys.readouterr().out
    assert ("train: 3 of 3 masks hold only 0 and 255 and there are 2 classes: read as binary, 255 -> class 1 "
            "(skin)") in out
    cfg = load_config("experiments/mine/ddpm.json")
    assert (cfg["class_names"], cfg["ignore_label"]) == (["background", "skin"], None)
    train = _masks(root, "train")
    skin, background = sum(int((m == 255).sum()) for m in train), sum(int((m == 0).sum()) for m in train)
    summary = (tmp_path / "experiments" / "mine" / "data_summary.md").read_text()
    assert summary in out  # what was printed is what was written
    assert "ignore label: none" in summary and "| train | 3 | 64x64: 3 |" in summary
    assert f"| 1 | skin | {skin:,} | 3 |" in summary and f"| 0 | background | {background:,} | 3 |" in summary

    run, metrics = _train("mine")
    out = capsys.readouterr().out
    # every skin pixel reached training as class 1 (a face's skin is one region far above min_region_pixels)
    assert metrics["training_labels"]["pixels_per_class"] == {"background": background, "skin": skin}
    assert metrics["training_labels"]["classes_without_training_pixels"] == []
    test_skin = sum(int((m == 255).sum()) for m in _masks(root, "test"))
    assert metrics["intersection"][1] <= test_skin <= metrics["union"][1]  # skin is scored as a present class
    assert set(metrics["per_class_iou"]) == {"background", "skin"} and metrics["per_class_iou"]["skin"] > 0
    # one epoch ends before early stopping compares a loss: no finite best, written as null
    assert [m["best_batch_loss"] for m in metrics["members"].values()] == [None, None]
    assert f"ddpmseg segment --run {run} --images YOUR_IMAGES --out segmented" in out


def test_binary_masks_without_a_classes_file_are_two_classes(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _exported(tmp_path / "data", n_train=2, n_test=1, mode="binary")
    monkeypatch.chdir(tmp_path)
    assert _new_exported(root, tiny64_checkpoint) == 0
    assert "read as binary, 255 -> class 1 (class_1)" in capsys.readouterr().out
    assert load_config("experiments/mine/ddpm.json")["class_names"] == ["class_0", "class_1"]


def test_voc_palette_masks_ignore_their_255_borders_and_say_so(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _exported(tmp_path / "data", mode="voc")
    monkeypatch.chdir(tmp_path)
    assert _new_exported(root, tiny64_checkpoint) == 0
    out = capsys.readouterr().out
    cfg = load_config("experiments/mine/ddpm.json")
    # no classes file: the ids found, and the colours of the masks' own palette
    assert (cfg["class_names"], cfg["ignore_label"]) == (["class_0", "class_1", "class_2"], 255)
    assert cfg["palette"] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    borders = {s: sum(int((m == 255).sum()) for m in _masks(root, s)) for s in ("train", "test")}
    assert borders["train"] > 0
    assert (f"ignore label: 255 (from the masks' Pascal VOC palette (entry 255 is VOC's void colour "
            f"(224, 224, 192))), left out of training and never a class in scoring: train {borders['train']:,}, test "
            f"{borders['test']:,} pixels") in out

    run, metrics = _train("mine")
    train = _masks(root, "train")
    # training saw every pixel of each class and none of the borders
    trained = metrics["training_labels"]["pixels_per_class"]
    assert trained == {f"class_{c}": sum(int((m == c).sum()) for m in train) for c in range(3)}
    assert sum(trained.values()) == sum(m.size for m in train) - borders["train"]
    # scoring: a border pixel is no class's ground truth (the original's rule: a prediction there still
    # counts in the predicted class's union), so the intersections count class pixels off the borders only
    test, stems = _masks(root, "test"), [p.stem for p in sorted((root / "test" / "masks").glob("*.png"))]
    preds = [np.load(run / "predictions" / f"{stem}.npy") for stem in stems]
    assert metrics["intersection"] == [sum(int(((p == c) & (m == c)).sum()) for p, m in zip(preds, test))
                                       for c in range(3)]
    assert metrics["union"] == [sum(int(((p == c) | (m == c)).sum()) for p, m in zip(preds, test)) for c in range(3)]
    assert metrics["classes"] == [0, 1, 2]
    stem = stems[0]
    fig = np.asarray(Image.open(run / "visualizations" / f"{stem}_compare.png").convert("RGB"))
    gt_panel = fig[14:14 + 64, 66:66 + 64]  # below the title line, right of the image panel and its gap
    assert np.array_equal((gt_panel == (224, 224, 192)).all(-1), test[0] == 255)  # borders in their own colour


def test_255_without_an_ignore_label_is_an_error_that_suggests_it(tmp_path, tiny64_checkpoint, monkeypatch, capsys):
    root = _exported(tmp_path / "data", n_train=2, n_test=1, mode="voc")
    for split in ("train", "test"):  # the same ids as greyscale PNGs: no VOC palette says what 255 is
        for p in (root / split / "masks").glob("*.png"):
            Image.fromarray(np.array(Image.open(p)), "L").save(p)
    (root / "classes.txt").write_text("background\nskin\nhair\n")
    monkeypatch.chdir(tmp_path)
    assert _new_exported(root, tiny64_checkpoint, "--classes", str(root / "classes.txt")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "label values [255] are invalid" in err and "--ignore_label 255" in err
    assert not (tmp_path / "experiments" / "mine").exists()
    assert _new_exported(root, tiny64_checkpoint, "--classes", str(root / "classes.txt"), "--ignore_label", "255") == 0
    assert "ignore label: 255 (from --ignore_label)" in capsys.readouterr().out


def test_a_listed_class_without_training_pixels_is_an_error_naming_it(tmp_path, tiny64_checkpoint, monkeypatch,
                                                                     capsys):
    root = _exported(tmp_path / "data", n_train=2, n_test=1, mode="voc")
    (root / "labels.txt").write_text("__ignore__\n_background_\nskin\nhair\nleft eye\n")  # labelme2voc's file
    monkeypatch.chdir(tmp_path)
    assert _new_exported(root, tiny64_checkpoint, "--classes", str(root / "labels.txt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: class(es) left eye have no pixel in the 2 training masks")
    assert "--allow_missing_classes" in err and err.count("error:") == 1
    assert not (tmp_path / "experiments" / "mine").exists() and not list(tmp_path.glob("experiments/.*"))
    assert _new_exported(root, tiny64_checkpoint, "--classes", str(root / "labels.txt"), "--allow_missing_classes") == 0
    out = capsys.readouterr().out
    assert "warning: class(es) left eye have no training pixel" in out
    assert "ignore label: 255 (from the __ignore__ line of" in out
    cfg = load_config("experiments/mine/ddpm.json")
    assert cfg["class_names"] == ["_background_", "skin", "hair", "left eye"] and cfg["ignore_label"] == 255
