"""Which diffusion steps and decoder blocks to use, chosen by the labelled training images alone.

The activations of every (step, block) cell of a candidate grid are extracted once, for the
training images only, into the native-resolution float16 FeatureStore. A cell, or a combination
``steps x blocks`` (what a config can express), is scored by k-fold cross-validated mIoU of a
cheap probe: a small ensemble (few members, a fixed number of iterations) trained by
``train_ensemble`` on the other folds' pixels and voting on the held-out fold's images as evaluation
does. Every single cell is scored (the heatmap); then a greedy forward search starts from the best
cell and adds, one at a time, the step or block that raises the score most, until no addition
gains more than ``min_gain``. The test set is never opened. Scores are saved after each probe, so an
interrupted or budget-limited search continues where it stopped.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from tqdm import tqdm

from ..common.atomic import write_json_atomic
from ..common.config import ConfigError, save_config
from .crossfit import fold_assignment, pixels_outside_fold
from ..data.folders import ImageLabelDataset, drop_small_regions
from ..features.registry import backbone_class
from ..common.metrics import IoUAccumulator
from .predict import Votes, ensemble_logits
from ..common.report import write_png_atomic
from ..common.seeding import stream_seed
from .selection_heatmap import heatmap
from ..features.store import FeatureStore
from .train import EnsembleSettings, LabelledPixels, load_ensemble, train_ensemble

SCORES_FILE = "scores.json"
EXCLUDED = -1  # training-label marker of pixels no probe trains on (the interpreter's EXCLUDED)


@dataclass
class ProbeSettings:
    """How one candidate is scored; defaults are the cheap probe's."""
    folds: int = 4  # k of the k-fold split of the training images
    members: int = 2  # a small ensemble: two members already vote, at a fifth of the full cost
    iterations: int = 600  # fixed budget per member (no early stopping), the same for every candidate
    min_gain: float = 0.002  # a greedy step must raise CV mIoU by more than this (0.2 points) to be taken


@dataclass
class Score:
    """The cross-validated mIoU of one candidate (steps x blocks)."""
    steps: list[int]
    blocks: list[int]
    miou: float  # mean over folds
    miou_std: float  # sample standard deviation over folds: the fold spread
    fold_mious: list[float]  # one per fold, fold order


def candidate_key(steps, blocks) -> str:
    return f"{','.join(map(str, sorted(steps)))}/{','.join(map(str, sorted(blocks)))}"


class BudgetSpent(Exception):
    """The time budget ran out before the next probe."""


class LayerSubset(FeatureStore):
    """Some layers of a FeatureStore, sharing its maps: what a run of those steps and blocks would store."""

    def __init__(self, store: FeatureStore, layers: list[int]):
        # No FeatureStore.__init__: that allocates maps, and these are views of the store's own.
        self.num_images, self.out_hw, self.location = store.num_images, store.out_hw, None
        self.layer_shapes = [store.layer_shapes[i] for i in layers]
        self.channels = [c for c, _, _ in self.layer_shapes]
        self.dim = sum(self.channels)
        self.maps = [store.maps[i] for i in layers]
        self.index = [store.index[i] for i in layers]

    def native(self, i: int) -> list[torch.Tensor]:
        """Image i's activation maps [C, h, w] (float16), the input of ``ensemble_logits``."""
        return [m[i].permute(2, 0, 1) for m in self.maps]


def check_distinct(steps: list[int], blocks: list[int], uses_timesteps: bool) -> None:
    """The grid's blocks (and steps, for a backbone with timesteps) are distinct, and there are some."""
    for name, values in (("steps", steps), ("blocks", blocks)) if uses_timesteps else (("blocks", blocks),):
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"--{name} must list distinct values, got {values}")


class Selection:
    """The candidate store of one config's training images, and the scores of its probes."""

    def __init__(self, cfg: dict, flags: dict, device: torch.device, out_dir: str, steps: list[int] | None,
                 blocks: list[int] | None, probe: ProbeSettings, budget_minutes: float | None = None,
                 log: Callable[[str], None] = print):
        kind = backbone_class(cfg["model_type"])
        self.steps, self.blocks = kind.candidate_grid(cfg, flags, steps, blocks)  # ConfigError: nothing to pick
        check_distinct(self.steps, self.blocks, kind.uses_timesteps)
        if probe.folds < 2:
            raise ConfigError(f"--folds must be >= 2 (one fold is held out, the others train), got {probe.folds}")
        self.cfg, self.device, self.out_dir, self.probe, self.log = cfg, device, out_dir, probe, log
        self.ensemble_settings = EnsembleSettings.from_config(cfg)
        self.deadline = time.time() + 60 * budget_minutes if budget_minutes is not None else None
        size = cfg["dim"][0]
        self.train_set = ImageLabelDataset(cfg["training_path"], resolution=size, num_images=cfg["training_number"],
                                           number_class=cfg["number_class"], ignore_label=cfg["ignore_label"],
                                           masks_dir=cfg["training_masks_path"], palette=cfg["palette"],
                                           count_key="training_number")
        n = len(self.train_set)
        if probe.folds > n:
            raise ConfigError(f"--folds {probe.folds} is more than the {n} training images; use at most {n}")
        # One backbone for the whole grid: its layers are every cell, step-major as a run extracts them.
        self.backbone = kind.from_config({**cfg, "steps": self.steps, "blocks": self.blocks}, flags, self.device, log)
        self.image_fold = fold_assignment(n, probe.folds, cfg["seed"])
        # The fold of each store unit (a training window): its image's, so overlapping windows stay together.
        self.fold = fold_assignment(n, probe.folds, cfg["seed"], self.train_set.windows_per_image())
        self.settings = {"config": {k: v for k, v in cfg.items() if k not in (
            "exp_dir", "testing_path", "testing_masks_path", "testing_number", "device", "steps", "blocks", "dim",
            "model_num")}, "model_flags": flags, "grid": {"steps": self.steps, "blocks": self.blocks},
            "probe": {k: v for k, v in asdict(probe).items() if k != "min_gain"}}
        self.scores = self._load_scores()

    # -- resumable scores ----------------------------------------------------------------------
    def _load_scores(self) -> dict[str, Score]:
        path = os.path.join(self.out_dir, SCORES_FILE)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            saved = json.load(f)
        if saved.get("settings") != json.loads(json.dumps(self.settings)):
            raise ConfigError(f"{path} holds scores of another config, grid or probe; choose another --out "
                              f"(or delete that folder to start over)")
        self.log(f"resuming: {len(saved['scores'])} candidates already scored in {path}")
        return {k: Score(**v) for k, v in saved["scores"].items()}

    def _save_scores(self) -> None:
        write_json_atomic(os.path.join(self.out_dir, SCORES_FILE),
                          {"settings": self.settings, "scores": {k: asdict(s) for k, s in self.scores.items()}})

    # -- features ------------------------------------------------------------------------------
    def extract(self) -> None:
        """The activations of every grid cell for the training images (one U-Net pass per image and step).

        The probes train on the original images: augmented copies (a training variant) would multiply
        this cost without saying anything about which features to use.
        """
        c, n, size = self.cfg, self.train_set.window_count(), self.cfg["dim"][0]
        excluded = EXCLUDED if c["ignore_label"] is None else c["ignore_label"]
        self.store, self.labels, index, labels = None, [], [], []
        # The trainer's units: every working-size window of every training image (ddpmseg.data.windows).
        windows = tqdm(self.train_set.windows(), total=n, desc="candidate features (training images)", unit="img",
                       dynamic_ncols=True)
        for i, (_, image, window_label) in enumerate(windows):
            acts = self.backbone(image[None].to(self.device))
            if self.store is None:
                self.store = FeatureStore(n, [tuple(a.shape[1:]) for a in acts], (size, size))
            self.store.put(i, acts)
            self.labels.append(window_label)
            # The training labels as the trainer makes them: small regions and ignored pixels excluded.
            label, _ = drop_small_regions(window_label.numpy(), c["ignore_label"], c["min_region_pixels"],
                                          fill=EXCLUDED)
            flat = torch.from_numpy(label.reshape(-1).astype("int64"))
            keep = ((flat != EXCLUDED) & (flat != excluded)).nonzero().flatten()
            index.append(keep + i * size * size)
            labels.append(flat[keep])
        self.pixels = LabelledPixels(torch.cat(index), torch.cat(labels), (size, size))
        self.log(f"candidate store: {n} training images x {len(self.steps)} steps x {len(self.blocks)} blocks, "
                 f"{self.store.nbytes / 2**20:.1f} MiB (float16, native resolution)")

    def step_rows(self) -> list[int | None]:
        """The grid's steps; [None] (one row of blocks) for a backbone without timesteps."""
        return self.steps or [None]

    def layers_of(self, steps, blocks) -> list[int]:
        """Store layers of steps x blocks in the extractor's order (step-major, then block)."""
        nb, rows = len(self.blocks), self.step_rows()
        return [rows.index(t) * nb + self.blocks.index(b) for t in sorted(steps) or [None] for b in sorted(blocks)]

    # -- scoring -------------------------------------------------------------------------------
    def score(self, steps, blocks) -> Score:
        """CV mIoU of the probe on steps x blocks (cached; raises BudgetSpent when time is up)."""
        key = candidate_key(steps, blocks)
        if key in self.scores:
            return self.scores[key]
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetSpent
        c, p = self.cfg, self.probe
        sub = LayerSubset(self.store, self.layers_of(steps, blocks))
        fold_mious = []
        for f in range(p.folds):
            # The fold's seed as in crossfit: every candidate trains from the same streams in fold f.
            probe_settings = replace(self.ensemble_settings, seed=stream_seed("fold_seed", c["seed"], f),
                                     early_stop_patience=p.iterations)
            with tempfile.TemporaryDirectory(dir=self.out_dir) as tmp:
                train_ensemble(sub, pixels_outside_fold(self.pixels, self.fold, f), probe_settings, tmp,
                               list(range(p.members)), device=str(self.device), log=lambda msg: None,
                               max_steps=p.iterations, progress=False)
                ens = load_ensemble(tmp, p.members, sub.dim, c["number_class"], str(self.device))
            iou = IoUAccumulator(c["number_class"], c["ignore_label"])
            for i in self.fold.eq(f).nonzero().flatten().tolist():
                votes = Votes.of(ensemble_logits(ens, sub.native(i), sub.out_hw))
                iou.update(votes.mask(c["voting"]).reshape(sub.out_hw).cpu(), self.labels[i])
            fold_mious.append(iou.result()["miou"])
        folds = torch.tensor(fold_mious, dtype=torch.float64)
        result = Score(sorted(steps), sorted(blocks), float(folds.mean()), float(folds.std()), fold_mious)
        self.scores[key] = result
        self._save_scores()
        return result

    def search(self) -> tuple[list[Score], list[Score], str]:
        """(single-cell scores, the greedy path from the best cell, why the search stopped)."""
        cells = [(t, b) for t in self.step_rows() for b in self.blocks]
        singles, path = [], []
        try:
            for t, b in tqdm(cells, desc="single cells", unit="cell", dynamic_ncols=True):
                singles.append(self.score([] if t is None else [t], [b]))
            current = max(singles, key=lambda s: s.miou)
            path.append(current)
            round_no = 0
            while True:
                moves = [(current.steps + [t], current.blocks) for t in self.steps if t not in current.steps]
                moves += [(current.steps, current.blocks + [b]) for b in self.blocks if b not in current.blocks]
                if not moves:
                    return singles, path, "every step and block of the grid is in the selection"
                round_no += 1
                tried = [self.score(s, b) for s, b in tqdm(moves, desc=f"greedy round {round_no}", unit="candidate",
                                                          dynamic_ncols=True)]
                best = max(tried, key=lambda s: s.miou)
                if best.miou - current.miou <= self.probe.min_gain:
                    return singles, path, (f"no added step or block raised CV mIoU by more than "
                                           f"{100 * self.probe.min_gain:.2f} points")
                current = best
                path.append(current)
        except BudgetSpent:
            if not path and singles:  # stopped among the single cells: the best one scored so far
                path.append(max(singles, key=lambda s: s.miou))
            return singles, path, "the time budget (--budget_minutes) ran out"

    def config_protocol(self) -> Score | None:
        """The score of the input config's own steps x blocks, to compare the selection with; None when
        they are not all in the grid or the budget is spent."""
        steps, blocks = self.cfg["steps"], self.cfg["blocks"]
        if not set(steps) <= set(self.steps) or not set(blocks) <= set(self.blocks):
            return None
        try:
            return self.score(steps, blocks)
        except BudgetSpent:
            return None

    def write_outputs(self, singles: list[Score], path: list[Score], stopped: str,
                      seconds: float) -> tuple[dict | None, Score | None]:
        """selection.json, selection_heatmap.png and selected.json; returns the selected config (None when
        nothing was scored) and the score of the config's own steps x blocks (``config_protocol``)."""
        protocol = self.config_protocol()
        chosen = path[-1] if path else None
        size = self.cfg["dim"][0]
        selected = None
        if chosen is not None:
            dim = sum(self.store.layer_shapes[i][0] for i in self.layers_of(chosen.steps, chosen.blocks))
            selected = {**self.cfg, "steps": chosen.steps, "blocks": chosen.blocks, "dim": [size, size, dim]}
        cells = {((s.steps or [None])[0], s.blocks[0]): s.miou for s in singles}
        marked = {(t, b) for t in chosen.steps or [None] for b in chosen.blocks} if chosen else set()
        write_png_atomic(os.path.join(self.out_dir, "selection_heatmap.png"),
                         heatmap(cells, self.step_rows(), self.blocks, marked))
        write_json_atomic(os.path.join(self.out_dir, "selection.json"), {
            "grid": {"steps": self.steps, "blocks": self.blocks},
            "training_images": [os.path.basename(p) for p in self.train_set.image_paths],
            "fold_of_image": self.image_fold.tolist(), "probe": asdict(self.probe),
            "selected": None if chosen is None else {**asdict(chosen), "dim": selected["dim"]},
            "stopped": stopped, "seconds": seconds,
            "config_protocol": None if protocol is None else asdict(protocol),
            "cells": [asdict(s) for s in singles], "greedy_path": [asdict(s) for s in path],
            "all_scores": [asdict(s) for s in self.scores.values()]})
        if selected is not None:
            save_config(selected, os.path.join(self.out_dir, "selected.json"))
        return selected, protocol
