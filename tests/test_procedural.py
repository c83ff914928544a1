"""ddpmseg.data.procedural: determinism, the written layout, rerun safety, and the design property
the demo relies on: a pixel's RGB (and position) barely tells one shape class from another."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ddpmseg.data import procedural
from ddpmseg.data.folders import ImageLabelDataset, list_image_files
from ddpmseg.data.procedural import (CLASS_NAMES, NUM_CLASSES, PALETTE, colorize, main, render_sample,
                                sample_rng, write_dataset)

SMALL = dict(train=4, test=3, unlabeled=5, size=64, seed=7)
SHAPES = NUM_CLASSES - 1
CHANCE = 1.0 / SHAPES
# Per-pixel RGB classifiers may beat chance (0.2) only by sampling noise and the anti-aliased
# rims; measured 0.18-0.21 on these 300 images. A colour cue pushes them far higher (the
# positive control below: a class tint of 80 levels gives ~0.5, 40 levels ~0.3).
MAX_RGB_ACCURACY = 0.27


def _files(root) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            p = os.path.join(folder, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


# --- samples -----------------------------------------------------------------------------------

def test_sample_types_and_ranges():
    img, label = render_sample(sample_rng(0, "train", 0))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8
    assert label.max() < NUM_CLASSES and (label > 0).any() and (label == 0).any()
    assert len(CLASS_NAMES) == len(PALETTE) == NUM_CLASSES
    assert colorize(label).shape == (64, 64, 3)
    img32, label32 = render_sample(sample_rng(0, "train", 0), size=32)
    assert img32.shape == (32, 32, 3) and label32.shape == (32, 32)


def test_same_seed_same_arrays_different_seed_different():
    a = render_sample(sample_rng(3, "train", 5))
    b = render_sample(sample_rng(3, "train", 5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for other in (sample_rng(4, "train", 5), sample_rng(3, "train", 6), sample_rng(3, "unlabeled", 5)):
        c = render_sample(other)
        assert not np.array_equal(a[0], c[0])


# --- the design property -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples():
    pairs = [render_sample(sample_rng(0, "test", i)) for i in range(300)]
    return np.stack([p[0] for p in pairs]).astype(np.float64), np.stack([p[1] for p in pairs])


def _features(imgs: np.ndarray, with_xy: bool) -> np.ndarray:
    n, h, w, _ = imgs.shape
    if not with_xy:
        return imgs
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) * (255.0 / (h - 1))  # same scale as RGB
    return np.concatenate([imgs, np.broadcast_to(np.stack([xs, ys], -1), (n, h, w, 2))], -1)


def _ncm_accuracy(imgs: np.ndarray, labels: np.ndarray, with_xy: bool = False) -> float:
    """Balanced accuracy over shape classes of a nearest-class-mean classifier on per-pixel
    features, fitted on the first half of the images and scored on the second."""
    x = _features(imgs, with_xy)
    half = len(imgs) // 2
    xtr, ytr, xte, yte = x[:half], labels[:half], x[half:], labels[half:]
    means = np.stack([xtr[ytr == c].mean(0) for c in range(1, NUM_CLASSES)])
    fg = yte > 0
    pred = np.argmin(((xte[fg][:, None] - means[None]) ** 2).sum(-1), 1) + 1
    return float(np.mean([np.mean(pred[yte[fg] == c] == c) for c in range(1, NUM_CLASSES)]))


def _hist_accuracy(imgs: np.ndarray, labels: np.ndarray, bins: int = 8) -> float:
    """The same protocol with a per-class joint RGB histogram (any function of a pixel's colour)."""
    q = (imgs // (256 // bins)).astype(np.int64)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    half = len(imgs) // 2
    hist = np.stack([np.bincount(idx[:half][labels[:half] == c], minlength=bins ** 3)
                     for c in range(1, NUM_CLASSES)]).astype(np.float64) + 1
    hist /= hist.sum(1, keepdims=True)
    yte, ite = labels[half:], idx[half:]
    fg = yte > 0
    pred = np.argmax(hist[:, ite[fg]], 0) + 1
    return float(np.mean([np.mean(pred[yte[fg] == c] == c) for c in range(1, NUM_CLASSES)]))


def test_shape_classes_have_the_same_mean_colour(samples):
    imgs, labels = samples
    means = np.stack([imgs[labels == c].mean(0) for c in range(1, NUM_CLASSES)])
    # Colours are uniform in [20, 235]^3 (mean 127.5) for every class; per-class means are over
    # ~40k pixels but only ~180 independent fills each (s.d. ~5 levels per channel), measured:
    # largest deviation 10.3, largest distance between two classes' means 18.8.
    assert np.abs(means - 127.5).max() < 20, means.round(1)
    spread = np.linalg.norm(means[:, None] - means[None], axis=-1).max()
    assert spread < 30, means.round(1)


def test_pixel_rgb_does_not_separate_shape_classes(samples):
    imgs, labels = samples
    ncm = _ncm_accuracy(imgs, labels)
    ncm_xy = _ncm_accuracy(imgs, labels, with_xy=True)
    hist = _hist_accuracy(imgs, labels)
    for name, acc in (("nearest mean RGB", ncm), ("nearest mean RGB+xy", ncm_xy), ("RGB histogram", hist)):
        assert acc < MAX_RGB_ACCURACY, f"{name}: balanced accuracy {acc:.3f} (chance {CHANCE:.2f})"


def test_rgb_checks_would_catch_a_colour_cue(samples):
    # Positive control: tint each shape class a little; the same checks must then see it, so
    # passing the test above means "no cue", not "a classifier too weak to find one".
    imgs, labels = samples
    tint = 80.0 * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    leaky = np.clip(imgs + tint[labels], 0, 255)
    assert _ncm_accuracy(leaky, labels) > MAX_RGB_ACCURACY + 0.15
    assert _hist_accuracy(leaky, labels) > MAX_RGB_ACCURACY + 0.15


def test_every_class_occurs_often(samples):
    _, labels = samples
    present = np.array([(labels == c).any(axis=(1, 2)).mean() for c in range(NUM_CLASSES)])
    pixels = np.bincount(labels.ravel(), minlength=NUM_CLASSES) / labels.size
    assert present[0] == 1.0
    assert (present[1:] > 0.4).all(), present  # distinct classes per image: ~60% each
    assert (pixels[1:] > 0.025).all() and pixels[1:].max() < 2 * pixels[1:].min(), pixels
    # Even the first 10 images (the demo's labelled set) show every class.
    assert all((labels[:10] == c).any() for c in range(NUM_CLASSES))


# --- writing -----------------------------------------------------------------------------------

def test_written_layout_loads(tmp_path):
    out = tmp_path / "ds"
    info = write_dataset(str(out), **SMALL)
    assert info["created"] and info["params"]["seed"] == 7
    for split, n in (("train", 4), ("test", 3)):
        ds = ImageLabelDataset(str(out / "real" / split), 64, number_class=NUM_CLASSES, ignore_label=None)
        assert len(ds) == n
        for i in range(n):
            item = ds[i]
            assert item["image"].shape == (3, 64, 64)
            assert 0 <= int(item["label"].min()) and int(item["label"].max()) < NUM_CLASSES
        assert sum(info["class_pixel_counts"][split]) == n * 64 * 64
    unl = out / "unlabeled"
    assert len(list_image_files(str(unl))) == 5
    assert sorted(os.listdir(unl)) == [f"{i:05d}.png" for i in range(5)]  # images only
    assert len(ImageLabelDataset(str(unl), 64, require_labels=False)) == 5
    classes = json.loads((out / "classes.json").read_text())
    assert classes["class_names"] == list(CLASS_NAMES)
    assert classes["palette"] == classes["palette_rgb"] == [list(c) for c in PALETTE]
    assert classes["ignore_label"] is None and classes["number_class"] == NUM_CLASSES
    # Files are the samples of their streams; unlabeled ones come from a disjoint stream.
    img, label = render_sample(sample_rng(7, "train", 2))
    assert np.array_equal(np.load(out / "real" / "train" / "00002.npy"), label)
    train_img = (out / "real" / "train" / "00000.png").read_bytes()
    assert all((unl / n).read_bytes() != train_img for n in os.listdir(unl))
    assert not [p for p in os.listdir(tmp_path) if p != "ds"]  # no temp folder left


def test_same_seed_byte_identical_files(tmp_path):
    write_dataset(str(tmp_path / "a"), **SMALL)
    write_dataset(str(tmp_path / "b"), **SMALL)
    write_dataset(str(tmp_path / "c"), **{**SMALL, "seed": 8})
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith((".png", ".npy")))


def test_rerun_reuses_and_mismatch_raises(tmp_path):
    out = str(tmp_path / "ds")
    write_dataset(out, **SMALL)
    stamp = os.stat(os.path.join(out, "dataset.json")).st_mtime_ns
    again = write_dataset(out, **SMALL)
    assert again["created"] is False
    assert os.stat(os.path.join(out, "dataset.json")).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other parameters.*'train': \\(4, 5\\)"):
        write_dataset(out, **{**SMALL, "train": 5})
    with pytest.raises(FileExistsError, match="seed"):
        write_dataset(out, **{**SMALL, "seed": 1})


def test_existing_foreign_folder_is_refused_empty_one_is_used(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a procedural dataset"):
        write_dataset(str(foreign), **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_dataset(str(empty), **SMALL)["created"]
    assert (empty / "dataset.json").is_file()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = procedural.render_sample
    calls = []

    def flaky(rng, size=64):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(rng, size)

    monkeypatch.setattr(procedural, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(str(tmp_path / "ds"), **SMALL)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(procedural, "render_sample", real)
    assert write_dataset(str(tmp_path / "ds"), **SMALL)["created"]


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "ds")
    args = ["--out", out, "--train", "2", "--test", "1", "--unlabeled", "2", "--seed", "3"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 0
    assert "already present" in capsys.readouterr().out
    assert main(args[:-1] + ["4"]) == 2
    assert "other parameters" in capsys.readouterr().err
    with open(os.path.join(out, "dataset.json")) as f:
        assert json.load(f)["params"] == {"format": "ddpmseg.procedural", "version": procedural.GENERATOR_VERSION,
                                          "train": 2, "test": 1, "unlabeled": 2, "size": 64, "seed": 3}
