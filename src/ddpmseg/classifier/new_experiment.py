"""A new experiment config from folders of images and masks (ddpmseg new).

Everything is decided from the data and the checkpoint, and checked as training checks it, before
``experiments/NAME`` is written: class names, colours and the ignore label (ddpmseg.data.classes), a
summary of what the masks hold (``data_summary.md``: a class without a training pixel stops it), ``dim``
from the working resolution and the feature width of the backbone's layers (then checked by a real
forward pass, as train_interpreter.py checks it), and the
steps/blocks of the closest published config unless given. A ``--test_fraction`` split is a pair
of folders of links to the user's files, so the config keeps the folder-per-split format.
"""
from __future__ import annotations

import math
import os
import random
import re
import shutil
import tempfile
from typing import Any, Callable


from guided_diffusion.checkpoint import sidecar_flags
from guided_diffusion.script_util import merged_flags

from ..common.config import ConfigError, DEFAULTS, _read_json, save_config, validate
from ..common.atomic import write_text_atomic
from ..common.device import resolve_device
from ..data.annotations import open_export
from ..data.classes import DatasetClasses, dataset_classes, distinct_palette, read_classes
from ..data.folders import ImageLabelDataset
from ..data.summary import classes_without_pixels, count_split, summary_markdown
from ..common.errors import INPUT_ERRORS
from ..features.registry import backbone_class, open_backbone
from .interpreter import Run

PUBLISHED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "experiments")
# The repository's own datasets under PUBLISHED: "closest" chooses among these only, never among the
# user's own experiments/NAME folders, which `ddpmseg new` writes beside them.
PUBLISHED_DATASETS = ("ade_bedroom_30", "bedroom_28", "cat_15", "celeba_19", "celebamask64", "ffhq_34",
                      "horse_21", "shapes64")
# The U-Net flags that decide which blocks exist and how wide they are: what "closest" compares.
ARCHITECTURE_FLAGS = ("num_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "resblock_updown")
# What `ddpmseg new` says about the data, written beside the config.
SUMMARY_FILE = "data_summary.md"
# A 30 % test split, the share the published datasets hold out at the smallest sizes.
DEFAULT_TEST_FRACTION = 0.3


def closest_published(size: int, flags: dict[str, Any], folder: str = PUBLISHED) -> tuple[str, list, list]:
    """(name, steps, blocks) of the published ddpm config nearest in resolution, then in architecture."""
    best = None
    for path in sorted(os.path.join(folder, name, "ddpm.json") for name in PUBLISHED_DATASETS):
        if not os.path.isfile(path):
            continue
        cfg = _read_json(path)
        # Only configs of a guided-diffusion U-Net, whose flags can be compared with this one's.
        if not backbone_class(cfg.get("model_type", DEFAULTS["model_type"][1])).takes_model_flags \
                or not cfg.get("steps"):
            continue
        theirs = merged_flags(cfg.get("model_flags", {}))
        key = (abs(math.log2(cfg["dim"][0] / size)), sum(theirs[f] != flags[f] for f in ARCHITECTURE_FLAGS))
        if best is None or key < best[0]:
            best = (key, os.path.relpath(path, os.path.join(folder, "..")), cfg["steps"], cfg["blocks"])
    if best is None:
        return "config defaults", DEFAULTS["steps"][1], DEFAULTS["blocks"][1]
    return best[1:]


def _split(images: str, masks: str | None, palette: list, fraction: float, seed: int, stage: str,
           log: Callable[[str], None]) -> None:
    """Links to a seeded random ``fraction`` of the labelled images (at least one) in ``stage``/test,
    the rest in ``stage``/train, each as images/ + masks/."""
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
            os.symlink(_link_target(src, dst, os.path.dirname(stage)), dst)
    log(f"split {len(pairs)} labelled images: {len(pairs) - n_test} train, {n_test} test (seed {seed})")


def _link_target(src: str, link: str, experiment: str) -> str:
    """What a split link holds: a path relative to the link for a file of the experiment folder itself
    (a converted annotation export, which moves with it), the absolute path of the user's own file."""
    src, folder = os.path.abspath(src), os.path.abspath(experiment)
    if os.path.commonpath([src, folder]) == folder:
        return os.path.relpath(src, os.path.dirname(os.path.abspath(link)))
    return src


def _feature_width(cfg: dict, flags: dict, log: Callable[[str], None]) -> int:
    """Channels per pixel that the backbone gives for cfg's steps and blocks, from its layer catalogue."""
    try:
        backbone = open_backbone(cfg, flags, resolve_device(cfg["device"]), log)
    except ValueError as e:  # a backbone that says what it lacks as a plain ValueError
        if isinstance(e, INPUT_ERRORS):
            raise
        raise ConfigError(f"{e}; choose others with --steps / --blocks") from None
    return sum(layer.channels for layer in backbone.layers())


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


def _summarise(name: str, splits: dict[str, ImageLabelDataset], classes: DatasetClasses, allow_missing: bool,
               log: Callable[[str], None]) -> str:
    """The data summary (printed, and returned for data_summary.md); a class without a training pixel
    is an error naming it unless ``allow_missing``."""
    counts = {split: count_split(ds) for split, ds in splits.items()}
    text = summary_markdown(name, counts, classes.names, classes.ignore_label, classes.ignore_source)
    log(text.rstrip("\n"))
    missing = classes_without_pixels(counts["train"], classes.names, classes.ignore_label)
    if missing and not allow_missing:
        raise ConfigError(f"class(es) {', '.join(missing)} have no pixel in the {counts['train'].images} training "
                          f"masks, so no model could learn them; fix the masks or the classes file, or pass "
                          f"--allow_missing_classes to train without them")
    if missing:
        log(f"warning: class(es) {', '.join(missing)} have no training pixel (--allow_missing_classes): they will "
            f"never be predicted and score IoU 0")
    return text


def _classes(images: str | None, masks: str, classes: str | None, ignore_label: int | None, fmt: str | None,
             test_masks: str | None, test_images: str | None):
    """(the annotation export at ``masks`` or None, the classes to write): an annotation tool's export
    (CVAT, VOC, COCO, LabelMe) names its classes and may imply an ignore label, which --ignore_label
    overrides; a masks folder is read as it is (ddpmseg.data.classes)."""
    export = open_export(masks, images, fmt, read_classes(classes).names if classes else None, test_masks,
                         test_images)
    if export is None:
        return None, dataset_classes(images, masks, classes, ignore_label)
    names, palette, ignore = export.classes
    source = export.ignore_source or "none given: pass --ignore_label N for a value that marks pixels to leave out"
    if ignore_label is not None:
        ignore, source = ignore_label, "--ignore_label"
    return export, DatasetClasses(names, palette or distinct_palette(len(names)), ignore, source)


def _stage_folders(cfg: dict, export, images: str | None, masks: str | None, test_images: str | None,
                   test_masks: str | None, test_fraction: float, seed: int, stage: str, final: str,
                   log: Callable[[str], None]) -> dict[str, tuple[str, str | None]]:
    """Set ``cfg``'s training and testing paths (where the experiment will be) and return the staged
    (images, masks) folders of each split: the export converted into the stage, the user's test folders,
    or a ``test_fraction`` split of links."""
    if export:  # converted into the stage (train/, test/ of images/ + masks/), named where it will be
        export.write(os.path.join(stage, "data"), log)
        images, masks, test_images = os.path.join(stage, "data", "train"), None, None
    if export and export.has_test:
        cfg.update(training_path=os.path.join(final, "data", "train"), testing_path=os.path.join(final, "data", "test"))
        return {split: (os.path.join(stage, "data", split), "") for split in ("train", "test")}
    if test_images:
        cfg.update(training_path=images, training_masks_path=masks, testing_path=test_images,
                   testing_masks_path=test_masks or "")
        return {"train": (images, masks), "test": (test_images, test_masks or "")}
    _split(images, masks, cfg["palette"], test_fraction, seed, os.path.join(stage, "split"), log)
    cfg.update(training_path=os.path.join(final, "split", "train"), testing_path=os.path.join(final, "split", "test"))
    return {split: (os.path.join(stage, "split", split), "") for split in ("train", "test")}


def new_experiment(name: str, images: str | None, masks: str, model_path: str, classes: str | None = None,
                   test_images: str | None = None, test_masks: str | None = None,
                   test_fraction: float = DEFAULT_TEST_FRACTION, steps: list[int] | None = None,
                   blocks: list[int] | None = None, model_flags: dict[str, Any] | None = None,
                   seed: int = 0, force: bool = False, root: str = "experiments", ignore_label: int | None = None,
                   allow_missing_classes: bool = False, log: Callable[[str], None] = print,
                   annotation_format: str | None = None) -> str:
    """Write ``<root>/NAME/ddpm.json`` (see the module docstring); returns its path."""
    final = _check_arguments(name, root, test_images, test_masks, test_fraction, force)
    config_path = os.path.join(final, "ddpm.json")
    flags = merged_flags(sidecar_flags(model_path), model_flags)
    size = flags["image_size"]
    export, found = _classes(images, masks, classes, ignore_label, annotation_format, test_masks, test_images)
    names, palette, ignore = found.names, found.palette, found.ignore_label
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
        folders = _stage_folders(cfg, export, images, masks, test_images, test_masks, test_fraction, seed, stage,
                                 final, log)
        test_images = None if export else test_images
        splits = {split: ImageLabelDataset(path, 1, masks_dir=m, number_class=len(names), ignore_label=ignore,
                                           palette=palette) for split, (path, m) in folders.items()}
        counts = [len(splits["train"]), len(splits["test"])]
        write_text_atomic(os.path.join(stage, SUMMARY_FILE), _summarise(name, splits, found, allow_missing_classes,
                                                                        log))
        cfg.update(training_number=counts[0], testing_number=counts[1], dim=[size, size, 1])
        # Validation reads the split where it is staged; the config names where it will be.
        staged = {**cfg, **{k: stage + cfg[k][len(final):] for k in ("training_path", "testing_path")
                            if not test_images}}
        width = _feature_width(validate(staged, where="new config"), flags, log)
        cfg["dim"] = staged["dim"] = [size, size, width]
        staged = validate(staged, where="new config")
        Run(staged, flags, log)  # opens and checks the inputs as `ddpmseg train` does
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
