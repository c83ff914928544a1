"""The label-efficient segmentation job: features -> ensemble -> evaluation -> report.

Everything that can be wrong with the inputs (config, dataset folders, checkpoint vs flags,
feature size) is checked before the experiment folder is touched, so a bad run leaves
nothing half-written. Training resumes: finished ensemble members are kept.
"""
from __future__ import annotations

import json
import os
import resource
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from guided_diffusion.checkpoint import load_model_and_diffusion
from guided_diffusion.script_util import model_and_diffusion_defaults

from .atomic import write_json_atomic, write_text_atomic
from .config import ConfigError, save_config
from .data import ImageLabelDataset, drop_small_regions
from .features import FeatureExtractorDDPM, shared_noise
from .metrics import IoUAccumulator, iou_table_markdown
from .predict import predict_image
from .report import save_prediction
from .store import FeatureStore
from .train import LabelledPixels, load_ensemble, model_path, train_ensemble

EXCLUDED = -1  # training-label marker for pixels no member trains on


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model_flags(cfg: dict, cli_flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """U-Net flags: defaults < ``<checkpoint>.json`` "flags" beside the checkpoint (written by our
    trainer) < config ``model_flags`` < flags given on the command line. ``image_size`` is the
    working resolution ``dim[0]``, as in the original."""
    defaults = model_and_diffusion_defaults()
    flags = dict(defaults)
    sidecar = os.path.splitext(cfg["model_path"])[0] + ".json"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            flags.update(json.load(f).get("flags", {}))
    flags.update(cfg["model_flags"])
    flags.update(cli_flags or {})
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown model flag(s) {unknown}; valid flags: {', '.join(defaults)}")
    flags["image_size"] = cfg["dim"][0]
    return flags


def experiment_dir(cfg: dict) -> str:
    """The original's layout: ``<exp_dir>/<steps>_<blocks>`` (e.g. 50_150_250_5_6_7_8_12)."""
    if not cfg["steps"]:
        return cfg["exp_dir"]
    return os.path.join(cfg["exp_dir"], "_".join(map(str, cfg["steps"] + cfg["blocks"])))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Run:
    """Holds what the stages share; ``run_interpreter`` is the entry point."""

    def __init__(self, cfg: dict, model_flags: dict, log: Callable[[str], None]):
        self.cfg, self.flags, self.log = cfg, model_flags, log
        self.device = resolve_device(cfg["device"])
        self.size = cfg["dim"][0]
        self.hw = (self.size, self.size)
        self.timings: dict[str, float] = {}

    # -- checks before anything is written ------------------------------------------------
    def validate_inputs(self) -> None:
        c = self.cfg
        ds_kw = dict(resolution=self.size, number_class=c["number_class"], ignore_label=c["ignore_label"])
        self.train_set = ImageLabelDataset(c["training_path"], num_images=c["training_number"], **ds_kw)
        self.test_set = ImageLabelDataset(c["testing_path"], num_images=c["testing_number"], **ds_kw)
        model, diffusion = load_model_and_diffusion(c["model_path"], self.flags, self.device)
        self.extractor = FeatureExtractorDDPM(steps=c["steps"], blocks=c["blocks"],
                                              input_activations=c["input_activations"], device=self.device,
                                              model=model, diffusion=diffusion)
        torch.manual_seed(c["seed"])
        self.noise = shared_noise(c["seed"], self.size, self.device) if c["share_noise"] else None
        first = self.first_train_features = self.features(self.train_set[0]["image"])
        self.layer_shapes = [tuple(a.shape[1:]) for a in first]
        dim = sum(s[0] for s in self.layer_shapes)
        if dim != c["dim"][2]:
            raise ConfigError(
                f"'dim' says {c['dim'][2]} feature channels, but steps {c['steps']} x blocks {c['blocks']} of "
                f"this U-Net give {dim}: set \"dim\": [{self.size}, {self.size}, {dim}]")
        self.log(f"train {len(self.train_set)} images, test {len(self.test_set)} images, "
                 f"{len(self.layer_shapes)} activation maps, {dim} features per pixel, device {self.device}")

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.extractor(image[None], noise=self.noise)

    # -- stages ------------------------------------------------------------------------------
    def build_training_store(self, exp_dir: str) -> tuple[FeatureStore, LabelledPixels]:
        c, t0 = self.cfg, time.time()
        location = os.path.join(exp_dir, "feature_store") if c["feature_store"] == "disk" else None
        store = FeatureStore(len(self.train_set), self.layer_shapes, self.hw, location=location)
        index, labels = [], []
        fill = EXCLUDED if c["ignore_label"] is None else c["ignore_label"]
        for i in tqdm(range(len(self.train_set)), desc="training features", unit="img", dynamic_ncols=True):
            item = self.train_set[i]
            store.put(i, self.first_train_features if i == 0 else self.features(item["image"]))
            label, dropped = drop_small_regions(item["label"].numpy(), c["ignore_label"], c["min_region_pixels"],
                                                fill=EXCLUDED)
            for cls, n in dropped:
                self.log(f"{item['stem']}: class {cls} has only {n} pixels; excluded from training")
            flat = label.reshape(-1).astype(np.int64)
            keep = np.flatnonzero((flat != fill) & (flat != EXCLUDED))
            index.append(torch.from_numpy(keep + i * self.size * self.size))
            labels.append(torch.from_numpy(flat[keep]))
        pixels = LabelledPixels(torch.cat(index), torch.cat(labels), self.hw)
        self.timings["train_features_s"] = time.time() - t0
        self.log(f"feature store: {store.nbytes / 2**20:.1f} MiB ({'disk' if location else 'RAM'}, float16, "
                 f"native resolution); {len(pixels.labels):,} labelled training pixels")
        return store, pixels

    def train(self, exp_dir: str) -> dict:
        c = self.cfg
        todo = [m for m in range(c["model_num"]) if not os.path.exists(model_path(exp_dir, m))]
        if not todo:
            self.log(f"all {c['model_num']} ensemble members exist in {exp_dir}; skipping training")
            return {}
        if len(todo) < c["model_num"]:
            self.log(f"resuming: members {todo} remain to be trained")
        store, pixels = self.build_training_store(exp_dir)
        t0 = time.time()
        stats = train_ensemble(store, pixels, c, exp_dir, todo, device=str(self.device), log=self.log)
        self.timings["train_s"] = time.time() - t0
        store.close()
        return stats

    def evaluate(self, exp_dir: str) -> dict:
        c, t0 = self.cfg, time.time()
        ens = load_ensemble(exp_dir, c["model_num"], c["dim"][2], c["number_class"], str(self.device))
        iou = IoUAccumulator(c["number_class"], c["ignore_label"], c["class_names"])
        uncertainties = {}
        for i in tqdm(range(len(self.test_set)), desc="evaluation", unit="img", dynamic_ncols=True):
            item = self.test_set[i]
            pred, uncertainties[item["stem"]] = predict_image(
                ens, self.features(item["image"]), self.hw, c["uncertainty_top_fraction"])
            iou.update(pred, item["label"])
            save_prediction(exp_dir, item["stem"], pred, image=item["image"], gt=item["label"], palette=c["palette"])
        self.timings["evaluation_s"] = time.time() - t0
        result = iou.result()
        result["mean_uncertainty"] = float(np.mean(list(uncertainties.values())))
        result["uncertainty"] = uncertainties
        return result


class RunLog:
    """Prints and keeps lines; once the run folder exists they also go to its ``log.txt``."""

    def __init__(self):
        self.lines: list[str] = []
        self.path: str | None = None

    def __call__(self, msg: str) -> None:
        tqdm.write(msg)
        if self.path:
            with open(self.path, "a") as f:
                f.write(msg + "\n")
        else:
            self.lines.append(msg)

    def attach(self, path: str) -> None:
        self.path = path
        with open(path, "a") as f:
            f.write(f"--- run started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.writelines(line + "\n" for line in self.lines)


def run_interpreter(cfg: dict, model_flags: dict, log: RunLog | None = None) -> dict:
    """Extract features, train (or resume) the ensemble, evaluate; returns the metrics dict."""
    t_start = time.time()
    log = log or RunLog()
    run = Run(cfg, model_flags, log)
    run.validate_inputs()
    exp_dir = experiment_dir(cfg)
    os.makedirs(exp_dir, exist_ok=True)
    log.attach(os.path.join(exp_dir, "log.txt"))
    save_config({**cfg, "model_flags": model_flags}, os.path.join(exp_dir, "config.json"))
    member_stats = run.train(exp_dir)
    result = run.evaluate(exp_dir)
    if cfg["device"] != "cpu" and torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    run.timings["total_s"] = time.time() - t_start
    metrics = {"miou": result.pop("miou"), "miou_present": result.pop("miou_present"),
               **result, "members": member_stats, "timings_s": run.timings, "peak_rss_mb": peak_rss_mb(),
               "exp_dir": exp_dir, "device": str(run.device)}
    write_json_atomic(os.path.join(exp_dir, "metrics.json"), metrics)
    write_text_atomic(os.path.join(exp_dir, "per_class_iou.md"), iou_table_markdown(metrics, cfg["class_names"]))
    log(f"mIoU {100 * metrics['miou']:.2f} (classes present: {100 * metrics['miou_present']:.2f}), "
        f"mean uncertainty {metrics['mean_uncertainty']:.4f}; outputs in {exp_dir}")
    return metrics
