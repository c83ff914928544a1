"""Which diffusion steps and decoder blocks to use, chosen by the labelled training images alone.

The activations of every (step, block) cell of a candidate grid are extracted once, for the
training images only, into the native-resolution float16 FeatureStore. A cell, or a combination
``steps x blocks`` (what a config can express), is scored by k-fold cross-validated mIoU of a
cheap probe: a small ensemble (few members, a fixed number of iterations) trained by
``train_ensemble`` on the other folds' pixels and voting on the held-out fold's images as evaluation
does. The input config's own steps x blocks are scored first (the grid always holds them); then every
single cell (the heatmap); then a greedy forward search starts from the best cell and adds, one at a
time, the step or block that raises the score most, while that addition ``improves`` on the current
choice. The search's result replaces the config's own protocol only if it ``improves`` on it too, so
the selection never returns less than it was given, by the same folds. Then (``confirm``) the two are
scored once more with the full training the selected config will get (its own number of members, to
early stopping) on the same folds, and the search's result is kept only if it ``improves`` there as
well: the cheap probe ranks feature sets as a short training sees them, and a short training favours
small ones. The test set is never opened.
Scores are saved after each probe, so an interrupted or budget-limited search continues where it
stopped.

Noise draws (config "noise_draws") are not a dimension of the search: with ``--noise_draws K ...`` the
chosen steps x blocks are scored once more for each K (the training images extracted again with K
draws, those layers only), and the config's own K is replaced by the best of them only when that
``improves`` on it, the rule a greedy step must pass (K draws cost K forwards).
"""
from __future__ import annotations

import json
import math
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
from ..data.folders import ImageLabelDataset, trained_pixels
from ..features.registry import backbone_class
from ..common.metrics import IoUAccumulator
from .predict import Votes, ensemble_logits
from ..common.report import write_png_atomic
from ..common.seeding import stream_seed
from .selection_heatmap import heatmap
from ..features.store import FeatureStore
from .train import EnsembleSettings, LabelledPixels, load_ensemble, train_ensemble

SCORES_FILE = "scores.json"


@dataclass
class ProbeSettings:
    """How one candidate is scored; defaults are the cheap probe's."""
    folds: int = 4  # k of the k-fold split of the training images
    # Independent k-fold splits, each a full round of probes: the paired gain is then judged on
    # repeats x folds scores. 1 keeps the cost of one split; 2 or more make the pick move less
    # between runs, at that many times the probe cost.
    repeats: int = 1
    members: int = 2  # a small ensemble: two members already vote, at a fifth of the full cost
    iterations: int = 600  # fixed budget per member (no early stopping), the same for every candidate
    min_gain: float = 0.002  # a greedy step must raise CV mIoU by more than this (0.2 points) to be taken
    # Check a search result that beats the config's own protocol with the full training (the config's
    # model_num members, trained to early stopping) before it replaces that protocol. On celebamask64 the
    # probe's picks beat the hand-set protocol in the probe's CV by 3-5 points and lost to it by 1.3-1.8
    # points trained in full (docs/selection.md); the check costs two full trainings per fold.
    confirm: bool = True


@dataclass
class Score:
    """The cross-validated mIoU of one candidate (steps x blocks)."""
    steps: list[int]
    blocks: list[int]
    miou: float  # mean over folds
    miou_std: float  # sample standard deviation over folds: the fold spread
    fold_mious: list[float]  # one per fold, split-major (split 0's folds first), fold order


def paired_gain(candidate: Score, current: Score) -> tuple[float, float]:
    """(mean, standard error) of the candidate's per-fold gain over the current choice, fold by fold."""
    gains = torch.tensor(candidate.fold_mious, dtype=torch.float64) - torch.tensor(current.fold_mious,
                                                                                   dtype=torch.float64)
    return float(gains.mean()), float(gains.std() / math.sqrt(len(gains)))


def improves(candidate: Score, current: Score, min_gain: float) -> bool:
    """Whether the candidate should replace the current choice: its mean paired gain exceeds both
    ``min_gain`` and its own standard error.

    Paired, because two candidates scored on the same folds share each fold's difficulty: the folds of
    one candidate spread by 3-4 mIoU points on celebamask64, far more than the differences searched for,
    and most of that spread cancels in the per-fold difference. The standard error, because a mean
    gain below it is what fold noise alone gives about one time in three (t < 1): the search then
    stops instead of following noise. ``min_gain`` still rules out gains too small to matter."""
    mean, standard_error = paired_gain(candidate, current)
    return mean > min_gain and mean > standard_error


def candidate_key(steps, blocks, noise_draws: int | None = None, full_members: int | None = None) -> str:
    """"50,250/5,8"; a candidate scored with another number of noise draws than the config's: "50,250/5,8 x4
    draws"; scored by the full training of that many members: "50,250/5,8 full training, 10 members"."""
    key = f"{','.join(map(str, sorted(steps)))}/{','.join(map(str, sorted(blocks)))}"
    if noise_draws is not None:
        key = f"{key} x{noise_draws} draws"
    return key if full_members is None else f"{key} full training, {full_members} members"


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


def check_noise_draws(draws: list[int] | None, uses_timesteps: bool, model_type: str) -> None:
    """--noise_draws: distinct counts >= 1, for a backbone that adds noise."""
    if draws is None:
        return
    if not uses_timesteps:
        raise ConfigError(f"model_type '{model_type}' adds no noise, so there are no noise draws to compare: "
                          f"drop --noise_draws")
    if not draws or min(draws) < 1 or len(set(draws)) != len(draws):
        raise ConfigError(f"--noise_draws must list distinct counts >= 1, got {draws}")


def check_distinct(steps: list[int], blocks: list[int], uses_timesteps: bool) -> None:
    """The grid's blocks (and steps, for a backbone with timesteps) are distinct, and there are some."""
    for name, values in (("steps", steps), ("blocks", blocks)) if uses_timesteps else (("blocks", blocks),):
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"--{name} must list distinct values, got {values}")


class Selection:
    """The candidate store of one config's training images, and the scores of its probes."""

    def __init__(self, cfg: dict, flags: dict, device: torch.device, out_dir: str, steps: list[int] | None,
                 blocks: list[int] | None, probe: ProbeSettings, budget_minutes: float | None = None,
                 log: Callable[[str], None] = print, noise_draws: list[int] | None = None):
        kind = backbone_class(cfg["model_type"])
        self.steps, self.blocks = kind.candidate_grid(cfg, flags, steps, blocks)  # ConfigError: nothing to pick
        check_distinct(self.steps, self.blocks, kind.uses_timesteps)
        # The config's own steps x blocks join the grid, so the selection can always fall back on them.
        self.own = (sorted(cfg["steps"]) if kind.uses_timesteps else [], sorted(cfg["blocks"]))
        if not (set(self.own[0]) <= set(self.steps) and set(self.own[1]) <= set(self.blocks)):
            self.steps, self.blocks = kind.candidate_grid(cfg, flags, sorted(set(self.steps) | set(self.own[0])),
                                                          sorted(set(self.blocks) | set(self.own[1])))
            log(f"the grid also holds the config's own steps {self.own[0]} x blocks {self.own[1]}, the fallback")
        check_noise_draws(noise_draws, kind.uses_timesteps, cfg["model_type"])
        self.kind, self.flags, self.noise_draws = kind, flags, noise_draws
        self.noise_draw_scores: dict | None = None  # selection.json's "noise_draws", once write_outputs made it
        if probe.folds < 2:
            raise ConfigError(f"--folds must be >= 2 (one fold is held out, the others train), got {probe.folds}")
        if probe.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1 (the number of k-fold splits), got {probe.repeats}")
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
        self.image_folds = [fold_assignment(n, probe.folds, cfg["seed"], split=r) for r in range(probe.repeats)]
        # The fold of each store unit (a training window): its image's, so overlapping windows stay together.
        self.folds = [fold_assignment(n, probe.folds, cfg["seed"], self.train_set.windows_per_image(), split=r)
                      for r in range(probe.repeats)]
        self.settings = {"config": {k: v for k, v in cfg.items() if k not in (
            "exp_dir", "testing_path", "testing_masks_path", "testing_number", "device", "steps", "blocks", "dim",
            "model_num")}, "model_flags": flags, "grid": {"steps": self.steps, "blocks": self.blocks},
            "probe": {k: v for k, v in asdict(probe).items() if k not in ("min_gain", "confirm")}}
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
        self.labels, index, labels = [], [], []
        self.store = self.training_store(self.backbone, "candidate features (training images)")
        for i, (_, _, window_label) in enumerate(self.train_set.windows()):
            self.labels.append(window_label)
            # The training labels as the trainer makes them: small regions and ignored pixels excluded.
            flat, keep, _ = trained_pixels(window_label.numpy(), c["ignore_label"], c["min_region_pixels"])
            index.append(torch.from_numpy(keep + i * size * size))
            labels.append(torch.from_numpy(flat[keep]))
        self.pixels = LabelledPixels(torch.cat(index), torch.cat(labels), (size, size))
        self.log(f"candidate store: {n} training images x {len(self.steps)} steps x {len(self.blocks)} blocks, "
                 f"{self.store.nbytes / 2**20:.1f} MiB (float16, native resolution)")

    def training_store(self, backbone, desc: str) -> FeatureStore:
        """The maps of ``backbone`` for every training window: the trainer's units, every working-size
        window of every training image (ddpmseg.data.windows)."""
        store, n, size = None, self.train_set.window_count(), self.cfg["dim"][0]
        for i, (_, image, _) in enumerate(tqdm(self.train_set.windows(), total=n, desc=desc, unit="img",
                                               dynamic_ncols=True)):
            acts = backbone(image[None].to(self.device))
            if store is None:
                store = FeatureStore(n, [tuple(a.shape[1:]) for a in acts], (size, size))
            store.put(i, acts)
        return store

    def step_rows(self) -> list[int | None]:
        """The grid's steps; [None] (one row of blocks) for a backbone without timesteps."""
        return self.steps or [None]

    def layers_of(self, steps, blocks) -> list[int]:
        """Store layers of steps x blocks in the extractor's order (step-major, then block)."""
        nb, rows = len(self.blocks), self.step_rows()
        return [rows.index(t) * nb + self.blocks.index(b) for t in sorted(steps) or [None] for b in sorted(blocks)]

    # -- scoring -------------------------------------------------------------------------------
    def score(self, steps, blocks, noise_draws: int | None = None, full: bool = False) -> Score:
        """CV mIoU of the probe on steps x blocks (cached; raises BudgetSpent when time is up), with the
        config's noise draws, or ``noise_draws`` (those layers extracted again with that many). ``full``:
        trained as the selected config would be (its model_num members, its own early stopping) instead
        of by the probe."""
        c, p = self.cfg, self.probe
        other_draws = noise_draws is not None and noise_draws != c["noise_draws"]
        members = c["model_num"] if full else p.members
        key = candidate_key(steps, blocks, noise_draws if other_draws else None, members if full else None)
        if key in self.scores:
            return self.scores[key]
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetSpent
        if other_draws:
            backbone = self.kind.from_config({**c, "steps": sorted(steps), "blocks": sorted(blocks),
                                              "noise_draws": noise_draws}, self.flags, self.device, self.log)
            store = self.training_store(backbone, f"features with {noise_draws} noise draws")
            sub = LayerSubset(store, list(range(len(store.layer_shapes))))  # exactly steps x blocks, in order
        else:
            sub = LayerSubset(self.store, self.layers_of(steps, blocks))
        fold_mious = []
        for j in range(p.repeats * p.folds):
            fold, f = self.folds[j // p.folds], j % p.folds
            # Fold j's seed as in crossfit (j = f in split 0): every candidate trains from the same streams
            # in fold j, so candidates differ by their features only.
            fold_settings = replace(self.ensemble_settings, seed=stream_seed("fold_seed", c["seed"], j))
            if not full:  # a fixed number of iterations, no early stopping
                fold_settings = replace(fold_settings, early_stop_patience=p.iterations)
            with tempfile.TemporaryDirectory(dir=self.out_dir) as tmp:
                train_ensemble(sub, pixels_outside_fold(self.pixels, fold, f), fold_settings, tmp,
                               list(range(members)), device=str(self.device), log=lambda msg: None,
                               max_steps=None if full else p.iterations, progress=False)
                ens = load_ensemble(tmp, members, sub.dim, c["number_class"], str(self.device))
            iou = IoUAccumulator(c["number_class"], c["ignore_label"])
            for i in fold.eq(f).nonzero().flatten().tolist():
                votes = Votes.of(ensemble_logits(ens, sub.native(i), sub.out_hw))
                iou.update(votes.mask(c["voting"]).reshape(sub.out_hw).cpu(), self.labels[i])
            fold_mious.append(iou.result()["miou"])
        folds = torch.tensor(fold_mious, dtype=torch.float64)
        result = Score(sorted(steps), sorted(blocks), float(folds.mean()), float(folds.std()), fold_mious)
        self.scores[key] = result
        self._save_scores()
        return result

    def search(self) -> "SearchResult":
        """The config's own steps x blocks, every single cell, then the greedy path from the best cell."""
        own, singles, path = None, [], []
        cells = [(t, b) for t in self.step_rows() for b in self.blocks]
        try:
            own = self.score(*self.own)
            for t, b in tqdm(cells, desc="single cells", unit="cell", dynamic_ncols=True):
                singles.append(self.score([] if t is None else [t], [b]))
            current = max(singles, key=lambda s: s.miou)
            path.append(current)
            round_no = 0
            while True:
                moves = [(current.steps + [t], current.blocks) for t in self.steps if t not in current.steps]
                moves += [(current.steps, current.blocks + [b]) for b in self.blocks if b not in current.blocks]
                if not moves:
                    return SearchResult(own, singles, path, "every step and block of the grid is in the selection",
                                        complete=True, min_gain=self.probe.min_gain)
                round_no += 1
                tried = [self.score(s, b) for s, b in tqdm(moves, desc=f"greedy round {round_no}", unit="candidate",
                                                          dynamic_ncols=True)]
                best = max(tried, key=lambda s: s.miou)
                if not improves(best, current, self.probe.min_gain):
                    return SearchResult(own, singles, path, (
                        f"no added step or block raised CV mIoU by more than {100 * self.probe.min_gain:.2f} points "
                        f"and its paired standard error"), complete=True, min_gain=self.probe.min_gain)
                current = best
                path.append(current)
        except BudgetSpent:
            if not path and singles:  # stopped among the single cells: the best one scored so far
                path.append(max(singles, key=lambda s: s.miou))
            return SearchResult(own, singles, path, "the time budget (--budget_minutes) ran out", complete=False,
                                min_gain=self.probe.min_gain)

    def confirm(self, result: "SearchResult") -> "SearchResult":
        """``result`` with the full-training scores of the config's own protocol and of the search's end,
        when the probe has the search's end replace the config's own (with ``ProbeSettings.confirm``);
        ``chosen`` then keeps the end only if it ``improves`` on the config's own there too. A budget that
        runs out first leaves the config's own chosen and the search unfinished."""
        if not self.probe.confirm or result.chosen is result.own or result.own is None:
            return result
        confirmed = replace(result, confirmation=Confirmation(self.cfg["model_num"]))
        end = result.path[-1]
        try:
            confirmed.confirmation.own = self.score(result.own.steps, result.own.blocks, full=True)
            confirmed.confirmation.search = self.score(end.steps, end.blocks, full=True)
        except BudgetSpent:
            confirmed.complete = False
            confirmed.stopped = "the time budget (--budget_minutes) ran out before the check by full training"
        return confirmed

    def compare_noise_draws(self, chosen: Score) -> tuple[int, dict[int, Score]]:
        """(the noise draws the selected config keeps, the score of ``chosen``'s steps x blocks for each
        count of --noise_draws and the config's own). The config's count stays unless another ``improves``
        on it; counts the budget leaves no time for are not scored."""
        own = self.cfg["noise_draws"]
        scores = {own: chosen}
        for k in self.noise_draws or []:
            if k in scores:
                continue
            try:
                scores[k] = self.score(chosen.steps, chosen.blocks, k)
            except BudgetSpent:
                break
        best = max(scores, key=lambda k: scores[k].miou)
        return (best if improves(scores[best], chosen, self.probe.min_gain) else own), scores

    def write_outputs(self, result: "SearchResult", seconds: float) -> dict | None:
        """selection.json, selection_heatmap.png and selected.json; returns the selected config (None when
        nothing was scored). With --noise_draws the selected config's noise_draws is the one
        ``compare_noise_draws`` keeps."""
        chosen = result.chosen
        selected, draws = None, None
        if chosen is not None:
            dim = sum(self.store.layer_shapes[i][0] for i in self.layers_of(chosen.steps, chosen.blocks))
            selected = {**self.cfg, "steps": chosen.steps, "blocks": chosen.blocks, "dim": [*self.cfg["dim"][:2], dim],
                        "selection": {"complete": result.complete, "fallback": result.fallback,
                                      "report": os.path.abspath(os.path.join(self.out_dir, "selection.json"))}}
            if self.noise_draws is not None:
                kept, by_count = self.compare_noise_draws(chosen)
                selected["noise_draws"] = kept
                draws = {"kept": kept, "scores": {str(k): asdict(v) for k, v in sorted(by_count.items())}}
        self.noise_draw_scores = draws
        cells = {((s.steps or [None])[0], s.blocks[0]): s.miou for s in result.singles}
        marked = {(t, b) for t in chosen.steps or [None] for b in chosen.blocks} if chosen else set()
        write_png_atomic(os.path.join(self.out_dir, "selection_heatmap.png"),
                         heatmap(cells, self.step_rows(), self.blocks, marked))
        end = result.path[-1] if result.path else None
        gain = paired_gain(end, result.own) if end is not None and result.own is not None else None
        write_json_atomic(os.path.join(self.out_dir, "selection.json"), {
            "grid": {"steps": self.steps, "blocks": self.blocks},
            "training_images": [os.path.basename(p) for p in self.train_set.image_paths],
            "fold_of_image": self.image_folds[0].tolist(), "fold_splits": [f.tolist() for f in self.image_folds],
            "probe": asdict(self.probe),
            "selected": None if chosen is None else {**asdict(chosen), "dim": selected["dim"]},
            "complete": result.complete, "fallback": result.fallback, "stopped": result.stopped,
            "seconds": seconds, "config_protocol": None if result.own is None else asdict(result.own),
            "noise_draws": draws,
            "search_gain_over_config": None if gain is None else {"mean": gain[0], "standard_error": gain[1]},
            "full_training_check": confirmation_report(result.confirmation, result.min_gain),
            "cells": [asdict(s) for s in result.singles], "greedy_path": [asdict(s) for s in result.path],
            "all_scores": [asdict(s) for s in self.scores.values()]})
        if selected is not None:
            save_config(selected, os.path.join(self.out_dir, "selected.json"))
        return selected


def confirmation_report(check: "Confirmation | None", min_gain: float) -> dict | None:
    """selection.json's "full_training_check": both scores, the paired gain and whether it passed."""
    if check is None:
        return None
    both = check.own is not None and check.search is not None
    gain = paired_gain(check.search, check.own) if both else None
    return {"members": check.members, "config_protocol": None if check.own is None else asdict(check.own),
            "search": None if check.search is None else asdict(check.search),
            "gain": None if gain is None else {"mean": gain[0], "standard_error": gain[1]},
            "passed": check.passed(min_gain)}


@dataclass
class Confirmation:
    """The config's own protocol and the search's end, scored by the full training on the same folds."""
    members: int  # the config's model_num
    own: Score | None = None  # None: the budget ran out first
    search: Score | None = None

    def passed(self, min_gain: float) -> bool:
        """Whether the search's end ``improves`` on the config's own protocol by the full training too."""
        return self.own is not None and self.search is not None and improves(self.search, self.own, min_gain)


@dataclass
class SearchResult:
    """What ``Selection.search`` scored, and which steps x blocks it chooses."""
    own: Score | None  # the config's own steps x blocks; None when the budget ran out before its probes
    singles: list[Score]  # every single cell scored, grid order
    path: list[Score]  # the greedy path from the best single cell
    stopped: str  # why the search stopped
    complete: bool  # False when the budget stopped it: a rerun continues it
    min_gain: float
    confirmation: Confirmation | None = None  # set by Selection.confirm

    @property
    def probe_choice(self) -> Score | None:
        """The search's end if it ``improves`` on the config's own protocol in the probe's CV, else that protocol."""
        if self.own is None or (self.path and improves(self.path[-1], self.own, self.min_gain)):
            return self.path[-1] if self.path else None
        return self.own

    @property
    def chosen(self) -> Score | None:
        """``probe_choice``, unless a check by full training (``confirmation``) did not pass: then the
        config's own protocol."""
        if self.confirmation is not None and not self.confirmation.passed(self.min_gain):
            return self.own
        return self.probe_choice

    @property
    def fallback(self) -> bool:
        """Whether the config's own protocol was kept over a different search result."""
        return bool(self.path) and self.own is not None and self.chosen is self.own and \
            candidate_key(self.path[-1].steps, self.path[-1].blocks) != candidate_key(self.own.steps, self.own.blocks)
