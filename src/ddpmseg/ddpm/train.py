"""Train a guided-diffusion DDPM from scratch on folders of unlabelled images.

The recipe of guided-diffusion's ``image_train.py`` (hybrid loss, AdamW, EMA, uniform or
loss-aware timesteps, random flips, centre crops) with what a long job needs: checkpoints in
the original naming (``model%06d.pt``, ``ema_<rate>_%06d.pt``, ``opt%06d.pt``) with a
``<checkpoint>.json`` of flags beside the model and EMA files, so the segmentation pipeline
loads them like any official checkpoint; atomic writes; exact resume from the latest one;
sample grids; a CSV of losses; and ``torchrun`` data parallelism.

Every random choice of step ``s`` (images, flips, crops, timesteps, noise) is drawn for the
*global* batch from streams of (seed, s), and each rank takes its slice: so N processes with
batch B/N each compute the gradient of the single-process run with batch B, and a resumed
run continues exactly where it stopped. One difference from the original on purpose: the
number in a checkpoint name is the number of updates it has seen (``model000000.pt`` is the
initialisation), where the original saved after the first update under 0 and repeated one
step on resume.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from guided_diffusion.checkpoint import check_state_dict, read_state_dict
from guided_diffusion.resample import SCHEDULE_SAMPLERS, LossAwareSampler, create_named_schedule_sampler
from guided_diffusion.script_util import create_model_and_diffusion, merged_flags, unknown_flags

from ..common.atomic import torch_save_atomic, write_json_atomic, write_text_atomic
from ..common.config import ConfigError
from ..data.folders import list_image_files, load_rgb
from ..common.distributed import World, all_reduce_sum, barrier, init_world
from ..common.errors import DataError
from ..common.numerics import NumericalError
from ..common.precision import autocast, check_precision, check_precision_device, grad_scaler, weight_dtype
from ..common.paths import probe_output_dir, refuse_file
from ..common.report import image_grid, to_uint8_images, write_png_atomic
from ..common.runlock import run_lock
from ..common.safeload import load_plain
from .sampling import sample_batch, sampling_diffusion
from ..common.seeding import stream_generator, stream_rng, stream_seed

# Options a resumed run may change: where it runs, how long, and what it reports. Any other change
# would continue the trajectory of one configuration with another, so resuming refuses it.
RESUME_MAY_CHANGE = ("log_dir", "max_steps", "log_interval", "save_interval", "sample_interval",
                     "sample_respacing", "grid_size", "device", "num_workers")


@dataclass
class DDPMTrainOptions:
    """Everything a DDPM training run depends on; saved as ``train_config.json`` in the run."""

    data_dirs: list[str]
    log_dir: str
    # guided-diffusion flags (image_size, num_channels, ..., learn_sigma, noise_schedule).
    model_flags: dict[str, Any] = field(default_factory=dict)
    # Global batch, split evenly over the ranks (guided-diffusion's was per rank).
    batch_size: int = 16
    lr: float = 1e-4  # image_train.py default
    weight_decay: float = 0.0
    # Comma-separated EMA rates; one ema_<rate>_*.pt file each (image_train.py default 0.9999).
    ema_rate: str = "0.9999"
    # Linear decay of the learning rate to 0 over this many updates; 0 = constant (original).
    lr_anneal_steps: int = 0
    # Stop after this many updates in total (resume included); 0 = at lr_anneal_steps, or never.
    max_steps: int = 0
    log_interval: int = 10
    save_interval: int = 10000
    # A sample grid from the first EMA every this many updates (0 = only at the end).
    sample_interval: int = 0
    # Respacing of the grid sampler: DDIM with 25 steps is cheap and shows what the model learnt.
    sample_respacing: str = "ddim25"
    grid_size: int = 16
    schedule_sampler: str = "uniform"
    # Mixed precision on CUDA, or fp64 (ddpmseg.common.precision); checkpoints are always float32 (the official format).
    precision: str = "fp32"
    random_flip: bool = True
    random_crop: bool = False
    seed: int = 0
    device: str = "auto"
    # DataLoader worker processes decoding images (0 = in the training process).
    num_workers: int = 0

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        if not self.data_dirs:
            raise ConfigError("give at least one folder of training images (--data_dir)")
        positive = ("batch_size", "log_interval", "save_interval", "grid_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "lr_anneal_steps", "sample_interval", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule_sampler not in SCHEDULE_SAMPLERS:
            raise ConfigError(f"schedule_sampler {self.schedule_sampler!r} is not one of {', '.join(SCHEDULE_SAMPLERS)}")
        check_precision(self.precision)
        try:
            rates = ema_rates(self.ema_rate)
        except ValueError:
            rates = []
        if not rates or not all(0 < r < 1 for r in rates):
            raise ConfigError(f"ema_rate {self.ema_rate!r} must be comma-separated numbers in (0, 1), e.g. 0.9999")
        unknown = unknown_flags(self.model_flags)
        if unknown:
            raise ConfigError(f"unknown model flags {unknown}")

    def stop_step(self) -> int:
        """The update count at which training ends (0 = never)."""
        return self.max_steps or self.lr_anneal_steps


def ema_rates(spec: str) -> list[float]:
    return [float(r) for r in spec.split(",") if r.strip()]


# ----------------------------------------------------------------------------- data
def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's centre crop: BOX-halve while the short side is >= 2*size, BICUBIC
    resize so the short side is ``size``, then crop the centre. Returns uint8 [size, size, 3]."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def random_crop_arr(img: Image.Image, size: int, rng: np.random.Generator,
                    min_crop_frac: float = 0.8, max_crop_frac: float = 1.0) -> np.ndarray:
    """guided-diffusion's random crop: short side resized to a random length in
    [size/max_frac, size/min_frac], then a random size x size window."""
    short = int(rng.integers(math.ceil(size / max_crop_frac), math.ceil(size / min_crop_frac) + 1))
    while min(img.size) >= 2 * short:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = short / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = int(rng.integers(arr.shape[0] - size + 1))
    left = int(rng.integers(arr.shape[1] - size + 1))
    return arr[top:top + size, left:left + size]


class UnlabelledImages(torch.utils.data.Dataset):
    """Every image under the given folders (recursively, guided-diffusion's rule), cropped to
    ``image_size``. Items are requested as (index, crop seed, mirror) and returned as uint8 [3,S,S]."""

    def __init__(self, data_dirs: list[str], image_size: int, random_crop: bool = False):
        self.paths: list[str] = []
        for d in data_dirs:
            refuse_file(d, "--data_dir", DataError)
            if not os.path.isdir(d):
                raise DataError(f"image folder not found: {d} (relative paths are resolved from {os.getcwd()})")
            found = list_image_files(d)
            if not found:
                raise DataError(f"no images in {d}: files count when their name ends in .jpg, .jpeg, .png "
                                f"or .gif (any case), searched recursively")
            self.paths.extend(found)
        self.image_size = image_size
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int, bool]) -> torch.Tensor:
        index, crop_seed, mirror = item
        path = self.paths[index]
        try:
            img = load_rgb(path)  # as a viewer shows it: EXIF orientation, 16-bit, alpha over white
        except Exception as e:  # PIL raises many types for corrupt files
            raise DataError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); "
                            f"replace or remove it") from None
        if self.random_crop:
            arr = random_crop_arr(img, self.image_size, np.random.default_rng(crop_seed))
        else:
            arr = center_crop_arr(img, self.image_size)
        if mirror:
            arr = arr[:, ::-1]
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # a writable copy


@functools.lru_cache(maxsize=1)
def epoch_order(epoch: int, num_images: int, seed: int) -> torch.Tensor:
    """The seeded image permutation of ``epoch``; cached, since every step of the epoch slices it
    (a fresh randperm of a large dataset per step would cost more than loading the batch)."""
    return torch.randperm(num_images, generator=stream_generator("ddpm_data_order", seed, epoch))


def global_batch(step: int, num_images: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image indices and flip decisions of update ``step``'s global batch.

    Epochs are seeded permutations without replacement (the last incomplete batch is dropped,
    as with the original's drop_last), so the batch of a step never depends on the history.
    """
    epoch, position = divmod(step, num_images // batch_size)
    indices = epoch_order(epoch, num_images, seed)[position * batch_size:(position + 1) * batch_size]
    flips = torch.rand(batch_size, generator=stream_generator("ddpm_flip", seed, step)) < 0.5
    return indices, flips


class _StepBatches(torch.utils.data.Sampler):
    """This rank's (index, crop seed, mirror) lists for updates ``start``, ``start + 1``, ..."""

    def __init__(self, opts: DDPMTrainOptions, num_images: int, world: World, start: int, stop: int):
        self.opts, self.num_images, self.world, self.start, self.stop = opts, num_images, world, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        per_rank = self.opts.batch_size // self.world.size
        mine = slice(self.world.rank * per_rank, (self.world.rank + 1) * per_rank)
        while not self.stop or step < self.stop:
            indices, flips = global_batch(step, self.num_images, self.opts.batch_size, self.opts.seed)
            flips = flips & self.opts.random_flip
            positions = range(self.opts.batch_size)[mine]
            yield [(int(indices[p]), stream_seed("ddpm_crop", self.opts.seed, step, p), bool(flips[p]))
                   for p in positions]
            step += 1

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) if self.stop else 2**62


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_names(step: int, rates: list[float]) -> dict[str, str]:
    """The original's file names for update ``step``: model, one EMA per rate, optimizer."""
    names = {"model": f"model{step:06d}.pt", "opt": f"opt{step:06d}.pt"}
    names.update({f"ema_{r}": f"ema_{r}_{step:06d}.pt" for r in rates})
    return names


def latest_checkpoint(log_dir: str, rates: list[float]) -> int | None:
    """The largest step whose model, EMA and optimizer files all exist (a crash between
    writes leaves an incomplete set, which is skipped)."""
    if not os.path.isdir(log_dir):
        return None
    steps = sorted((int(m.group(1)) for f in os.listdir(log_dir) if (m := re.fullmatch(r"model(\d+)\.pt", f))),
                   reverse=True)
    for step in steps:
        if all(os.path.isfile(os.path.join(log_dir, n)) for n in checkpoint_names(step, rates).values()):
            return step
    return None


class DDPMTrainer:
    """One training run: ``DDPMTrainer(opts).run()``; see the module docstring."""

    def __init__(self, opts: DDPMTrainOptions, world: World | None = None,
                 log: Callable[[str], None] | None = None):
        opts.validate()
        self.opts = opts
        self.world = world or init_world(opts.device)
        if self.world.is_main:  # one prober: another rank's probe could remove the folder under this one's
            probe_output_dir(opts.log_dir, "--log_dir")
        if opts.batch_size % self.world.size:
            raise ConfigError(f"batch_size {opts.batch_size} must be divisible by the number of processes "
                              f"({self.world.size}): it is the global batch, split evenly")
        check_precision_device(opts.precision, self.world.device)
        self.flags = merged_flags(opts.model_flags)
        self.rates = ema_rates(opts.ema_rate)
        self.data = UnlabelledImages(opts.data_dirs, self.flags["image_size"], opts.random_crop)
        if len(self.data) < opts.batch_size:
            raise DataError(f"{len(self.data)} images in {opts.data_dirs} but batch_size is {opts.batch_size}: "
                            f"lower batch_size or add images")
        self._print = log or tqdm.write
        torch.manual_seed(stream_seed("ddpm_init", opts.seed))
        try:  # mixed precision is autocast's job here; use_fp16 only matters for inference
            self.model, self.diffusion = create_model_and_diffusion(**{**self.flags, "use_fp16": False})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model flags: {e}") from None
        self.dtype = weight_dtype(opts.precision)
        self.model.to(self.world.device, self.dtype)
        self.sampler = create_named_schedule_sampler(opts.schedule_sampler, self.diffusion)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.ema = [[p.detach().clone() for p in self.model.parameters()] for _ in self.rates]
        self.scaler = grad_scaler(opts.precision)
        self.step = 0

    # --- files --------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.world.is_main:
            self._print(msg)
            with open(os.path.join(self.opts.log_dir, "log.txt"), "a") as f:
                f.write(msg + "\n")

    def _check_same_run(self) -> None:
        """A log_dir holds one run: refuse to resume it with other flags or data."""
        path = os.path.join(self.opts.log_dir, "train_config.json")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            saved = json.load(f)
        now = json.loads(json.dumps(dataclasses.asdict(self.opts)))  # tuples and lists as the saved file has them
        saved_flags, flags = merged_flags(saved.get("model_flags", {})), self.flags
        differ = [f"model_flags.{k}: {saved_flags.get(k)!r} -> {flags.get(k)!r}"
                  for k in sorted(set(saved_flags) | set(flags)) if saved_flags.get(k) != flags.get(k)]
        differ += [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                   if k not in RESUME_MAY_CHANGE and k != "model_flags" and saved.get(k) != now.get(k)]
        if differ:
            raise ConfigError(f"{self.opts.log_dir} holds a run with other options (saved -> now: {'; '.join(differ)}); "
                              f"resume it with the saved options or choose a new --log_dir")

    def resume(self) -> None:
        """Load the latest complete checkpoint set of ``log_dir``, if any."""
        step = latest_checkpoint(self.opts.log_dir, self.rates)
        self._drop_progress_after(step or 0)
        if step is None:
            return
        path = {kind: os.path.join(self.opts.log_dir, name) for kind, name in checkpoint_names(step, self.rates).items()}
        state = read_state_dict(path["model"])
        check_state_dict(self.model, state, self.flags, source=path["model"])
        self.model.load_state_dict(state)
        for rate, ema in zip(self.rates, self.ema):
            ema_state = read_state_dict(path[f"ema_{rate}"])
            for p, (name, _) in zip(ema, self.model.named_parameters()):
                p.copy_(ema_state[name])
        self.opt.load_state_dict(load_plain(path["opt"], "an optimizer state", map_location=self.world.device))
        extra = os.path.join(self.opts.log_dir, f"train_state{step:06d}.pt")
        if os.path.isfile(extra):
            self._load_train_state(load_plain(extra, "a training state"))
        self.step = step
        self.log(f"resumed from {path['model']} (update {step})")

    def _drop_progress_after(self, step: int) -> None:
        """Drop the progress.csv rows of updates after ``step``: a killed run logged them, and the
        run resuming from ``step`` logs those updates again (one row per update, never two)."""
        path = os.path.join(self.opts.log_dir, "progress.csv")
        if not self.world.is_main or not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) < len(rows):
            text = io.StringIO()
            csv.writer(text).writerows(kept)  # the format DictWriter appends in
            write_text_atomic(path, text.getvalue())

    def _train_state(self) -> dict | None:
        state: dict[str, Any] = {}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if isinstance(self.sampler, LossAwareSampler):
            # As tensors: a weights_only load accepts them, not numpy arrays.
            state["sampler"] = {k: torch.from_numpy(v) for k, v in vars(self.sampler).items()
                                if isinstance(v, np.ndarray)}
        return state or None

    def _load_train_state(self, state: dict) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        for k, v in state.get("sampler", {}).items():
            setattr(self.sampler, k, v.numpy())

    def save(self) -> None:
        """Write this step's checkpoint set (rank 0), the model file last: its presence is
        what ``latest_checkpoint`` looks for, and it needs the others."""
        if self.world.is_main:
            names = checkpoint_names(self.step, self.rates)
            folder = self.opts.log_dir
            keys = list(self.model.state_dict().keys())
            torch_save_atomic(self.opt.state_dict(), os.path.join(folder, names["opt"]))
            extra = self._train_state()
            if extra is not None:
                torch_save_atomic(extra, os.path.join(folder, f"train_state{self.step:06d}.pt"))
            named = dict(zip((n for n, _ in self.model.named_parameters()), range(len(keys))))
            for rate, ema in zip(self.rates, self.ema):
                sd = {k: ema[named[k]].detach().cpu().float() for k in keys}
                self._save_weights(sd, os.path.join(folder, names[f"ema_{rate}"]), f"EMA {rate}")
            sd = {k: v.detach().cpu().float() for k, v in self.model.state_dict().items()}
            self._save_weights(sd, os.path.join(folder, names["model"]), "raw weights")
            self.log(f"saved {names['model']} and its EMA and optimizer files")
        barrier()

    def _save_weights(self, state: dict[str, torch.Tensor], path: str, kind: str) -> None:
        # The sidecar first: a model file is only ever visible together with its flags.
        sidecar = os.path.splitext(path)[0] + ".json"
        write_json_atomic(sidecar, {"flags": self.flags, "step": self.step, "weights": kind,
                                    "images": self.opts.data_dirs, "batch_size": self.opts.batch_size,
                                    "lr": self.opts.lr, "seed": self.opts.seed})
        torch_save_atomic(state, path)

    def grid_path(self) -> str:
        return os.path.join(self.opts.log_dir, f"samples_{self.step:06d}.png")

    def save_grid(self) -> None:
        """``samples_<step>.png``: a grid from the first EMA, always from the same noise."""
        if not self.world.is_main:
            return
        net = copy.deepcopy(self.model).float().eval()  # the samplers draw float32 noise
        with torch.no_grad():
            for p, e in zip(net.parameters(), self.ema[0]):
                p.copy_(e)
        diffusion = sampling_diffusion(self.flags, self.opts.sample_respacing)
        x = sample_batch(net, diffusion, self.opts.grid_size, self.flags["image_size"], self.opts.seed, 0,
                         use_ddim=self.opts.sample_respacing.startswith("ddim"), device=self.world.device)
        path = self.grid_path()
        write_png_atomic(path, image_grid(to_uint8_images(x)))
        self.log(f"sample grid: {path}")

    # --- the loop -------------------------------------------------------------
    def _lr(self) -> float:
        if not self.opts.lr_anneal_steps:
            return self.opts.lr
        return self.opts.lr * max(0.0, 1 - self.step / self.opts.lr_anneal_steps)

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on this rank's slice of the global batch; returns its summed loss terms."""
        o, w = self.opts, self.world
        per_rank = o.batch_size // w.size
        mine = slice(w.rank * per_rank, (w.rank + 1) * per_rank)
        x = images.to(w.device, self.dtype) / 127.5 - 1  # already cropped and mirrored by the loader
        rng = stream_rng("ddpm_timesteps", o.seed, self.step)
        t, weights = self.sampler.sample(o.batch_size, w.device, rng)
        t, weights = t[mine], weights[mine]
        # Drawn on the device for the whole global batch (every rank draws the same numbers).
        g = stream_generator("ddpm_noise", o.seed, self.step, device=w.device)
        noise = torch.randn((o.batch_size, *x.shape[1:]), generator=g, device=w.device)[mine].to(self.dtype)
        torch.manual_seed(stream_seed("ddpm_dropout", o.seed, self.step, w.rank))
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        with autocast(o.precision, w.device):
            terms = self.diffusion.training_losses(self.ddp_model, x, t, noise=noise)
        loss = (terms["loss"].to(self.dtype) * weights).mean()
        # Summed over ranks, so every rank stops together; before any state (weights, EMA, the
        # loss-aware sampler's history) takes in the NaN.
        if all_reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1)).item():
            raise NumericalError(
                f"DDPM training: the loss is {loss.item()} at update {self.step + 1} (learning rate {self._lr()}, "
                f"precision {o.precision}); nothing of this update is saved, and a rerun resumes from the last "
                f"checkpoint. Lower --lr" + (" or train with --precision fp32" if o.precision != "fp32" else ""))
        if isinstance(self.sampler, LossAwareSampler):
            self.sampler.update_with_local_losses(t, terms["loss"].detach())
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale  # a skipped (overflow) step lowers the scale
        else:
            loss.backward()
            self.opt.step()
            stepped = True
        if stepped:  # as in the original, a skipped fp16 step does not move the EMA
            params = [p.detach() for p in self.model.parameters()]
            for rate, ema in zip(self.rates, self.ema):
                torch._foreach_lerp_(ema, params, 1 - rate)
        return {k: v.detach().float().sum() for k, v in terms.items()}

    def run(self) -> int:
        """Train until ``stop_step`` (or forever); returns the final update count."""
        with run_lock(self.opts.log_dir, self.log, main=self.world.is_main):
            return self._run()

    def _run(self) -> int:
        o = self.opts
        barrier()
        self._check_same_run()
        self.resume()
        if self.world.is_main:
            write_json_atomic(os.path.join(o.log_dir, "train_config.json"), dataclasses.asdict(o))
        self.ddp_model = self.model
        if self.world.size > 1:
            ids = [self.world.device.index] if self.world.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        stop = o.stop_step()
        if stop and self.step >= stop:
            self.log(f"{o.log_dir} already has {self.step} updates (stop at {stop}); nothing to train")
            if not os.path.isfile(self.grid_path()):  # a run killed between its last save and its grid
                self.save_grid()
            return self.step
        if self.step == 0:
            self.save()  # model000000.pt: the initialisation, a fair "untrained U-Net" baseline
        loader = torch.utils.data.DataLoader(
            self.data, batch_sampler=_StepBatches(o, len(self.data), self.world, self.step, stop),
            num_workers=o.num_workers)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        t_last, last_step = time.time(), self.step
        bar = tqdm(total=stop or None, initial=self.step, desc="DDPM updates", disable=not self.world.is_main,
                   dynamic_ncols=True)
        csv_path = os.path.join(o.log_dir, "progress.csv")
        for images in loader:
            terms = self.train_step(images)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v
            self.step += 1
            bar.update(1)
            if self.step % o.log_interval == 0:
                self._log_progress(sums, self.step - last_step, time.time() - t_last, csv_path)
                sums, t_last, last_step = {}, time.time(), self.step
            if self.step % o.save_interval == 0:
                self.save()
            if o.sample_interval and self.step % o.sample_interval == 0:
                self.save_grid()
        bar.close()
        if self.step % o.save_interval:
            self.save()
        self.save_grid()
        barrier()
        return self.step

    def _log_progress(self, sums: dict[str, torch.Tensor], steps: int, seconds: float, csv_path: str) -> None:
        keys = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k] for k in keys]).to(self.world.device)).cpu()
        count = steps * self.opts.batch_size
        row = {"step": self.step, **{k: round(float(v) / count, 6) for k, v in zip(keys, totals)},
               "lr": self._lr(), "images_per_s": round(count / max(seconds, 1e-9), 2)}
        if self.world.is_main:
            new = not os.path.isfile(csv_path)
            with open(csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        self.log(" ".join(f"{k} {v}" for k, v in row.items()))
