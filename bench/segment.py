"""Inference speed: ddpmseg segment on unlabelled images vs the evaluation path, on the same trained run.

    python bench/segment.py [--quick] [--images 50]

Trains one run on celebamask64 (the 64 px faces checkpoint) in a temp folder, then times, on the
same celebamask64 test images and in this one process, (a) the evaluation path (Run.evaluate:
votes, masks, IoU, predictions/visualizations written) and (b) ddpmseg segment's job (Segmenter +
segment_images: the same votes, plus probabilities, uncertainty map and its three PNGs and CSV
row), and (c) ddpmseg segment on the same faces widened to 2:1 (two windows each). Loading is
excluded from both. Prints one JSON line with images/s and the ratio. --quick: a tiny run (one
step, two members, a few images) that a test runs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path[:0] = [os.path.join(REPO, "src"), REPO]

from ddpmseg.common.config import load_config  # noqa: E402
from ddpmseg.classifier.interpreter import load_trained_run, run_interpreter  # noqa: E402
from ddpmseg.common.model_flags import resolve_model_flags  # noqa: E402
from ddpmseg.common.runfiles import experiment_dir  # noqa: E402
from ddpmseg.common.runlog import RunLog  # noqa: E402
from ddpmseg.classifier.segment_folder import segment_images  # noqa: E402
from ddpmseg.classifier.segmenter import Segmenter  # noqa: E402
from ddpmseg.common.distributed import World  # noqa: E402

SHARED = os.environ.get("DDPMSEG_SHARED", os.path.join(REPO, "..", "shared"))
DATA = os.path.join(SHARED, "data", "celebamask64", "real")
CHECKPOINT = os.path.join(SHARED, "checkpoints", "faces64_ema.pt")
# The published celebamask64 setting, and a tiny one that exercises the same code in seconds.
FULL = {"training_number": 20, "model_num": 10}
QUICK = {"training_number": 2, "model_num": 2, "max_epochs": 1, "early_stop_after_epoch": 0,
         "early_stop_patience": 3, "steps": [50], "dim": [64, 64, 384]}


def timed(job) -> float:
    t0 = time.perf_counter()
    job()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    p.add_argument("--images", type=int, default=None, help="test images timed (default 50; --quick 3)")
    a = p.parse_args(argv)
    n = a.images or (3 if a.quick else 50)
    # Progress and logs go to stderr: stdout carries the one JSON line.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        overrides = {**(QUICK if a.quick else FULL), "testing_number": n, "exp_dir": os.path.join(tmp, "run"),
                     "training_path": os.path.join(DATA, "train"), "testing_path": os.path.join(DATA, "test"),
                     "model_path": CHECKPOINT}
        cfg = load_config(os.path.join(REPO, "experiments", "celebamask64", "ddpm.json"), overrides)
        run_interpreter(cfg, resolve_model_flags(cfg), RunLog())  # trains (and evaluates once: a warm-up)
        run_dir = experiment_dir(cfg)
        run = load_trained_run(run_dir, {}, lambda msg: None)
        t_eval = timed(lambda: run.evaluate(run_dir, os.path.join(tmp, "eval")))
        files = [run.test_set.image_paths[i] for i in range(len(run.test_set))]
        segmenter = Segmenter.from_run(run_dir)
        one_process = World(rank=0, size=1, device=run.device)  # the single-process path that segment times
        t_seg = timed(lambda: segment_images(segmenter, files, os.path.join(tmp, "seg"), one_process))
        wide = os.path.join(tmp, "wide")
        os.makedirs(wide)
        for f in files:
            Image.open(f).convert("RGB").resize((128, 64)).save(os.path.join(wide, os.path.basename(f)))
        t_wide = timed(lambda: segment_images(segmenter, [wide], os.path.join(tmp, "seg_wide"), one_process))
    result = {
        "bench": "segment", "argv": sys.argv[1:] if argv is None else list(argv), "quick": a.quick, "images": n, "members": cfg["model_num"], "dim": cfg["dim"][2],
        "device": str(run.device), "torch_threads": torch.get_num_threads(),
        "evaluation_images_per_s": round(n / t_eval, 2), "segment_images_per_s": round(n / t_seg, 2),
        "segment_2to1_images_per_s": round(n / t_wide, 2),
        "segment_over_evaluation": round(t_eval / t_seg, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
