"""The label-efficient segmentation job: features -> ensemble -> evaluation -> report.

Everything that can be wrong with the inputs (config, dataset folders, checkpoint vs flags,
feature size) is checked before the experiment folder is touched, so a bad run leaves
nothing half-written. Training resumes: finished ensemble members are kept. A finished run
can be evaluated again with other inference settings (voting, test-time views) from its
saved config alone: ``evaluate_run``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.augment import augment_pair, copy_seed
from ..common.config import DEFAULTS, ConfigError, save_config, validate
from .crossfit import out_of_fold_probabilities
from ..data.folders import EXCLUDED, ImageLabelDataset, trained_pixels
from ..common.device import resolve_device
from ..features.registry import open_backbone
from ..common.metrics import IoUAccumulator
from ..common.paths import probe_output_dir, refuse_file
from .predict import VOTING_MODES
from .predictor import REFINER_FILE, Predictor
from .refine import refine_settings, save_refiner, train_refiner
from ..common.report import save_prediction
from ..common.atomic import write_json_atomic
from ..common.runfiles import experiment_dir, write_run_metrics
from ..common.runlock import run_lock
from ..common.runlog import RunLog
from ..common.safeload import load_plain
from ..features.store import FeatureStore
from .train import EnsembleSettings, LabelledPixels, model_path, train_ensemble
from .windowed import predict_image

# What training saw of each class, written with the feature store and kept for a resumed run's metrics.
TRAINING_LABELS_FILE = "training_labels.json"
# Config keys that only change inference: the ones evaluate_run may override.
INFERENCE_KEYS = ("voting", "report_all_votings", "tta", "hflip_class_pairs", "testing_path", "testing_masks_path",
                  "testing_number", "device", "uncertainty_top_fraction")


def member_stats(exp_dir: str, num_members: int) -> dict[int, dict]:
    """Each member's training stats, from its file: the same whether this run or an earlier,
    interrupted one trained it."""
    return {m: load_plain(model_path(exp_dir, m), "an ensemble member")["stats"] for m in range(num_members)}


class Run:
    """The job's stages on one config: its inputs opened and checked at construction (before anything
    is written), then ``train`` and ``evaluate``; ``run_interpreter`` is the entry point. Features and
    predictions come from its ``predictor``."""

    def __init__(self, cfg: dict, model_flags: dict, log: Callable[[str], None], train: bool = True):
        """Open the datasets (the training set only if ``train``) and the backbone; check the feature size."""
        self.cfg, self.flags, self.log = cfg, model_flags, log
        self.device = resolve_device(cfg["device"])
        self.size = cfg["dim"][0]
        self.hw = (self.size, self.size)
        # Training-label value of pixels no member trains on: the ignore label, or EXCLUDED when
        # every class is scored. Augmentation fills the pixels it invents with it.
        self.fill = EXCLUDED if cfg["ignore_label"] is None else cfg["ignore_label"]
        self.refine = refine_settings(cfg["refine"], cfg["seed"])  # None: no mask refinement
        self.ensemble_settings = EnsembleSettings.from_config(cfg)
        self.timings: dict[str, float] = {}
        self.training_labels: dict | None = None  # summarise_training_labels, once training labels were read
        ds_kw = dict(resolution=self.size, number_class=cfg["number_class"], ignore_label=cfg["ignore_label"],
                     palette=cfg["palette"])
        self.train_set = ImageLabelDataset(cfg["training_path"], num_images=cfg["training_number"],
                                           masks_dir=cfg["training_masks_path"], count_key="training_number",
                                           **ds_kw) if train else None
        self.test_set = ImageLabelDataset(cfg["testing_path"], num_images=cfg["testing_number"],
                                          masks_dir=cfg["testing_masks_path"], count_key="testing_number", **ds_kw)
        if train and self.refine is not None and self.refine.folds > len(self.train_set):
            raise ConfigError(f"'refine' folds {self.refine.folds} is more than the {len(self.train_set)} training "
                              f"images, so some folds would hold none: set \"folds\" to at most "
                              f"{len(self.train_set)} in 'refine'")
        # The units training learns from: one per working-size window of a training image.
        self.train_windows = self.train_set.window_count() if train else 0
        self.backbone = open_backbone(cfg, model_flags, self.device, log)
        self.predictor = Predictor(cfg, self.backbone, self.device)
        first_set = self.train_set if train else self.test_set
        name, window, _ = next(first_set.windows())
        first = self.predictor.features(window, f"{'training' if train else 'test'} image {name}", store=train)
        self.first_train_features = first if train else None
        self.layer_shapes = [tuple(a.shape[1:]) for a in first]
        dim = sum(s[0] for s in self.layer_shapes)
        if dim != cfg["dim"][2]:
            raise ConfigError(
                f"'dim' says {cfg['dim'][2]} feature channels, but steps {cfg['steps']} x blocks {cfg['blocks']} of "
                f"this U-Net give {dim}: set \"dim\": [{self.size}, {self.size}, {dim}]")
        log((f"train {len(self.train_set)} images, " if train else "") +
            f"test {len(self.test_set)} images, {len(self.layer_shapes)} activation maps, "
            f"{dim} features per pixel, device {self.device}")

    # -- stages ------------------------------------------------------------------------------
    def training_images(self):
        """(name, image, label) of every training window (ddpmseg.data.windows: a square image of the
        working size is one), then of its augmented copies, in store order.

        Copy k of window i is drawn from its own seed, so a resumed run rebuilds the same store.
        """
        c = self.cfg
        for k in range(c["augmentation_copies"] + 1):
            for i, (name, image, label) in enumerate(self.train_set.windows()):
                if k == 0:
                    yield name, image, label
                else:
                    image, label = augment_pair(image, label, copy_seed(c["seed"], i, k),
                                                c["augmentation_p"], self.fill, c["hflip_class_pairs"])
                    yield f"{name} (augmented copy {k})", image, label

    def build_training_store(self, exp_dir: str) -> tuple[FeatureStore, LabelledPixels]:
        c, t0 = self.cfg, time.time()
        location = os.path.join(exp_dir, "feature_store") if c["feature_store"] == "disk" else None
        num_images = self.train_windows * (1 + c["augmentation_copies"])
        store = FeatureStore(num_images, self.layer_shapes, self.hw, location=location)
        index, labels, excluded = [], [], []
        images = tqdm(self.training_images(), total=num_images, desc="training features", unit="img",
                      dynamic_ncols=True)
        for i, (name, image, label) in enumerate(images):
            store.put(i, self.first_train_features if i == 0 else
                      self.predictor.features(image, f"training image {name}", store=True))
            flat, keep, dropped = trained_pixels(label.numpy(), c["ignore_label"], c["min_region_pixels"])
            excluded += [(name, cls, n) for cls, n in dropped]
            index.append(torch.from_numpy(keep + i * self.size * self.size))
            labels.append(torch.from_numpy(flat[keep]))
        pixels = LabelledPixels(torch.cat(index), torch.cat(labels), self.hw)
        self.training_labels = self.summarise_training_labels(pixels.labels, excluded, num_images)
        write_json_atomic(os.path.join(exp_dir, TRAINING_LABELS_FILE), self.training_labels)
        self.timings["train_features_s"] = time.time() - t0
        where = "disk" if location else "RAM"
        self.log(f"feature store: {num_images} images, {store.nbytes / 2**20:.1f} MiB ({where}, float16, "
                 f"native resolution); {len(pixels.labels):,} labelled training pixels")
        return store, pixels

    def summarise_training_labels(self, labels: torch.Tensor, excluded: list[tuple[str, int, int]],
                                  num_images: int) -> dict:
        """One printed line each for the small regions excluded and for classes left without a training
        pixel (per-region details go to log.txt only); the same facts as a dict for metrics.json."""
        c = self.cfg
        names = c["class_names"]
        # A plain callable for a log (tests, new_experiment's checks) gets the details printed too.
        detail = getattr(self.log, "detail", self.log)
        per_class: dict[str, int] = {}
        for name, cls, n in excluded:
            detail(f"{name}: class {names[cls]} ({cls}) has only {n} pixels; excluded from training")
            per_class[names[cls]] = per_class.get(names[cls], 0) + 1
        if excluded:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(per_class.items(), key=lambda kv: -kv[1]))
            self.log(f"min_region_pixels {c['min_region_pixels']:g}: {len(excluded)} regions in "
                     f"{len({name for name, _, _ in excluded})} of {num_images} training images excluded from "
                     f"training (regions per class: {shown}; each one in log.txt)")
        counts = torch.bincount(labels, minlength=c["number_class"])[:c["number_class"]].tolist()
        missing = [names[k] for k in range(c["number_class"]) if counts[k] == 0 and k != c["ignore_label"]]
        if missing:
            self.log(f"warning: {len(missing)} class(es) have no training pixel, so no member can predict them "
                     f"and their test IoU is 0: {', '.join(missing)}")
        return {"min_region_pixels": c["min_region_pixels"], "excluded_regions": len(excluded),
                "excluded_regions_per_class": per_class,
                "pixels_per_class": dict(zip(names, counts)), "classes_without_training_pixels": missing}

    def train(self, exp_dir: str) -> dict:
        """Train the members and refiner missing from ``exp_dir``; returns every member's stats."""
        c = self.cfg
        todo = [m for m in range(c["model_num"]) if not os.path.exists(model_path(exp_dir, m))]
        refiner_todo = self.refine is not None and not os.path.exists(os.path.join(exp_dir, REFINER_FILE))
        if not todo and not refiner_todo:
            self.log(f"all {c['model_num']} ensemble members exist in {exp_dir}; skipping training")
            labels_file = os.path.join(exp_dir, TRAINING_LABELS_FILE)
            if os.path.isfile(labels_file):
                with open(labels_file) as f:
                    self.training_labels = json.load(f)
            return member_stats(exp_dir, c["model_num"])
        if 0 < len(todo) < c["model_num"]:
            self.log(f"resuming: members {todo} remain to be trained")
        store, pixels = self.build_training_store(exp_dir)
        if todo:
            t0 = time.time()
            # The un-augmented images come first in the store, so their pixels have the lowest indices.
            original_pixels = int((pixels.index < self.train_windows * self.size * self.size).sum())
            epoch_size = original_pixels if c["epoch_pixels"] == "original" else None
            train_ensemble(store, pixels, self.ensemble_settings, exp_dir, todo, device=str(self.device), log=self.log,
                           epoch_size=epoch_size)
            self.timings["train_s"] = time.time() - t0
        if refiner_todo:
            self.train_refiner(store, pixels, exp_dir)
        store.close()
        return member_stats(exp_dir, c["model_num"])

    def train_refiner(self, store: FeatureStore, pixels: LabelledPixels, exp_dir: str) -> None:
        """The mask refiner (ddpmseg.classifier.refine), trained on out-of-fold first predictions."""
        c, s, t0 = self.cfg, self.refine, time.time()
        windows = list(self.train_set.windows())
        first = out_of_fold_probabilities(
            store, pixels, c, len(windows), s.folds, s.fold_members, os.path.join(exp_dir, "refiner_folds"),
            lambda ens, i: self.predictor.probability_map(self.predictor.votes(
                windows[i][1], i, f"training image {windows[i][0]}", ensemble=ens)),
            str(self.device), self.log, windows_per_image=self.train_set.windows_per_image())
        images = torch.stack([image for _, image, _ in windows])
        labels = torch.stack([torch.as_tensor(label) for _, _, label in windows]).long()
        model, stats = train_refiner(images, first, labels, c["number_class"], self.fill, s,
                                     flip_pairs=c["hflip_class_pairs"], device=self.device, log=self.log)
        save_refiner(model, s, c["number_class"], os.path.join(exp_dir, REFINER_FILE))
        self.timings["refiner_s"] = time.time() - t0

    def evaluate(self, models_dir: str, out_dir: str) -> dict:
        """Score the ensemble in ``models_dir`` on the test set, each image at its own size through its
        working-side windows (ddpmseg.classifier.windowed); predictions go to ``out_dir``. The windows
        of the whole test set are numbered in order: that index seeds a window's test-time views and
        refiner noise (for a set of S x S images, the image index)."""
        c, t0 = self.cfg, time.time()
        predictor = Predictor.load(c, self.backbone, models_dir, self.device)
        modes = VOTING_MODES if c["report_all_votings"] else (c["voting"],)
        new_iou = lambda: IoUAccumulator(c["number_class"], c["ignore_label"], c["class_names"])  # noqa: E731
        ious = {m: new_iou() for m in modes}
        if self.refine is not None:
            settings = predictor.refine_settings
            step_ious = [new_iou() for _ in settings.step_schedule()]
        uncertainties, first_window = {}, 0
        for i in tqdm(range(len(self.test_set)), desc="evaluation", unit="img", dynamic_ncols=True):
            item, tiling = self.test_set[i], self.test_set.tiling(i)
            own = item["own_label"]
            out = predict_image(predictor, item["image"], tiling, tuple(own.shape), first_window,
                                f"test image {item['stem']}", modes)
            first_window += len(tiling.windows)
            for mode, iou in ious.items():
                iou.update(out.masks[mode], own, item["stem"])
            pred = before = out.masks[c["voting"]]
            if self.refine is not None:
                for iou, mask in zip(step_ious, out.refined):
                    iou.update(mask, own, item["stem"])
                pred = out.refined[-1]
            uncertainties[item["stem"]] = out.score
            image = item["image"] if tuple(item["image"].shape[1:]) == tuple(own.shape) else self.test_set.own_image(i)
            save_prediction(out_dir, item["stem"], pred, image=image, gt=own, palette=c["palette"],
                            before=before if self.refine is not None else None, class_names=c["class_names"],
                            uncertainty=out.uncertainty)
        self.timings["evaluation_s"] = time.time() - t0
        result = ious[c["voting"]].result()
        if self.refine is not None:
            # The refined masks are the run's output; the ensemble's own masks stay on record.
            before = {k: v for k, v in result.items() if k.startswith("miou") or k == "per_class_iou"}
            result = step_ious[-1].result()
            result["refine"] = {"method": "ddps", "miou_before": before["miou"], "miou_after": result["miou"],
                                "miou_present_before": before["miou_present"],
                                "per_class_iou_before": before["per_class_iou"],
                                "noise_steps": settings.step_schedule(),
                                "miou_by_step": [iou.result()["miou"] for iou in step_ious]}
        if c["report_all_votings"]:
            result["by_voting"] = {m: {k: v for k, v in iou.result().items() if k.startswith("miou")}
                                   for m, iou in ious.items()}
        result["mean_uncertainty"] = float(np.mean(list(uncertainties.values())))
        result["uncertainty"] = uncertainties
        return result


def write_metrics(run: Run, result: dict, out_dir: str, t_start: float, **extra: Any) -> dict:
    """metrics.json and per_class_iou.md of a finished evaluation; returns the metrics."""
    cfg = run.cfg
    metrics = write_run_metrics(out_dir, result, run.device, run.timings, t_start, cfg["class_names"],
                                head={"voting": cfg["voting"], "tta": cfg["tta"]}, tail=extra)
    if "refine" in metrics:
        run.log(f"refinement: mIoU {100 * metrics['refine']['miou_before']:.2f} (ensemble) -> "
                f"{100 * metrics['refine']['miou_after']:.2f} (refined)")
    run.log(f"mIoU {100 * metrics['miou']:.2f} (classes present: {100 * metrics['miou_present']:.2f}, "
            f"{cfg['voting']} voting), mean uncertainty {metrics['mean_uncertainty']:.4f}; outputs in {out_dir}")
    return metrics


def refuse_changed_config(exp_dir: str, cfg: dict) -> None:
    """A run folder holds one run: continuing it with other training keys would mix ensemble
    members (or a feature store) of two configs, so refuse, naming the keys that differ.
    Inference keys may change: evaluation reruns in full on every resume."""
    path = os.path.join(exp_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    cfg = json.loads(json.dumps(cfg))  # tuples and lists as the saved file has them

    def same(key: str) -> bool:
        # A key the saved file lacks was added since: that run used its default (every new key's default
        # is the method as it was), so a run made before noise_draws or class_weighting existed resumes.
        a, b = saved.get(key, DEFAULTS[key][1] if key in DEFAULTS else None), cfg.get(key)
        if key.endswith("_path") and isinstance(a, str) and isinstance(b, str) and a and b:
            return os.path.realpath(a) == os.path.realpath(b)  # one folder, written two ways
        return a == b

    differ = sorted(k for k in set(saved) | set(cfg) if k not in (*INFERENCE_KEYS, "exp_dir") and not same(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {cfg.get(k)!r}" for k in differ)
        raise ConfigError(f"{exp_dir} holds a run with another config: {', '.join(differ)} differ "
                          f"(saved -> now: {shown}); rerun with the saved values, or set another exp_dir")


def run_interpreter(cfg: dict, model_flags: dict, log: RunLog | None = None) -> dict:
    """Extract features, train (or resume) the ensemble, evaluate; returns the metrics dict."""
    t_start = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would repeat the whole job and write the same files at once.
        raise ConfigError("`ddpmseg train` runs in one process; launch it with python, not torchrun "
                          "(ddpmseg train-ddpm, sample and generate are the multi-process tools)")
    log = log or RunLog()
    exp_dir = experiment_dir(cfg)
    probe_output_dir(exp_dir, "exp_dir")
    run = Run(cfg, model_flags, log)
    with run_lock(exp_dir, log):
        resolved = {**cfg, "model_flags": model_flags}
        refuse_changed_config(exp_dir, resolved)
        save_config(resolved, os.path.join(exp_dir, "config.json"))
        log.attach(os.path.join(exp_dir, "log.txt"))
        selection = cfg["selection"] or {}
        if selection.get("complete") is False:
            log(f"warning: steps {cfg['steps']} x blocks {cfg['blocks']} come from an unfinished `ddpmseg select` "
                f"search (its --budget_minutes ran out; {selection.get('report')}); rerun that command to finish it")
        members = run.train(exp_dir)
        result = run.evaluate(exp_dir, exp_dir)
        extra = {"training_labels": run.training_labels} if run.training_labels is not None else {}
        return write_metrics(run, result, exp_dir, t_start, **extra, members=members)


def load_trained_config(run_dir: str, overrides: dict[str, Any]) -> dict:
    """The validated ``config.json`` of the finished run in ``run_dir`` with ``overrides`` of
    inference-only keys; its ensemble members (and refiner) must exist."""
    refuse_file(run_dir, "--run")
    saved = os.path.join(run_dir, "config.json")
    if not os.path.isfile(saved):
        raise ConfigError(f"{run_dir} has no config.json: give the folder of a finished `ddpmseg train` run")
    training_keys = sorted(set(overrides) - set(INFERENCE_KEYS))
    if training_keys:
        raise ConfigError(f"{training_keys} change the trained ensemble, so evaluation cannot override them; "
                          f"train a new run instead (evaluation may override {', '.join(INFERENCE_KEYS)})")
    with open(saved) as f:
        cfg = validate({**json.load(f), **overrides}, where=saved)
    missing = [m for m in range(cfg["model_num"]) if not os.path.exists(model_path(run_dir, m))]
    if missing:
        raise ConfigError(f"{run_dir} lacks ensemble members {missing}; finish training it first")
    if cfg["refine"] and not os.path.exists(os.path.join(run_dir, REFINER_FILE)):
        raise ConfigError(f"{run_dir} lacks {REFINER_FILE} (its config asks for refinement); rerun "
                          f"`ddpmseg train` on it to finish training")
    return cfg


def load_trained_run(run_dir: str, overrides: dict[str, Any], log: Callable[[str], None]) -> Run:
    """The finished run in ``run_dir``, from its ``config.json`` alone, with ``overrides`` of
    inference-only keys; its test set and U-Net are opened and checked."""
    cfg = load_trained_config(run_dir, overrides)
    return Run(cfg, cfg["model_flags"], log, train=False)


def evaluate_run(run_dir: str, overrides: dict[str, Any], out_dir: str, log: RunLog | None = None) -> dict:
    """Evaluate the trained ensemble in ``run_dir`` again with ``overrides`` of inference-only
    keys; everything goes to ``out_dir``."""
    t_start = time.time()
    log = log or RunLog()
    cfg = load_trained_config(run_dir, overrides)
    probe_output_dir(out_dir, "--out")
    run = Run(cfg, cfg["model_flags"], log, train=False)
    with run_lock(out_dir, log):
        save_config(cfg, os.path.join(out_dir, "config.json"))
        log.attach(os.path.join(out_dir, "log.txt"))
        result = run.evaluate(run_dir, out_dir)
        trained = {}
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):
            with open(os.path.join(run_dir, "metrics.json")) as f:
                trained = json.load(f).get("timings_s", {})
        return write_metrics(run, result, out_dir, t_start, trained_in=run_dir, training_timings_s=trained)
