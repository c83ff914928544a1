"""Every random stream of the package, named in one table and derived from the one seed a run is given.

A stream's key is ``(seed, id, *indices)``; numpy's SeedSequence hashes the key into a 32-bit seed,
so distinct keys give unrelated streams (unlike seed + i). SeedSequence treats a key and the same
key with zeros appended as equal, so the table keeps keys apart by construction:

- ensemble member ``m`` owns the ids below ``MEMBER_LIMIT``: its streams are ``(seed, m)`` and
  ``(seed, m, part)`` with ``part`` >= 1 (``MEMBER_PARTS``). This is the layout every published
  ensemble in the README was trained with, so those numbers stay reproducible;
- every other stream has an id of its own >= ``MEMBER_LIMIT`` and a fixed number of indices, so two
  keys of one stream have the same length and keys of two streams differ in their second word;
- one draw takes the seed itself, as the original does: its one noise tensor comes from a generator
  seeded with it (``features.ddpm.shared_noise``), which fixture parity needs (tests/test_seeding.py
  lists the places).

``tests/test_seeding.py`` enumerates the streams of every kind of run and asserts they are distinct.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MEMBER_LIMIT = 1_000_000  # member indices are below it, every named stream's id at or above it


@dataclass(frozen=True)
class Stream:
    id: int
    indices: tuple[str, ...]  # what follows the id in the key, always this many
    what: str


STREAMS: dict[str, Stream] = {
    # pixel classifier (ddpmseg train, evaluate, segment, select, suggest)
    "etf_frame": Stream(1_000_003, (), "the simplex ETF's orthonormal basis"),  # its id since the start
    "fold_order": Stream(1_000_100, (), "which training image falls in which cross-fitting fold"),
    "fold_split": Stream(1_000_102, ("split",), "the fold of each training image in repeated split s >= 1 "
                                                "(ddpmseg select --repeats; split 0 is fold_order)"),
    "fold_seed": Stream(1_000_101, ("fold",), "the root seed of fold f's ensemble (its members' streams)"),
    "augment_copy": Stream(1_000_110, ("image", "copy"), "augmented copy k of training image i"),
    "test_view": Stream(1_000_111, ("image", "view"), "test-time view j of test image i"),
    "feature_noise": Stream(1_000_112, (), "the DDPM features' fresh noise of every image when share_noise is false"),
    "noise_draw": Stream(1_000_113, ("draw",), "noise draw k >= 1 of the features' noise_draws average (draw 0 "
                         "is the shared noise or feature_noise): its shared tensor, or its fresh noise"),
    "refiner_training": Stream(1_000_120, (), "the DDPS refiner's weights, batches, noise and flips"),
    "refine_noise": Stream(1_000_121, ("image",), "the refiner's re-noising of test image i"),
    "suggest_order": Stream(1_000_130, (), "the random control's order in ddpmseg suggest"),
    "active_learning_start": Stream(1_000_131, (), "the first labelled images of scripts/active_learning.py"),
    "unet_init": Stream(1_000_140, (), "random U-Net weights (the untrained control)"),
    "backbone_init": Stream(1_000_141, (), "random MAE/SwAV weights (the untrained controls)"),
    # DDPM training (ddpmseg train-ddpm) and sampling (ddpmseg sample, generate_dataset.py)
    "ddpm_init": Stream(1_000_200, (), "the initial DDPM weights"),
    "ddpm_data_order": Stream(1_000_201, ("epoch",), "the image permutation of an epoch"),
    "ddpm_flip": Stream(1_000_202, ("step",), "the mirror decisions of an update's batch"),
    "ddpm_crop": Stream(1_000_203, ("step", "position"), "the random crop of one batch image"),
    "ddpm_timesteps": Stream(1_000_204, ("step",), "the timesteps of an update's batch"),
    "ddpm_noise": Stream(1_000_205, ("step",), "the noise of an update's batch"),
    "ddpm_dropout": Stream(1_000_206, ("step", "rank"), "dropout masks of one rank in an update"),
    "sample_batch": Stream(1_000_210, ("batch",), "the noise and steps of sampled batch b"),
    # DeepLab on a DatasetDDPM (train_deeplab.py)
    "deeplab_head": Stream(1_000_300, (), "the new classifier head's weights"),
    "deeplab_shuffle": Stream(1_000_301, ("epoch",), "the batch order of an epoch"),
    "deeplab_dropout": Stream(1_000_302, ("epoch",), "the ASPP dropout masks of an epoch"),
    "deeplab_rank_dropout": Stream(1_000_303, ("epoch", "rank"), "those of one rank in an epoch, under torchrun"),
    # the procedural demo dataset (ddpmseg demo)
    "procedural_image": Stream(1_000_400, ("split", "index"), "image i of a split (0 train, 1 test, 2 unlabeled)"),
    # the Stable Diffusion backbone (ddpmseg.features.stable_diffusion)
    "latent_noise": Stream(1_000_500, (), "its one latent noise tensor for every image and step (share_noise)"),
}

# A member's streams, after (seed, member): 0 is the bare key (seed, member).
MEMBER_PARTS = {
    "member": 0,  # the member's initial weights and its batch order
    "member_dropout": 1,  # its dropout masks
    "trunk": 2,  # the decoupled ETF regulariser's own trunk (etf_decoupled)
    "trunk_dropout": 3,  # that trunk's dropout masks
}


def stream_key(name: str, seed: int, *indices: int) -> tuple[int, ...]:
    """The key of stream ``name`` (a key of ``STREAMS``): (seed, its id, its indices)."""
    stream = STREAMS[name]
    if len(indices) != len(stream.indices):
        raise TypeError(f"stream {name!r} takes the indices {stream.indices}, got {indices}")
    if any(int(i) < 0 for i in indices):
        raise ValueError(f"stream {name!r}: indices must be >= 0, got {indices}")
    return (int(seed), stream.id, *(int(i) for i in indices))


def member_key(seed: int, member: int, part: str = "member") -> tuple[int, ...]:
    """The key of ensemble member ``member``'s stream ``part`` (a key of ``MEMBER_PARTS``)."""
    if not 0 <= member < MEMBER_LIMIT:
        raise ValueError(f"member index {member} is outside [0, {MEMBER_LIMIT})")
    p = MEMBER_PARTS[part]
    return (int(seed), int(member)) + ((p,) if p else ())


def seed_of(key: tuple[int, ...]) -> int:
    """The 32-bit seed SeedSequence derives from ``key``."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def stream_seed(name: str, seed: int, *indices: int) -> int:
    """The 32-bit seed of stream ``name`` for ``seed`` and its indices."""
    return seed_of(stream_key(name, seed, *indices))


def member_seed(seed: int, member: int, part: str = "member") -> int:
    """The 32-bit seed of member ``member``'s stream ``part``."""
    return seed_of(member_key(seed, member, part))


def torch_generator(stream_seed_value: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with a seed from ``stream_seed`` or ``member_seed``."""
    return torch.Generator(device=device).manual_seed(stream_seed_value)


def stream_generator(name: str, seed: int, *indices: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator for stream ``name`` (see ``stream_seed``)."""
    return torch_generator(stream_seed(name, seed, *indices), device)


def stream_rng(name: str, seed: int, *indices: int) -> np.random.Generator:
    """A numpy Generator for stream ``name`` (see ``stream_seed``)."""
    return np.random.default_rng(stream_seed(name, seed, *indices))
