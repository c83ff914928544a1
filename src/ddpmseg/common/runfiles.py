"""Where a config's runs live and what every finished run writes there: metrics.json and
per_class_iou.md, with the run's timings, peak memory, folder and device, and report.html."""
from __future__ import annotations

import json
import os
import resource
import time
from typing import Any, Sequence

import torch

from .atomic import write_json_atomic, write_text_atomic
from .metrics import iou_table_markdown
from .run_report import build_run_report


def experiment_dir(cfg: dict) -> str:
    """The original's layout: ``<exp_dir>/<steps>_<blocks>`` (e.g. 50_150_250_5_6_7_8_12; DINOv2's
    blocks alone, e.g. 10_11); exp_dir itself for a backbone of fixed layers (MAE, SwAV, rgb_xy)."""
    if not cfg["steps"] and not cfg["blocks"]:
        return cfg["exp_dir"]
    return os.path.join(cfg["exp_dir"], "_".join(map(str, cfg["steps"] + cfg["blocks"])))


def saved_setting(run_dir: str, key: str, given: object, fallback: object) -> object:
    """``given`` if not None, else the run's saved config value of ``key`` (``fallback`` when the run
    has no readable config.json; loading the run then says what is wrong with it)."""
    if given is not None:
        return given
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return fallback
    return saved.get(key, fallback) if isinstance(saved, dict) else fallback


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_run_metrics(folder: str, result: dict, device: torch.device, timings: dict[str, float], t_start: float,
                  class_names: Sequence[str], head: dict[str, Any], tail: dict[str, Any]) -> dict:
    """metrics.json, per_class_iou.md and report.html of a finished run whose test scores are ``result``
    (an IoUAccumulator result); returns the metrics. Keys in order: miou, miou_present, ``head``, the
    rest of ``result``, ``tail``, then timings (with total_s), peak memory, folder and device."""
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    timings["total_s"] = time.time() - t_start
    metrics = {"miou": result.pop("miou"), "miou_present": result.pop("miou_present"), **head, **result, **tail,
               "timings_s": timings, "peak_rss_mb": peak_rss_mb(), "exp_dir": folder, "device": str(device)}
    write_json_atomic(os.path.join(folder, "metrics.json"), metrics)
    write_text_atomic(os.path.join(folder, "per_class_iou.md"), iou_table_markdown(metrics, class_names))
    build_run_report(folder)
    return metrics
