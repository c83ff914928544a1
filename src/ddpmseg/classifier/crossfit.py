"""Out-of-fold first predictions: what the ensemble says about a training image it never saw.

A mask refiner learns to correct the ensemble's mistakes, so it must train on predictions with
the mistakes the ensemble makes on new images. On its own training images the ensemble is
nearly perfect; instead, the training images are split into folds, a smaller ensemble is trained
on all folds but one (the same store, the same pixels minus that fold's images and their
augmented copies), and it predicts the held-out fold exactly as the test images are predicted.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

import torch

from ..common.atomic import torch_save_atomic
from ..common.seeding import stream_generator, stream_seed
from ..features.store import FeatureStore
from .train import EnsembleSettings, LabelledPixels, load_ensemble, model_path, train_ensemble


def fold_assignment(num_images: int, folds: int, seed: int, windows_per_image: list[int] | None = None,
                    split: int = 0) -> torch.Tensor:
    """The fold of each training image [num_images]: a seeded shuffle dealt round-robin, so folds
    differ in size by at most one and do not follow the file order. Given ``windows_per_image``
    (ddpmseg.data.windows), the fold of each window instead [sum(windows_per_image)]: an image's
    windows overlap, so they share its fold. ``split`` s >= 1 draws another, independent assignment
    (repeated cross-validation); split 0 is the one cross-fitting uses."""
    generator = stream_generator("fold_order", seed) if split == 0 else stream_generator("fold_split", seed, split)
    order = torch.randperm(num_images, generator=generator)
    fold = torch.empty(num_images, dtype=torch.long)
    fold[order] = torch.arange(num_images) % folds
    return fold if windows_per_image is None else fold.repeat_interleave(torch.tensor(windows_per_image))


def pixels_outside_fold(pixels: LabelledPixels, fold: torch.Tensor, held_out: int) -> LabelledPixels:
    """The training pixels of every image (and augmented copy) not in fold ``held_out``.

    Store slot s holds copy s // n of image (or window) s % n, ``fold`` having one entry for each of the
    n, so ``slot % n`` is the source.
    """
    H, W = pixels.hw
    source = (pixels.index // (H * W)) % len(fold)
    keep = fold[source] != held_out
    return LabelledPixels(pixels.index[keep], pixels.labels[keep], pixels.hw)


def out_of_fold_probabilities(store: FeatureStore, pixels: LabelledPixels, cfg: dict, num_images: int,
                              folds: int, members: int, folder: str,
                              predict: Callable[[object, int], torch.Tensor], device: str,
                              log: Callable[[str], None] = print,
                              windows_per_image: list[int] | None = None) -> torch.Tensor:
    """Class probabilities [n, K, H, W] of each of the ``num_images`` training images (or windows, given
    ``windows_per_image``: see fold_assignment) from the fold ensemble that did not train on it;
    ``predict(ensemble, i)`` gives image i's [K, H, W] probabilities the way test images get theirs.
    Resumable: finished fold members and the final tensor are kept in ``folder``."""
    out_path = os.path.join(folder, "first_predictions.pt")
    if os.path.exists(out_path):
        return torch.load(out_path, weights_only=True)
    settings = EnsembleSettings.from_config(cfg)
    fold = fold_assignment(len(windows_per_image) if windows_per_image else num_images, folds, cfg["seed"],
                           windows_per_image)
    H, W = pixels.hw
    probs = torch.zeros(num_images, cfg["number_class"], H, W)
    for f in range(folds):
        fold_dir = os.path.join(folder, f"fold_{f}")
        os.makedirs(fold_dir, exist_ok=True)
        # Each fold ensemble has its own seed, so its members are not copies of the main ones.
        fold_settings = replace(settings, seed=stream_seed("fold_seed", cfg["seed"], f))
        todo = [m for m in range(members) if not os.path.exists(model_path(fold_dir, m))]
        held_out = fold.eq(f).nonzero().flatten().tolist()
        if todo:
            log(f"refiner first predictions: fold {f + 1}/{folds} (images {held_out} held out), "
                f"training {len(todo)} members")
            train_pixels = pixels_outside_fold(pixels, fold, f)
            # An epoch as in the main training (config "epoch_pixels"): the un-augmented pixels.
            originals = int((train_pixels.index < num_images * H * W).sum())
            train_ensemble(store, train_pixels, fold_settings, fold_dir, todo, device=device, log=log,
                           epoch_size=originals if cfg["epoch_pixels"] == "original" else None)
        ens = load_ensemble(fold_dir, members, store.dim, cfg["number_class"], device)
        for i in held_out:
            probs[i] = predict(ens, i).cpu()
    torch_save_atomic(probs, out_path)
    return probs
