"""A new experiment config from folders of images and masks (ddpmseg new).

Everything is decided from the data and the checkpoint, and checked as training checks it, before
``experiments/NAME`` is written: class names and colours (``--classes`` or the ids found), ``dim``
from the working resolution and the feature width a real forward pass of the U-Net gives, and the
steps/blocks of the closest published config unless given. A ``--test_fraction`` split is a pair
of folders of links to the user's files, so the config keeps the folder-per-split format.
"""
from __future__ import annotations

import glob
import math
import os
import random
import re
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
import torch

from guided_diffusion.checkpoint import sidecar_flags
from guided_diffusion.script_util import merged_flags

from ..common.config import ConfigError, DEFAULTS, _read_json, save_config, validate
from ..data.folders import ImageLabelDataset, read_mask
from ..common.errors import INPUT_ERRORS
from .interpreter import Run

PUBLISHED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "experiments")
# The U-Net flags that decide which blocks exist and how wide they are: what "closest" compares.
ARCHITECTURE_FLAGS = ("num_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "resblock_updown")
# A 30 % test split, the share the published datasets hold out at the smallest sizes.
DEFAULT_TEST_FRACTION = 0.3
# The ignore id of VOC-style masks (object borders); an id this large is never a class of a small set.
VOC_IGNORE = 255


def read_classes(path: str) -> tuple[list[str], list[list[int]] | None]:
    """Class names and, if every line gives one, colours from a file of ``name`` or ``name R G B`` lines
    (class id = line number among non-empty, non-# lines)."""
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise ConfigError(f"--classes {path}: cannot read it ({e.strerror})") from None
    names, colours = [], []
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) not in (1, 4) or (len(parts) == 4 and not all(re.fullmatch(r"\d{1,3}", v) and int(v) < 256
                                                                  for v in parts[1:])):
            raise ConfigError(f"--classes {path}: line {i + 1} {line!r} must be 'name' or 'name R G B' "
                              f"with R, G, B in 0..255")
        names.append(parts[0])
        if len(parts) == 4:
            colours.append([int(v) for v in parts[1:]])
    if len(names) < 2:
        raise ConfigError(f"--classes {path}: lists {len(names)} class(es); a segmentation needs at least 2")
    if colours and len(colours) != len(names):
        raise ConfigError(f"--classes {path}: give a colour on every line or on none ({len(colours)} of "
                          f"{len(names)} lines have one)")
    return names, colours or None


def distinct_palette(k: int) -> list[list[int]]:
    """The PASCAL VOC colour map: class i's bits spread over the high bits of R, G, B (all distinct)."""
    palette = []
    for i in range(k):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def closest_published(size: int, flags: dict[str, Any], folder: str = PUBLISHED) -> tuple[str, list, list]:
    """(name, steps, blocks) of the published ddpm config nearest in resolution, then in architecture."""
    best = None
    for path in sorted(glob.glob(os.path.join(folder, "*", "ddpm.json"))):
        cfg = _read_json(path)
        if cfg.get("model_type", "ddpm") != "ddpm" or not cfg.get("steps"):
            continue
        theirs = merged_flags(cfg.get("model_flags", {}))
        key = (abs(math.log2(cfg["dim"][0] / size)), sum(theirs[f] != flags[f] for f in ARCHITECTURE_FLAGS))
        if best is None or key < best[0]:
            best = (key, os.path.relpath(path, os.path.join(folder, "..")), cfg["steps"], cfg["blocks"])
    if best is None:
        return "config defaults", DEFAULTS["steps"][1], DEFAULTS["blocks"][1]
    return best[1:]


def _split(images: str, masks: str | None, palette: list, fraction: float, seed: int, stage: str,
           log: Callable[[str], None]) -> tuple[int, int]:
    """Links to a seeded random ``fraction`` of the labelled images (at least one) in ``stage``/test,
    the rest in ``stage``/train, each as images/ + masks/; returns the train and test counts."""
    ds = ImageLabelDataset(images, resolution=1, masks_dir=masks or "", palette=palette)
    pairs = sorted(ds.label_paths.items())
    n_test = max(1, round(fraction * len(pairs)))
    if n_test >= len(pairs):
        raise ConfigError(f"--test_fraction {fraction} leaves no training image of {len(pairs)}; use a smaller "
                          f"fraction, or give --test_images")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    test = set(order[:n_test])
    for i, (image, mask) in enumerate(pairs):
        split = os.path.join(stage, "test" if i in test else "train")
        for src, sub in ((image, "images"), (mask, "masks")):
            rel = os.path.relpath(src, ds.data_dir if sub == "images" else ds.masks_dir or ds.data_dir)
            dst = os.path.join(split, sub, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.abspath(src), dst)
    log(f"split {len(pairs)} labelled images: {len(pairs) - n_test} train, {n_test} test (seed {seed})")
    return len(pairs) - n_test, n_test


def _labels_found(images: str, masks: str, palette: list | None) -> np.ndarray:
    ds = ImageLabelDataset(images, resolution=1, masks_dir=masks, palette=palette)
    return np.unique(np.concatenate([np.unique(read_mask(p, palette)) for p in ds.label_paths.values()]))


def _feature_width(cfg: dict, flags: dict, log: Callable[[str], None]) -> int:
    """Channels per pixel that the U-Net gives for cfg's steps and blocks, from a forward pass."""
    run = Run(cfg, flags, log)
    try:
        run.open_backbone()
    except ValueError as e:  # blocks or steps this U-Net does not have
        if isinstance(e, INPUT_ERRORS):
            raise
        raise ConfigError(f"{e}; choose others with --steps / --blocks") from None
    image = torch.zeros(3, run.size, run.size)
    return sum(a.shape[1] for a in run.features(image, "a blank image (measuring the feature width)"))


def _check_arguments(name: str, root: str, test_images: str | None, test_masks: str | None,
                     test_fraction: float, force: bool) -> str:
    """Refuse arguments that cannot make an experiment; the experiment's folder."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '.', '-' (it names folders)")
    final = os.path.join(root, name)
    if os.path.exists(final) and not force:
        raise ConfigError(f"{final} exists; choose another --name, or pass --force to replace it")
    if test_masks and not test_images:
        raise ConfigError("--test_masks needs --test_images")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--test_fraction must be in (0, 1), got {test_fraction}")
    return final


def _classes(images: str, masks: str, classes: str | None) -> tuple[list[str], list, int | None]:
    """(class names, palette, ignore label): from the ``classes`` file if given, else from the
    label values the masks hold (255 is VOC's ignore label when it is not a class)."""
    names, palette = read_classes(classes) if classes else (None, None)
    found = _labels_found(images, masks, palette)
    ignore = VOC_IGNORE if VOC_IGNORE in found and (names is None or len(names) <= VOC_IGNORE) else None
    if names is None:
        k = int(found[found != ignore].max()) + 1 if ignore is not None else int(found.max()) + 1
        names = [f"class_{i}" for i in range(k)]
    return names, palette or distinct_palette(len(names)), ignore


def new_experiment(name: str, images: str, masks: str, model_path: str, classes: str | None = None,
                   test_images: str | None = None, test_masks: str | None = None,
                   test_fraction: float = DEFAULT_TEST_FRACTION, steps: list[int] | None = None,
                   blocks: list[int] | None = None, model_flags: dict[str, Any] | None = None,
                   seed: int = 0, force: bool = False, root: str = "experiments",
                   log: Callable[[str], None] = print) -> str:
    """Write ``<root>/NAME/ddpm.json`` (see the module docstring); returns its path."""
    final = _check_arguments(name, root, test_images, test_masks, test_fraction, force)
    config_path = os.path.join(final, "ddpm.json")
    flags = merged_flags(sidecar_flags(model_path), model_flags)
    size = flags["image_size"]
    names, palette, ignore = _classes(images, masks, classes)
    if steps is None or blocks is None:
        source, default_steps, default_blocks = closest_published(size, flags)
        steps, blocks = steps or default_steps, blocks or default_blocks
        log(f"steps {steps}, blocks {blocks}: from {source} (closest published config)")
    os.makedirs(root, exist_ok=True)
    stage = tempfile.mkdtemp(dir=root, prefix=f".{name}.")
    try:
        cfg = {"exp_dir": os.path.join("pixel_classifiers", name), "category": name, "number_class": len(names),
               "ignore_label": ignore, "model_path": model_path, "steps": list(steps), "blocks": list(blocks),
               "class_names": names, "palette": palette, "seed": seed, "model_flags": flags}
        if test_images:
            cfg.update(training_path=images, training_masks_path=masks, testing_path=test_images,
                       testing_masks_path=test_masks or "")
            counts = [len(ImageLabelDataset(p, 1, masks_dir=m or "", palette=palette))
                      for p, m in ((images, masks), (test_images, test_masks))]
        else:
            counts = _split(images, masks, palette, test_fraction, seed, os.path.join(stage, "split"), log)
            cfg.update(training_path=os.path.join(final, "split", "train"),
                       testing_path=os.path.join(final, "split", "test"))
        cfg.update(training_number=counts[0], testing_number=counts[1], dim=[size, size, 1])
        # Validation reads the split where it is staged; the config names where it will be.
        staged = {**cfg, **{k: stage + cfg[k][len(final):] for k in ("training_path", "testing_path")
                            if not test_images}}
        width = _feature_width(validate(staged, where="new config"), flags, log)
        cfg["dim"] = staged["dim"] = [size, size, width]
        staged = validate(staged, where="new config")
        Run(staged, flags, log).validate_inputs()  # the same checks `ddpmseg train` makes
        save_config(cfg, os.path.join(stage, "ddpm.json"))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"wrote {config_path}: {len(names)} classes, dim {cfg['dim']}, {counts[0]} train / {counts[1]} test "
        f"images\ntrain it with:\n  ddpmseg train --exp {config_path}")
    return config_path
