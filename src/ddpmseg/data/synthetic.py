"""Synthetic segmentation datasets (.npz) and the uncertainty filter of DatasetDDPM.

The files are the original's: positional arrays written by ``np.savez``. Three arrays
(DatasetDDPM's generate_dataset.py, and ours) are images, masks, uncertainty; four arrays
(DatasetGAN) are images, masks, latents, uncertainty. Everything is checked on load so
that a bad file fails before a DeepLab run writes anything.
"""
from __future__ import annotations

import os

import numpy as np

from ..common.config import CHOICES, ConfigError
from ..common.errors import DataError
from ..common.paths import refuse_folder

# The filter rules, named once in the config's CHOICES.
UNCERTAINTY_RULES = CHOICES["uncertainty_filter"]
# The published slicing ``sorted[30 : -n_out + 30]`` also drops this many MOST certain samples.
PUBLISHED_CERTAIN_DROPPED = 30
# Masks are range-checked this many samples at a time: a 50000 x 256 x 256 array is 3 GiB,
# and one boolean copy of it would double that.
_CHECK_CHUNK = 256
_FORMATS = "3 arrays (images, masks, uncertainty) or 4 (images, masks, latents, uncertainty)"


def _read_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, masks, uncertainty) in the file's array order, as the original's ``.values()``."""
    refuse_folder(path, "synthetic dataset (--data_path)", DataError)
    if not os.path.isfile(path):
        raise DataError(f"synthetic dataset not found: {path} (generate it first, or pass --data_path; "
                        f"relative paths are resolved from {os.getcwd()})")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip, truncated, or pickled: numpy raises several types
        raise DataError(f"{path}: cannot be read as an .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, but a synthetic dataset is an .npz of {_FORMATS}")
    with npz:
        names = list(npz.files)
        if len(names) not in (3, 4):
            raise DataError(f"{path}: holds {len(names)} arrays {names}, expected {_FORMATS}")
        try:
            # The DatasetGAN latents (names[2] of 4) are never read: they are not needed.
            return npz[names[0]], npz[names[1]], npz[names[-1]]
        except Exception as e:  # a damaged member of an otherwise valid zip
            raise DataError(f"{path}: an array cannot be read ({type(e).__name__}: {e})") from None


def _check_shapes(path: str, images: np.ndarray, masks: np.ndarray, uncertainty: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: images (array 1) must be uint8 [N, H, W, 3], "
                        f"got {images.dtype} {list(images.shape)}")
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise DataError(f"{path}: masks (array 2) must be integer class ids [N, H, W], "
                        f"got {masks.dtype} {list(masks.shape)}")
    if uncertainty.ndim != 1 or not np.issubdtype(uncertainty.dtype, np.number):
        raise DataError(f"{path}: uncertainty (last array) must be one number per sample [N], "
                        f"got {uncertainty.dtype} {list(uncertainty.shape)}")
    counts = (len(images), len(masks), len(uncertainty))
    if len(set(counts)) != 1:
        raise DataError(f"{path}: the arrays disagree on the number of samples: images {counts[0]}, "
                        f"masks {counts[1]}, uncertainty {counts[2]}")
    if counts[0] == 0:
        raise DataError(f"{path}: holds no samples")
    if images.shape[1:3] != masks.shape[1:]:
        raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]} but masks are "
                        f"{masks.shape[1]}x{masks.shape[2]} (HxW); every mask must label its image's pixels")
    if images.shape[1] != images.shape[2]:
        raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]} (HxW); only square "
                        f"images are supported, as in the original")


def load_synthetic(path: str, max_data: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images uint8 [N,H,W,3], masks [N,H,W] and uncertainty float [N] of an .npz dataset.

    ``max_data > 0`` keeps the first ``max_data`` samples (as the original; a file with fewer gives
    them all, which the caller says); the returned arrays may be views of the loaded ones. Raises
    DataError for an unusable file.
    """
    images, masks, uncertainty = _read_arrays(path)
    _check_shapes(path, images, masks, uncertainty)
    uncertainty = uncertainty.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(uncertainty))
    if bad.size:
        raise DataError(f"{path}: {bad.size} uncertainty values are not finite (first at sample {bad[0]}); "
                        f"the filter cannot rank those samples")
    if max_data > 0:
        images, masks, uncertainty = images[:max_data], masks[:max_data], uncertainty[:max_data]
    return images, masks, uncertainty


def check_masks(masks: np.ndarray, number_class: int, ignore_label: int | None, where: str = "masks") -> None:
    """Raise DataError unless every mask value is a class id 0..K-1 or the ignore label."""
    for start in range(0, len(masks), _CHECK_CHUNK):
        chunk = masks[start:start + _CHECK_CHUNK]
        if chunk.min() >= 0 and chunk.max() < number_class:
            continue  # the common case, without np.unique's sort
        values = np.unique(chunk)
        bad = values[(values < 0) | (values >= number_class)]
        if ignore_label is not None:
            bad = bad[bad != ignore_label]
        if bad.size:
            sample = start + int(np.flatnonzero(np.isin(chunk, bad).any(axis=(1, 2)))[0])
            allowed = f"0..{number_class - 1}" + (f" or the ignore_label {ignore_label}"
                                                  if ignore_label is not None else "")
            raise DataError(f"{where}: mask values {bad[:10].tolist()} (first in sample {sample}) are invalid "
                            f"with number_class={number_class} (allowed: {allowed}); was the dataset "
                            f"generated with another config?")


def keep_by_uncertainty(uncertainty: np.ndarray, portion: float, rule: str) -> np.ndarray:
    """Sorted indices of the samples the uncertainty filter keeps; ``portion`` 0 keeps all.

    n_out = int(N * portion) samples are dropped. "most_uncertain" drops the n_out most
    uncertain ones. "published" reproduces the original's ``sorted[30 : -n_out + 30]`` over
    the ascending sort: it drops the 30 MOST certain samples and the n_out - 30 most
    uncertain ones (still N - n_out kept), and is undefined when n_out <= 30.
    """
    if rule not in UNCERTAINTY_RULES:
        raise ConfigError(f"uncertainty_filter must be one of {list(UNCERTAINTY_RULES)}, got {rule!r}")
    if not 0.0 <= portion < 1.0:
        raise ConfigError(f"uncertainty_portion must be in [0, 1), got {portion}")
    n = len(uncertainty)
    if portion == 0:
        return np.arange(n)
    n_out = int(n * portion)
    # Stable, so equal scores keep file order and the result does not depend on the sort algorithm.
    order = np.argsort(np.asarray(uncertainty), kind="stable")
    if rule == "most_uncertain":
        kept = order[:n - n_out]
    else:
        if n_out <= PUBLISHED_CERTAIN_DROPPED:
            raise ConfigError(
                f"uncertainty_filter 'published' needs int(N * portion) > {PUBLISHED_CERTAIN_DROPPED}, "
                f"got int({n} * {portion}) = {n_out}: its slicing sorted[30 : -n_out + 30] keeps almost "
                f"nothing then. Use more samples, a larger portion, or uncertainty_filter 'most_uncertain'")
        kept = order[PUBLISHED_CERTAIN_DROPPED:n - n_out + PUBLISHED_CERTAIN_DROPPED]
    return np.sort(kept)
