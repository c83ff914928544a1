"""ddpmseg.common.runfiles: the run-folder layout and the metrics every finished run writes."""
import json
import time

import torch

from ddpmseg.common.metrics import IoUAccumulator
from ddpmseg.common.runfiles import experiment_dir, write_run_metrics


def test_experiment_dir_is_the_originals_layout():
    assert experiment_dir({"exp_dir": "x", "steps": [50, 150], "blocks": [5, 6]}) == "x/50_150_5_6"
    assert experiment_dir({"exp_dir": "x", "steps": [], "blocks": []}) == "x"


def test_metrics_keys_in_order_and_the_class_table(tmp_path):
    iou = IoUAccumulator(2, None, ["sky", "sea"])
    iou.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))  # sky 1/2, sea 2/3
    result = {**iou.result(), "mean_uncertainty": 0.1}
    timings = {"train_s": 1.0}
    metrics = write_run_metrics(str(tmp_path), result, torch.device("cpu"), timings, time.time() - 2.0,
                                ["sky", "sea"], head={"voting": "hard"}, tail={"members": {}})
    assert list(metrics) == ["miou", "miou_present", "voting", "per_class_iou", "classes", "intersection", "union",
                             "confusion", "per_image_miou", "num_images", "mean_uncertainty", "members", "timings_s", "peak_rss_mb", "exp_dir",
                             "device"]
    assert metrics["timings_s"]["total_s"] >= 2.0 and metrics["device"] == "cpu" and metrics["peak_rss_mb"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    table = (tmp_path / "per_class_iou.md").read_text()
    assert "| 0 sky | 50.00 | yes |" in table and "| 1 sea | 66.67 | yes |" in table
    assert "mIoU <b>58.33</b>" in (tmp_path / "report.html").read_text()  # (1/2 + 2/3) / 2, from the saved file
