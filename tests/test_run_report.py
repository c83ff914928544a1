"""report.html of real runs (a tiny rgb_xy interpreter run, its evaluate.py rerun, a tiny DeepLab run,
a segment.py folder): every file it refers to exists, every number it shows is metrics.json's, the
confusion rows sum to 1, the test images come worst first by the per-image mIoU recomputed here."""
import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import evaluate
from ddpmseg.commands import segment
import train_interpreter
from conftest import shapes64
from ddpmseg.common.run_report import build_report
from ddpmseg.commands.report import main as report_main

# Half a unit of the last decimal each unit is shown with (metrics.json keeps IoU as a fraction).
SHOWN_AS = {"%": (100, 0.005), "s": (1, 0.05), "MB": (1, 0.5), "nats": (1, 0.00005)}
TRAIN, TEST = 3, 4


class Page(HTMLParser):
    """What a report shows: referenced files, traced numbers, and each section's table rows (cell texts)."""

    def __init__(self, text: str):
        super().__init__()
        self.files, self.numbers, self.rows = [], [], {}
        self.section, self.cell, self.row, self.in_confusion = None, None, None, False
        self.confusion: list[list[str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a["id"]
        elif tag == "div" and a.get("id") == "confusion-numbers":
            self.in_confusion = True
        elif tag in ("img", "a"):
            ref = a.get("src") or a.get("href")
            if not ref.startswith("data:image/png;base64,"):
                self.files.append(ref)
        elif tag == "tr":
            self.row = []
        elif tag == "td":
            self.cell = [a, ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            attrs, text = self.cell
            if "data-metric" in attrs:
                self.numbers.append((json.loads(attrs["data-metric"]), attrs["data-unit"], text))
            self.row.append(text)
            self.cell = None
        elif tag == "tr" and self.row:
            (self.confusion if self.in_confusion else self.rows.setdefault(self.section, [])).append(self.row)
            self.row = None
        elif tag == "div" and self.in_confusion:
            self.in_confusion = False


def lookup(metrics: dict, path: list[str]):
    for key in path:
        metrics = metrics[key]
    return metrics


def strict_json(constant: str):
    raise AssertionError(f"metrics.json holds {constant}, which strict JSON readers refuse")


def check_report(folder: Path) -> tuple[Page, dict]:
    """The checks every run folder's report passes; returns the parsed page and metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text(), parse_constant=strict_json)
    page = Page((folder / "report.html").read_text())
    assert page.files and all((folder / ref).is_file() for ref in page.files), page.files
    for path, unit, text in page.numbers:
        value = lookup(metrics, path)
        if value is None:
            assert text == "\u2014", path
        else:
            factor, half_step = SHOWN_AS[unit]
            assert abs(float(text) - factor * value) <= half_step + 1e-9, (path, text, value)
    traced = {tuple(p) for p, _, _ in page.numbers}
    expected = {("miou",), ("miou_present",), ("peak_rss_mb",)} | {("per_class_iou", n) for n in metrics["per_class_iou"]}
    expected |= {("timings_s", k) for k in metrics["timings_s"]} | {("per_image_miou", s) for s in metrics["per_image_miou"]}
    assert expected <= traced, expected - traced
    # The confusion matrix as numbers: each shown row sums to 1 (3 decimals per cell, up to K cells rounded).
    counts = np.asarray(metrics["confusion"], dtype=np.float64)
    assert counts.sum() == metrics["num_images"] * 64 * 64  # no ignore label: every pixel is scored
    shown_rows = [row for row in page.confusion if any(row[1:])]
    assert len(shown_rows) == sum(1 for c in metrics["classes"] if counts[c].sum() > 0)
    for row in shown_rows:
        values = [float(v) for v in row[1:]]
        assert abs(sum(values) - 1) <= 0.0005 * len(values)
        c = list(metrics["per_class_iou"]).index(row[0])
        assert values == pytest.approx(counts[c] / counts[c].sum(), abs=0.0005)
    # Worst first: the images table's order is ascending per-image mIoU.
    order = [row[1] for row in page.rows["images"]]
    per_image = metrics["per_image_miou"]
    assert sorted(order) == sorted(per_image)
    assert [per_image[s] for s in order] == sorted(per_image.values())
    return page, metrics


def per_image_miou(folder: Path, labels: Path, stem: str) -> float:
    """One image's mIoU by the definition: mean IoU over the classes in its ground truth or prediction."""
    pred, gt = np.load(folder / "predictions" / f"{stem}.npy").astype(int), np.load(labels / f"{stem}.npy")
    ious = [np.sum((pred == c) & (gt == c)) / np.sum((pred == c) | (gt == c)) for c in np.union1d(pred, gt)]
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    src = shapes64() / "real"
    root = tmp_path_factory.mktemp("data")
    for split, n in (("train", TRAIN), ("test", TEST)):
        (root / split).mkdir()
        for png in sorted((src / split).glob("*.png"))[:n]:
            shutil.copy(png, root / split / png.name)
            shutil.copy(png.with_suffix(".npy"), root / split / f"{png.stem}.npy")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A finished rgb_xy run (colour and position features: no U-Net to run) of 2 members, 1 epoch."""
    exp = tmp_path_factory.mktemp("runs") / "exp" / "rgb"
    argv = ["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(exp), "--training_path",
            str(data / "train"), "--testing_path", str(data / "test"), "--set", "model_type=rgb_xy",
            "--set", "model_path=", "--set", "steps=[]", "--set", "blocks=[]", "--set", "dim=[64,64,5]",
            "--set", "model_num=2", "--set", "max_epochs=1", "--set", "training_number=3",
            "--set", "testing_number=4"]
    assert train_interpreter.main(argv) == 0
    return exp


def test_interpreter_report_shows_the_runs_numbers(run, data):
    page, metrics = check_report(run)
    for stem, value in metrics["per_image_miou"].items():
        assert value == pytest.approx(per_image_miou(run, data / "test", stem), abs=1e-12)
    assert len(metrics["per_image_miou"]) == TEST
    # Each member's row says where it stopped; its file holds the curve up to there.
    members = page.rows["training"]
    assert [(int(r[0]), int(r[1]), r[3]) for r in members] == [
        (m, metrics["members"][str(m)]["iterations"], metrics["members"][str(m)]["stopped"]) for m in range(2)]
    for m in range(2):
        curve = torch.load(run / f"model_{m}.pth", weights_only=True)["curve"]
        assert curve["batch"][-1] == metrics["members"][str(m)]["iterations"]
    text = (run / "report.html").read_text()
    assert "Mean training loss (blue) and pixel accuracy (orange) over every 50 batches" in text
    assert "Feature selection" not in text  # this run's features were not chosen by select_features.py
    assert all(f"visualizations/{s}_uncertainty.png" in page.files for s in metrics["per_image_miou"])


def test_evaluate_report_reads_the_trained_runs_members(run, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main(["--run", str(run), "--set", "voting=soft", "--out", str(out)]) == 0
    page, metrics = check_report(out)
    assert {("training_timings_s", k) for k in metrics["training_timings_s"]} <= {tuple(p) for p, _, _ in page.numbers}
    assert len(page.rows["training"]) == 2  # the trained run's two members


def test_rebuilt_report_equals_the_one_the_run_wrote(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    assert report_main([str(copy)]) == 0
    normalise = lambda p: p.read_text().replace(str(copy.resolve()), "").replace(str(run.resolve()), "")  # noqa: E731
    assert normalise(copy / "report.html") == normalise(run / "report.html")


def test_selection_heatmap_is_shown_for_the_selected_features(run, tmp_path):
    exp = tmp_path / "exp"
    folder = exp / "50_5_6"
    shutil.copytree(run, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "steps": [50], "blocks": [5, 6]}))
    selection = exp / "feature_selection"
    selection.mkdir()
    Image.new("RGB", (40, 40)).save(selection / "selection_heatmap.png")
    chosen = {"steps": [50], "blocks": [6, 5], "miou": 0.4321, "miou_std": 0.0123}
    (selection / "selection.json").write_text(json.dumps({"selected": chosen}))
    build_report(str(folder))
    text = (folder / "report.html").read_text()
    assert "../feature_selection/selection_heatmap.png" in Page(text).files
    assert "cross-validated mIoU 43.21 \u00b1 1.23" in text
    chosen["blocks"] = [4]
    (selection / "selection.json").write_text(json.dumps({"selected": chosen}))
    build_report(str(folder))
    assert "feature_selection/" not in (folder / "report.html").read_text()


def test_deeplab_report(tmp_path):
    from test_deeplab import run as deeplab_run, real_arrays

    images, masks = real_arrays(10)
    npz = tmp_path / "samples_64x64x3.npz"
    np.savez(npz, images, masks, np.random.default_rng(0).random(len(images)))
    assert deeplab_run(tmp_path / "exp", npz, "--num_epoch", "2") == 0
    folder = next((tmp_path / "exp").glob("*/deeplab_*"))
    page, metrics = check_report(folder)
    assert {("validation_miou", e) for e in metrics["validation_miou"]} <= {tuple(p) for p, _, _ in page.numbers}
    assert set(metrics["epoch_mean_loss"]) == {"0", "1"} and all(v > 0 for v in metrics["epoch_mean_loss"].values())


def test_segment_gallery_most_uncertain_first(run, data, tmp_path):
    out = tmp_path / "seg"
    assert segment.main(["--run", str(run), "--images", str(data / "test"), "--out", str(out)]) == 0
    page = Page((out / "report.html").read_text())
    assert all((out / ref).is_file() for ref in page.files) and len(page.files) == 2 * TEST + 1
    rows = page.rows["images"]
    with open(out / "segments.csv", newline="") as f:
        scores = {r["stem"]: float(r["uncertainty"]) for r in csv.DictReader(f)}
    assert [r[1] for r in rows] == sorted(scores, key=lambda s: -scores[s])
    assert [float(r[3]) for r in rows] == sorted(scores.values(), reverse=True)
