"""Sample many images from a DDPM, optionally label them (ddpmseg.datasetddpm.labelling), and save them crash-safely.

Work is cut into batches of ``batch_size`` samples; batch k is drawn from its own seed stream
(ddpmseg.ddpm.sampling), so it is the same images whichever process draws it. Under ``torchrun``
rank r draws batches r, r + W, r + 2W, ...: together the ranks produce every batch exactly
once. Each finished batch is written at once as ``shards/batch_<k>.npz`` (atomically), so a
crash loses at most the batches in flight and a rerun draws only the missing ones. Rank 0
then merges the shards, in order, into one ``.npz`` with positional arrays, as the original.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..common.atomic import atomic_write, write_json_atomic
from ..common.config import ConfigError
from ..common.distributed import World, barrier
from ..common.errors import DataError
from ..common.report import to_uint8_images
from ..common.runlock import run_lock
from .sampling import BatchSampler

# A labeller maps a batch of samples in [-1, 1] to extra arrays ("masks", "uncertainty").
Labeller = Callable[[torch.Tensor], dict[str, np.ndarray]]


@dataclass
class SampleOptions:
    """How samples are drawn; recorded beside the shards so a resume cannot mix settings."""

    num_samples: int
    batch_size: int
    # DDIM (deterministic given x_T) instead of ancestral sampling; combine with a respacing.
    use_ddim: bool = False
    # "" = every training step (the original's DatasetDDPM used 1000 ancestral steps);
    # "ddim50", "250", "50,50" etc. sample with fewer (guided-diffusion's respacing strings).
    timestep_respacing: str = ""
    clip_denoised: bool = True
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.timestep_respacing.startswith("ddim") and not self.use_ddim:
            raise ConfigError(f"timestep_respacing {self.timestep_respacing!r} is a DDIM spacing: add --use_ddim True")


def shard_path(out_dir: str, batch: int) -> str:
    return os.path.join(out_dir, "shards", f"batch_{batch:06d}.npz")


def _save_npz_atomic(path: str, *arrays: np.ndarray, **named: np.ndarray) -> None:
    # np.savez on a file object writes exactly ``path`` (no ".npz" appended).
    atomic_write(path, lambda f: np.savez(f, *arrays, **named))


def _check_record(out_dir: str, record: dict) -> None:
    """Refuse to resume shards that were drawn with other settings."""
    path = os.path.join(out_dir, "shards", "generation.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != record:
            diff = {k: (saved.get(k), record.get(k)) for k in sorted(set(saved) | set(record))
                    if saved.get(k) != record.get(k)}
            raise ConfigError(f"{os.path.dirname(path)} holds samples drawn with other settings "
                              f"(saved vs now: {diff}); rerun with those settings, or delete the folder to start over")


def generate(out_dir: str, output_name: str, sampler: BatchSampler, image_size: int, opts: SampleOptions,
             world: World, record: dict, labeller: Labeller | None = None,
             log: Callable[[str], None] = tqdm.write) -> str:
    """Draw ``opts.num_samples`` samples (this rank's share) with ``sampler``, label them with ``labeller``,
    merge everything into ``<out_dir>/<output_name>`` on rank 0; returns that path.

    Arrays of the merged file: arr_0 images uint8 [N,H,W,3], then the labeller's arrays in
    the order it returns them (DatasetDDPM: arr_1 masks uint8 [N,H,W], arr_2 uncertainty [N]).
    """
    opts.validate()
    record = {**record, **dataclasses.asdict(opts), "image_size": image_size, "labelled": labeller is not None}
    with run_lock(out_dir, log, main=world.is_main):
        return _generate(out_dir, output_name, sampler, image_size, opts, world, record, labeller, log)


def _generate(out_dir: str, output_name: str, sampler: BatchSampler, image_size: int, opts: SampleOptions,
              world: World, record: dict, labeller: Labeller | None, log: Callable[[str], None]) -> str:
    if world.is_main:
        _check_record(out_dir, record)
        os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "shards", "generation.json"), record)
    barrier()
    num_batches = math.ceil(opts.num_samples / opts.batch_size)
    todo = [k for k in world.shard(range(num_batches)) if not os.path.isfile(shard_path(out_dir, k))]
    if world.is_main:
        log(f"{num_batches} batches of {opts.batch_size}; {len(todo)} to draw on rank 0 of {world.size} "
            f"({sampler.description})")
    for k in tqdm(todo, desc=f"sampling (rank {world.rank})", unit="batch", dynamic_ncols=True):
        x = sampler.draw(opts.batch_size, k)
        arrays = {"images": to_uint8_images(x)}
        if labeller is not None:
            arrays.update(labeller(x))
        _save_npz_atomic(shard_path(out_dir, k), **arrays)
    barrier()
    out_path = os.path.join(out_dir, output_name)
    if world.is_main:
        merge_shards(out_dir, num_batches, opts.num_samples, out_path)
        log(f"wrote {opts.num_samples} samples to {out_path}")
    barrier()
    return out_path


def merge_shards(out_dir: str, num_batches: int, num_samples: int, out_path: str) -> None:
    """Concatenate shards 0..num_batches-1 in order, keep the first ``num_samples``, write atomically."""
    missing = [k for k in range(num_batches) if not os.path.isfile(shard_path(out_dir, k))]
    if missing:
        raise DataError(f"shards {missing[:5]} are missing in {out_dir}/shards; rerun the same command to draw them")
    parts: dict[str, list[np.ndarray]] = {}
    for k in range(num_batches):
        with np.load(shard_path(out_dir, k)) as shard:
            for name in shard.files:
                parts.setdefault(name, []).append(shard[name])
    merged = [np.concatenate(parts[name])[:num_samples] for name in parts]
    _save_npz_atomic(out_path, *merged)
