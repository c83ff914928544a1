"""The offline demo: every stage of the method on data the project generates itself.

1. a procedural labelled dataset (ddpmseg.data.procedural: shapes whose class is their outline, not
   their colour) with unlabelled images;
2. a small DDPM trained from scratch on the unlabelled images;
3. the pixel-classifier ensemble on its features, trained on a few labelled images;
4. the same ensemble on raw RGB + (x, y) features, the no-context baseline;
5. a small DatasetDDPM set: samples of the DDPM labelled by the ensemble;
6. a report: metrics.json, report.md, comparison.png, the sample grids.

Each stage resumes from what a previous (interrupted) run left, so rerunning is cheap.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .common.atomic import write_json_atomic, write_text_atomic
from .common.config import load_config
from .data.folders import ImageLabelDataset
from .ddpm.train import DDPMTrainer, DDPMTrainOptions
from .common.distributed import init_world
from .ddpm.generate import SampleOptions
from .classifier.interpreter import run_interpreter
from .datasetddpm.labelling import generate_labelled_set
from .common.model_flags import resolve_model_flags
from .data.procedural import write_dataset
from .common.report import annotate, colorize_mask, panel_spans, side_by_side, to_uint8_image, write_png_atomic
from .common.runfiles import experiment_dir
from .common.runlog import RunLog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"ddpm": "experiments/shapes64/ddpm.json", "rgb_xy": "experiments/shapes64/rgb_xy.json"}

# A U-Net small enough to learn something in minutes on a 2-core CPU: 32 channels, three
# resolutions (64, 32, 16), one residual block each, attention at 16x16.
DEMO_FLAGS = dict(image_size=64, num_channels=32, channel_mult="1,2,2", num_res_blocks=1,
                  attention_resolutions="16", num_head_channels=16, learn_sigma=True, dropout=0.1,
                  use_scale_shift_norm=True, resblock_updown=False)
# A short run needs a short EMA horizon (about 100 updates); 0.9999 would still be mostly noise.
EMA_RATE = "0.99"
COMPARISON_ROWS = 6  # test images shown in comparison.png


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run."""

    train: int  # labelled training images (the label-efficient part)
    test: int
    unlabeled: int  # DDPM training images
    ddpm_steps: int
    ddpm_batch: int
    ddpm_lr: float
    model_num: int
    max_epochs: int
    samples: int  # DatasetDDPM samples
    sample_respacing: str


PRESETS = {
    # The README's main command: ~10 labelled images, within 15 minutes on 2 CPU cores.
    "full": DemoPreset(train=10, test=40, unlabeled=600, ddpm_steps=400, ddpm_batch=8, ddpm_lr=3e-4,
                       model_num=10, max_epochs=100, samples=16, sample_respacing="ddim25"),
    # Every code path in about a minute, for the tests (its numbers mean nothing).
    "smoke": DemoPreset(train=3, test=2, unlabeled=8, ddpm_steps=2, ddpm_batch=4, ddpm_lr=3e-4,
                        model_num=2, max_epochs=2, samples=2, sample_respacing="ddim2"),
}


def ddpm_checkpoint(out: str, steps: int) -> str:
    return os.path.join(out, "ddpm", f"ema_{EMA_RATE}_{steps:06d}.pt")


def interpreter_config(kind: str, out: str, preset: DemoPreset, seed: int, device: str) -> dict:
    """experiments/shapes64/<kind>.json pointed at this demo's folders and sizes."""
    overrides = {
        "exp_dir": os.path.join(out, "pixel_classifiers", kind),
        "training_path": os.path.join(out, "data", "real", "train"),
        "testing_path": os.path.join(out, "data", "real", "test"),
        "training_number": preset.train, "testing_number": preset.test,
        "model_num": preset.model_num, "max_epochs": preset.max_epochs, "seed": seed, "device": device,
    }
    if kind == "ddpm":
        overrides["model_path"] = ddpm_checkpoint(out, preset.ddpm_steps)
    return load_config(os.path.join(REPO, CONFIGS[kind]), overrides)


def comparison_image(ddpm_dir: str, rgb_dir: str, test_path: str, palette, rows: int,
                     class_names: list[str]) -> np.ndarray:
    """Rows of image | ground truth | DDPM-feature prediction | RGB+xy prediction, titled, with a legend."""
    test = ImageLabelDataset(test_path, resolution=64)
    lines = []
    for i in range(min(rows, len(test))):
        item = test[i]
        preds = [np.load(os.path.join(d, "predictions", item["stem"] + ".npy")) for d in (ddpm_dir, rgb_dir)]
        panels = [to_uint8_image(item["image"]), colorize_mask(item["label"], palette),
                  *(colorize_mask(p, palette) for p in preds)]
        lines.append(side_by_side(panels))
    gap = np.full((2, lines[0].shape[1], 3), 255, dtype=np.uint8)
    figure = np.concatenate([x for line in lines for x in (line, gap)][:-1], axis=0)
    titles = zip(panel_spans([p.shape[1] for p in panels]), ["image", "ground truth", "DDPM", "RGB+xy"])
    return annotate(figure, list(titles), list(zip(class_names, palette)))


def report_markdown(metrics: dict, class_names: list[str]) -> str:
    d, b = metrics["ddpm"], metrics["rgb_xy"]
    lines = [
        "# ddpm-seg offline demo", "",
        f"{metrics['preset']['train']} labelled training images, {metrics['preset']['test']} test images, "
        f"a DDPM trained for {metrics['preset']['ddpm_steps']} updates on {metrics['preset']['unlabeled']} "
        f"unlabelled images; device {metrics['device']}, seed {metrics['seed']}.", "",
        "| features | test mIoU % |", "|---|---:|",
        f"| DDPM U-Net (steps {d['steps']}, blocks {d['blocks']}) | {100 * d['miou']:.2f} |",
        f"| RGB + (x, y) baseline | {100 * b['miou']:.2f} |", "",
        "| class | DDPM IoU % | RGB+xy IoU % |", "|---|---:|---:|",
        *(f"| {n} | {100 * d['per_class_iou'][n]:.2f} | {100 * b['per_class_iou'][n]:.2f} |" for n in class_names),
        "", "| stage | seconds |", "|---|---:|",
        *(f"| {k} | {v:.0f} |" for k, v in metrics["timings_s"].items()), "",
        "Pictures: `comparison.png` (image | ground truth | DDPM | RGB+xy), `synthetic/synthetic_grid.png` "
        "(DDPM samples | their labels), `ddpm/samples_*.png` (the DDPM's samples).", "",
    ]
    return "\n".join(lines)


def run_demo(out: str = "runs/demo", preset_name: str = "full", seed: int = 0, device: str = "auto",
             log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every stage into ``out``; returns the demo's metrics."""
    preset = PRESETS[preset_name]
    log = log or RunLog()
    world = init_world(device)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], object]) -> object:
        log(f"== {name}")
        t0 = time.time()
        result = fn()
        timings[name] = round(time.time() - t0, 1)
        return result

    stage("dataset", lambda: write_dataset(os.path.join(out, "data"), train=preset.train, test=preset.test,
                                           unlabeled=preset.unlabeled, seed=seed))
    ddpm_opts = DDPMTrainOptions(
        data_dirs=[os.path.join(out, "data", "unlabeled")], log_dir=os.path.join(out, "ddpm"),
        model_flags=DEMO_FLAGS, batch_size=preset.ddpm_batch, lr=preset.ddpm_lr, ema_rate=EMA_RATE,
        max_steps=preset.ddpm_steps, save_interval=preset.ddpm_steps, log_interval=max(1, preset.ddpm_steps // 20),
        sample_respacing=preset.sample_respacing, seed=seed, device=str(world.device))
    stage("ddpm_training", lambda: DDPMTrainer(ddpm_opts, world, log).run())
    results, cfgs = {}, {}
    for kind in ("ddpm", "rgb_xy"):
        cfgs[kind] = interpreter_config(kind, out, preset, seed, str(world.device))
        results[kind] = stage(f"interpreter_{kind}",
                              lambda c=cfgs[kind]: run_interpreter(c, resolve_model_flags(c), RunLog()))
    run_dirs = {k: experiment_dir(c) for k, c in cfgs.items()}

    synthetic = SampleOptions(num_samples=preset.samples, batch_size=preset.samples, use_ddim=True,
                              timestep_respacing=preset.sample_respacing, seed=seed)
    stage("synthetic_dataset", lambda: generate_labelled_set(run_dirs["ddpm"], os.path.join(out, "synthetic"),
                                                             synthetic, world, log))
    palette = cfgs["ddpm"]["palette"]
    write_png_atomic(os.path.join(out, "comparison.png"),
                     comparison_image(run_dirs["ddpm"], run_dirs["rgb_xy"], cfgs["ddpm"]["testing_path"], palette,
                                      COMPARISON_ROWS, cfgs["ddpm"]["class_names"]))
    keep = ("miou", "miou_present", "per_class_iou")
    metrics = {
        "ddpm": {**{k: results["ddpm"][k] for k in keep}, "steps": cfgs["ddpm"]["steps"],
                 "blocks": cfgs["ddpm"]["blocks"], "run": run_dirs["ddpm"]},
        "rgb_xy": {**{k: results["rgb_xy"][k] for k in keep}, "run": run_dirs["rgb_xy"]},
        "ddpm_beats_baseline": results["ddpm"]["miou"] > results["rgb_xy"]["miou"],
        "preset": {"name": preset_name, **asdict(preset)}, "seed": seed, "device": str(world.device),
        "cpu_count": os.cpu_count(),
        "ddpm_checkpoint": ddpm_checkpoint(out, preset.ddpm_steps),
        "timings_s": {**timings, "total": round(sum(timings.values()), 1)},
    }
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    write_text_atomic(os.path.join(out, "report.md"), report_markdown(metrics, cfgs["ddpm"]["class_names"]))
    log(f"DDPM features: mIoU {100 * metrics['ddpm']['miou']:.2f}; RGB+xy baseline: "
        f"{100 * metrics['rgb_xy']['miou']:.2f}; report: {os.path.join(out, 'report.md')}")
    log(json.dumps({"demo_miou_ddpm": round(100 * metrics["ddpm"]["miou"], 2),
                    "demo_miou_rgb_xy": round(100 * metrics["rgb_xy"]["miou"], 2),
                    "total_s": metrics["timings_s"]["total"]}))
    return metrics
