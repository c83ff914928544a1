"""One validated experiment config: JSON file + command-line overrides.

The per-dataset JSON files keep the original ddpm-segmentation keys so that a researcher
can diff them against the published ones; everything the original hard-coded is a key
here with its default defined once, in ``DEFAULTS``, with the reason next to it.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import Any, Callable

from .atomic import write_json_atomic
from .refine_settings import REFINE_METHODS, RefineSettings

# key -> (accepted types, default). A default of REQUIRED means the JSON must set it.
REQUIRED = object()

DEFAULTS: dict[str, tuple[tuple[type, ...], Any]] = {
    # --- the original keys (ddpm-segmentation experiments/*/ddpm.json) ---
    # Where runs go: the interpreter writes <exp_dir>/<steps>_<blocks>/ (the original's layout).
    "exp_dir": ((str,), REQUIRED),
    # A registered backbone (ddpmseg.features.registry): "ddpm": U-Net features; "mae", "swav", "swav_w2":
    # the paper's comparison backbones; "rgb_xy": each pixel's colour and position only, the no-context
    # baseline that shows what any learned features add.
    "model_type": ((str,), "ddpm"),
    # The dataset's name, e.g. "ffhq_34"; recorded with the run, read by no computation.
    "category": ((str,), REQUIRED),
    # Classes K: mask values are 0..K-1 (plus ignore_label).
    "number_class": ((int,), REQUIRED),
    # Label excluded from training and from mIoU; null when every pixel is scored.
    "ignore_label": ((int, type(None)), 255),
    # Folder of the labelled training images (and their .npy masks unless training_masks_path is set).
    "training_path": ((str,), REQUIRED),
    # Read by DatasetDDPM's DeepLab stage only; the interpreter never uses it.
    "validation_path": ((str,), ""),
    # Folder of the labelled test images that mIoU is measured on.
    "testing_path": ((str,), REQUIRED),
    # --- additions: masks in their own folder (ddpmseg.data.folders.resolve_folders); "" = .npy labels beside
    # the images, or the images/ + masks/ sub-folders of the dataset folder when it has both ---
    # Folder of the training masks; "" = beside the images or their masks/ sub-folder (resolve_folders).
    "training_masks_path": ((str,), ""),
    # Folder of the test masks, as training_masks_path.
    "testing_masks_path": ((str,), ""),
    # The backbone checkpoint (a guided-diffusion .pt for "ddpm"); "" only with random_weights or rgb_xy.
    "model_path": ((str,), REQUIRED),
    # Build the backbone with random weights drawn from ``seed`` instead of loading model_path
    # (which must then be ""): the untrained-backbone control, and runs without a download.
    "random_weights": ((bool,), False),
    # [S, S, C]: S is the working resolution, the side of the square windows that images of any size and
    # aspect are cut into (ddpmseg.data.windows); C must equal the collected feature size.
    "dim": ((list,), REQUIRED),
    # Diffusion steps t whose noisy image x_t the U-Net sees; each adds its activations to the features.
    "steps": ((list,), [50, 150, 250]),
    # U-Net decoder blocks whose activations are the features (guided-diffusion output_blocks indices).
    "blocks": ((list,), [5, 6, 7, 8, 12]),
    # Members of the pixel-classifier ensemble (the original: 10).
    "model_num": ((int,), 10),
    # Pixels per training batch of the pixel MLPs (the original: 64).
    "batch_size": ((int,), 64),
    # How many training images are used: the first by sorted path; more than the folder holds is an error.
    "training_number": ((int,), REQUIRED),
    # How many test images are scored: the first by sorted path; more than the folder holds is an error.
    "testing_number": ((int,), REQUIRED),
    # Only bilinear: the lazy per-pixel upsampling in the feature store implements exactly it.
    "upsample_mode": ((str,), "bilinear"),
    # One noise tensor for every image and timestep, as published.
    "share_noise": ((bool,), True),
    # Noise draws K each step's activations are averaged over, in the extractor (so the feature store does
    # not grow): draw 0 is the noise above, draws 1..K-1 come from the seeding table ("noise_draw"), see
    # ddpmseg.features.noise_draws. Extraction costs K forwards. 1 = one draw, as published; diffusion
    # backbones only (the others add no noise).
    "noise_draws": ((int,), 1),
    # Hook the block inputs instead of outputs (the SwAV extractor uses True).
    "input_activations": ((bool,), False),
    # --- additions: the diffusers / Stable Diffusion / DINOv2 backbones (ddpmseg.features) ---
    # Layers inside a diffusers U-Net's up blocks to hook besides the up_blocks.K that "blocks" lists,
    # by module name ("up_blocks.1.resnets.2", "up_blocks.1.attentions.0"): DIFT and Diffusion
    # Hyperfeatures read those.
    "hook_layers": ((list,), []),
    # Stable Diffusion's fixed text prompt; empty, as Diffusion Hyperfeatures use (DIFT too, mostly).
    "prompt": ((str,), ""),
    # A prompt embedding a previous run saved (prompt_embedding_*.safetensors in its exp_dir), so the
    # text encoder is never loaded; "" = compute it once and save it there.
    "prompt_embedding": ((str,), ""),
    # DINOv2's ViT: "vits14", "vitb14", "vitl14" or "vitg14" (torch.hub's dinov2_<arch> names).
    "dinov2_arch": ((str,), "vits14"),
    # The side images are resized to for DINOv2 (a multiple of its patch 14); null = the working
    # resolution dim[0] rounded up to one, so no detail is lost to the resize.
    "input_size": ((int, type(None)), None),
    # --- additions: names and colours that the original kept in src/data_util.py ---
    # One name per class, in class-id order (reports, metrics.json).
    "class_names": ((list,), REQUIRED),
    # One [r, g, b] colour per class: the visualisations, and the colours of RGB masks.
    "palette": ((list,), REQUIRED),
    # --- additions: values the original hard-coded ---
    # Seeds every random stream of a run (ddpmseg.common.seeding), so a rerun is identical.
    "seed": ((int,), 0),
    # Guided-diffusion flags for the U-Net; command-line MODEL_FLAGS override them.
    "model_flags": ((dict,), {}),
    # Adam learning rate of the pixel MLPs (original: 1e-3).
    "learning_rate": ((float,), 1e-3),
    # Upper bound on epochs per member (original: 100); early stopping ends far sooner.
    "max_epochs": ((int,), 100),
    # How the classes of the training pixels weigh in the MLPs' loss (ddpmseg.classifier.class_balance):
    # "inverse_frequency" / "sqrt_inverse_frequency" weight each pixel's cross-entropy by 1/f or 1/sqrt(f) of
    # its class's share f of the pixels trained on; "balanced_sampling" draws each batch so that every class
    # present is equally likely. "none": every pixel counts once and batches are shuffles, as published.
    "class_weighting": ((str,), "none"),
    # Early stopping starts once epoch index > this (original: 3, i.e. from the 5th epoch).
    "early_stop_after_epoch": ((int,), 3),
    # Stop after this many consecutive batches without a new best batch loss (original: 50).
    "early_stop_patience": ((int,), 50),
    # A class with fewer pixels than this in a training image is excluded from training there. The
    # original drops regions under 20 pixels of its 256 px images (the published 256 px configs keep that);
    # "auto" scales those 20 pixels by area, 20 * H * W / 256^2 and at least 1 (1.25 at 64 px), and
    # validate() writes the number into the resolved config. Default 0, every labelled pixel trains:
    # on celebamask64 (5 seeds, scripts/min_region.py) 0 scores highest, "auto" is within the seed
    # spread of it, and 20 loses 10 mIoU points because eyes and brows vanish from the training masks.
    "min_region_pixels": ((int, float, str), 0),
    # Image uncertainty = mean of this top fraction of per-pixel JS values (original: 0.1).
    "uncertainty_top_fraction": ((float,), 0.1),
    # Where native-resolution activations live: "ram" or "disk" (a memmap under exp_dir).
    "feature_store": ((str,), "ram"),
    # The ensemble's per-batch features: "lazy" upsamples each batch's pixels from the native maps;
    # "dense" upsamples every training pixel once into a float32 [pixels, dim] matrix (the same
    # values; a batch is then one row gather); "auto" = dense when that matrix fits the budget in
    # ddpmseg.classifier.train (celebamask64: yes; a bedroom_28-shaped run: no, it would be ~80 GiB).
    "feature_matrix": ((str,), "auto"),
    # How the ensemble's members train: "batched" (all in one batched step), "per_member" (one after
    # another, each as an ensemble of one on plain 2-D kernels), both the same computation
    # (ddpmseg.classifier.ensemble_step); "auto" times a few steps of each on the run's own shapes
    # when training starts and takes the faster: which one wins depends on device, threads and
    # feature size (docs/benchmarks.md), so a fixed default would be slow somewhere.
    "ensemble_step": ((str,), "auto"),
    # "auto" = CUDA when available, else CPU.
    "device": ((str,), "auto"),
    # Pairs of class ids that a mirror exchanges (left/right eye, brow, ear): horizontal flips in
    # augmentation and test-time views swap them, or they would teach and vote the wrong side.
    "hflip_class_pairs": ((list,), []),
    # --- method variants of the follow-up work; every default is the original method ---
    # "etf": CE on the classifier's own penultimate features projected on a fixed simplex ETF;
    # "etf_decoupled": the published code's separate trunk, which cannot affect the classifier.
    "regularizer": ((str,), "none"),
    # Loss = etf_alpha * CE(classifier) + etf_beta * CE(ETF logits) (published: 1 and 0.4).
    "etf_alpha": ((float,), 1.0),
    # The ETF loss weight of that sum (etf_alpha: the classifier's).
    "etf_beta": ((float,), 0.4),
    # How member (and test-time view) predictions merge: see ddpmseg.classifier.predict.VOTING_MODES.
    "voting": ((str,), "hard"),
    # Also score every voting mode on the same ensemble (metrics.json "by_voting").
    "report_all_votings": ((bool,), False),
    # "adamw" decouples weight decay from the gradient (the regularised fork
    # matosjan/ddpm-segmentation-coursework used AdamW, weight decay 1e-4).
    "optimizer": ((str,), "adam"),
    # Weight decay of the MLPs' optimizer; 0 = none, as published.
    "weight_decay": ((float,), 0.0),
    # Dropout after each hidden ReLU, placed by dropout_position (the regularised fork: 0.4); 0 = none, as published.
    "dropout": ((float,), 0.0),
    # Where that dropout sits: "before_bn" (the regularised fork's placement, so BatchNorm's running statistics
    # are gathered with dropout on and used with it off) or "after_bn" (Linear, ReLU, BN, Dropout), which
    # keeps BatchNorm's statistics those of the undropped activations. Default: the published placement.
    "dropout_position": ((str,), "before_bn"),
    # Augmented copies of each training image (image and mask transformed jointly, see
    # ddpmseg.data.augment); their features go into the same store. 0 = none, as published.
    "augmentation_copies": ((int,), 0),
    # Probability of each transform in the augmentation pipeline (the regularised fork: 0.4).
    "augmentation_p": ((float,), 0.4),
    # "original": an epoch is as many batches as the un-augmented images give (the regularised fork's), so
    # augmentation adds variety, not iterations; "all": an epoch is a pass over every copy.
    "epoch_pixels": ((str,), "original"),
    # Extra test-time views merged with the original by the configured voting (TTA_VIEWS below).
    "tta": ((list,), []),
    # Mask-prior refinement after the ensemble (ddpmseg.classifier.refine, after DDPS): {} = none, as published;
    # {"method": "ddps"} plus any RefineSettings field to change (the run's seed seeds it).
    "refine": ((dict,), {}),
    # Written by ddpmseg select into its selected.json, read by no computation: {"complete": false} when the
    # time budget stopped the search (training then says so), "fallback" when the config's own steps x blocks
    # were kept, "report" the selection.json. null for a config written by hand.
    "selection": ((dict, type(None)), None),
    # --- DatasetDDPM's DeepLab stage (train_deeplab.py); every default is the published run ---
    # DeepLab input side; null = the config's dim H (datasetDDPM.json used 256, its dim).
    "deeplab_res": ((int, type(None)), None),
    # torchvision DeepLabV3 backbone; the published run used ResNet-101.
    "deeplab_backbone": ((str,), "resnet101"),
    # Start from ImageNet backbone weights, as torchvision 0.11's default did for the published run.
    "deeplab_pretrained_backbone": ((bool,), True),
    # Which synthetic samples the uncertainty filter drops: see ddpmseg.data.synthetic.keep_by_uncertainty.
    "uncertainty_filter": ((str,), "most_uncertain"),
}

# Keys of the original configs that its code never read; accepted so published files load.
IGNORED_LEGACY_KEYS = {"max_training"}

CHOICES = {
    "upsample_mode": ("bilinear",),
    "feature_store": ("ram", "disk"),
    "feature_matrix": ("auto", "lazy", "dense"),
    "ensemble_step": ("auto", "batched", "per_member"),
    "regularizer": ("none", "etf", "etf_decoupled"),
    "voting": ("hard", "soft", "soft_prob", "weighted", "last_member"),
    "optimizer": ("adam", "adamw"),
    "class_weighting": ("none", "inverse_frequency", "sqrt_inverse_frequency", "balanced_sampling"),
    "dropout_position": ("before_bn", "after_bn"),
    "epoch_pixels": ("original", "all"),
    "deeplab_backbone": ("resnet101", "resnet50", "mobilenet_v3_large"),
    "uncertainty_filter": ("most_uncertain", "published"),
}

# The test-time views a config's "tta" may list (made by ddpmseg.data.augment.tta_view); "hflip" is
# geometric and undone on the prediction (left/right classes swapped back), the rest are photometric.
TTA_VIEWS = ("hflip", "color_jitter", "grayscale", "color_jitter_hflip")


class ConfigError(ValueError):
    """A config file or override is wrong; the message says what and how to fix it."""


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_type(key: str, value: Any, types: tuple[type, ...], where: str) -> Any:
    # JSON has one number type: accept an integer where a float is expected, never the reverse,
    # and never a bool for a number (bool is an int subclass in Python).
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{where}: '{key}' must be {_type_name(types)}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(
            f"{where}: '{key}' must be {_type_name(types)}, got {type(value).__name__} {value!r}"
        )
    return value


def _int_list(cfg: dict, key: str, where: str, length: int | None = None) -> None:
    v = cfg[key]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v) or (
        length is not None and len(v) != length
    ):
        want = f"a list of {length} integers" if length else "a list of integers"
        raise ConfigError(f"{where}: '{key}' must be {want}, got {v!r}")


# model_type -> its backbone class, filled by ddpmseg.features.registry.register: common comes before
# features, so validation reaches each backbone's own checks (check_config) through this table.
BACKBONE_CLASSES: dict[str, Any] = {}
# Imports ddpmseg.features, which fills BACKBONE_CLASSES; set by the top-level package (ddpmseg/__init__.py),
# and called on the first validation, so tools that never validate a config never load the backbones.
register_backbones: Callable[[], None] | None = None


def _check_model_type(cfg: dict, where: str) -> None:
    """``model_type`` is a registered backbone, and the keys that depend on it fit that backbone."""
    if not BACKBONE_CLASSES and register_backbones is not None:
        register_backbones()
    cls = BACKBONE_CLASSES.get(cfg["model_type"])
    if cls is None:
        raise ConfigError(f"{where}: 'model_type' must be one of {list(BACKBONE_CLASSES)}, got {cfg['model_type']!r}")
    cls.check_config(cfg, where)
    if cfg["noise_draws"] != 1 and not cls.uses_timesteps:
        raise ConfigError(f"{where}: model_type '{cfg['model_type']}' adds no noise, so there are no noise draws to "
                          f"average: set \"noise_draws\": 1 (got {cfg['noise_draws']})")


# The original's min_region_pixels and the image side it was chosen for.
ORIGINAL_MIN_REGION_PIXELS, ORIGINAL_RESOLUTION = 20, 256


def scaled_min_region_pixels(height: int, width: int) -> float:
    """The original's 20-pixel threshold scaled from 256 x 256 to ``height`` x ``width`` by area, at least 1."""
    return max(1.0, ORIGINAL_MIN_REGION_PIXELS * height * width / ORIGINAL_RESOLUTION ** 2)


def _resolve_min_region_pixels(out: dict, where: str) -> None:
    value = out["min_region_pixels"]
    if value == "auto":
        out["min_region_pixels"] = scaled_min_region_pixels(out["dim"][0], out["dim"][1])
    elif isinstance(value, str) or value < 0:
        raise ConfigError(f"{where}: 'min_region_pixels' must be \"auto\" or a number >= 0, got {value!r}")


def check_choice(key: str, value: Any, where: str) -> None:
    """Raise ConfigError if ``key`` has a fixed set of CHOICES and ``value`` is not one of them."""
    choices = CHOICES.get(key)
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: '{key}' must be one of {list(choices)}, got {value!r}")


def _reject_unknown_keys(cfg: dict, where: str) -> None:
    unknown = sorted(set(cfg) - set(DEFAULTS) - IGNORED_LEGACY_KEYS)
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, DEFAULTS.keys(), n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(hints)}. Known keys: {', '.join(sorted(DEFAULTS))}"
        )


def _with_defaults(cfg: dict, where: str) -> dict[str, Any]:
    """Every key of DEFAULTS: ``cfg``'s value, type-checked, or a fresh copy of the default."""
    out: dict[str, Any] = {}
    for key, (types, default) in DEFAULTS.items():
        if key in cfg:
            out[key] = check_type(key, cfg[key], types, where)
        elif default is REQUIRED:
            raise ConfigError(f"{where}: required key '{key}' is missing")
        else:
            out[key] = json.loads(json.dumps(default))  # a fresh copy of list/dict defaults
    return out


def _check_classes(out: dict, where: str) -> None:
    """number_class, and one name and one colour per class."""
    if out["number_class"] < 2:
        raise ConfigError(f"{where}: 'number_class' must be >= 2, got {out['number_class']}")
    k = out["number_class"]
    if len(out["class_names"]) != k or not all(isinstance(n, str) for n in out["class_names"]):
        raise ConfigError(
            f"{where}: 'class_names' must list {k} names (one per class), got {len(out['class_names'])}"
        )
    pal = out["palette"]
    if len(pal) != k or not all(
        isinstance(c, list) and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in pal
    ):
        raise ConfigError(f"{where}: 'palette' must be {k} [r, g, b] triples of integers 0..255")


def _check_ranges(out: dict, where: str) -> None:
    """Numbers that must be positive, non-negative or within an interval."""
    for key in ("model_num", "batch_size", "training_number", "testing_number", "max_epochs", "noise_draws"):
        if out[key] < 1:
            raise ConfigError(f"{where}: '{key}' must be >= 1, got {out[key]}")
    if not 0.0 < out["uncertainty_top_fraction"] <= 1.0:
        raise ConfigError(f"{where}: 'uncertainty_top_fraction' must be in (0, 1]")
    for key, lo, hi in (("dropout", 0.0, 0.99), ("augmentation_p", 0.0, 1.0)):
        if not lo <= out[key] <= hi:
            raise ConfigError(f"{where}: '{key}' must be in [{lo}, {hi}], got {out[key]}")
    for key in ("etf_alpha", "etf_beta", "weight_decay", "augmentation_copies"):
        if out[key] < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {out[key]}")


def _check_hflip_pairs(out: dict, where: str) -> None:
    pairs, k = out["hflip_class_pairs"], out["number_class"]
    ids = [i for p in pairs if isinstance(p, list) for i in p]
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: 'hflip_class_pairs' must be [a, b] pairs of distinct class ids 0..{k - 1}, "
                          f"got {pairs!r}")


def validate(cfg: dict, where: str = "config") -> dict:
    """Return a complete, type-checked copy of ``cfg`` with defaults filled in."""
    _reject_unknown_keys(cfg, where)
    out = _with_defaults(cfg, where)
    for key in CHOICES:
        check_choice(key, out[key], where)
    _int_list(out, "dim", where, 3)
    _int_list(out, "steps", where)
    _int_list(out, "blocks", where)
    _check_model_type(out, where)
    if out["dim"][0] != out["dim"][1]:
        raise ConfigError(f"{where}: 'dim' must be square [S, S, C], got {out['dim']}: S is the side of the square "
                          f"windows every image (of any size) is cut into (ddpmseg.data.windows); set S to the "
                          f"backbone's image size")
    _check_classes(out, where)
    _check_ranges(out, where)
    _resolve_min_region_pixels(out, where)
    _check_hflip_pairs(out, where)
    out["refine"] = refine_config(out["refine"], where)

    bad = [v for v in out["tta"] if v not in TTA_VIEWS]
    if bad or len(set(map(str, out["tta"]))) != len(out["tta"]):
        raise ConfigError(f"{where}: 'tta' must list distinct views from {list(TTA_VIEWS)}, got {out['tta']!r}")
    return out


def refine_config(raw: dict, where: str = "config") -> dict:
    """The config's ``refine`` value, checked and completed: {} stays {} (no refinement); else
    {"method": "ddps", every RefineSettings field but seed}. ConfigError says what is wrong."""
    if not raw:
        return {}
    where = f"{where}: 'refine'"
    raw = dict(raw)
    method = raw.pop("method", None)
    if method not in REFINE_METHODS:
        raise ConfigError(f"{where}: 'method' must be one of {list(REFINE_METHODS)}, got {method!r}")
    defaults = {f.name: f.default for f in fields(RefineSettings) if f.name != "seed"}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        why = " (the run's seed seeds the refiner)" if "seed" in unknown else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{why}; known: {', '.join(defaults)}")
    # The config's own type rules (an int is a float, a bool is no number); start_step may be null.
    merged = {**defaults, **{k: check_type(k, v, (int, type(None)) if defaults[k] is None else (type(defaults[k]),),
                                           where) for k, v in raw.items()}}
    try:
        RefineSettings(**merged).validate()
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return {"method": method, **merged}


def _read_json(path: str, chain: tuple[str, ...] = ()) -> dict:
    """One config file with its ``"base"`` chain merged in (the file's own keys win)."""
    if os.path.isdir(path):
        raise ConfigError(f"experiment config {path} is a folder, not a file: name its .json file (e.g. "
                          f"{os.path.join(path, 'ddpm.json')})")
    if not os.path.isfile(path):
        raise ConfigError(f"experiment config not found: {path}" + (f" (the base of {chain[-1]})" if chain else ""))
    if os.path.realpath(path) in map(os.path.realpath, chain):
        raise ConfigError(f"{path}: 'base' chain loops: {' -> '.join(chain + (path,))}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config, got {base!r}")
    # A base path is relative to the file that names it, so configs can be moved as a folder.
    return {**_read_json(os.path.join(os.path.dirname(path), base), chain + (path,)), **cfg}


def load_config(path: str, overrides: dict[str, Any] | None = None) -> dict:
    """Load an experiment JSON, apply ``overrides`` (already typed values), and validate.

    A file may start from another with ``"base": "ddpm.json"`` (relative to the file) and
    list only the keys it changes. Other relative paths are kept as written: like the
    original, they are relative to the directory the command runs in (the repository root).
    """
    cfg = _read_json(path)
    cfg.update(overrides or {})
    return validate(cfg, where=path)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` command-line override; the value is JSON if it parses, else a string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. exp_dir=runs/x)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def save_config(cfg: dict, path: str) -> None:
    """Write the resolved config atomically: the saved file is the only input evaluation needs."""
    write_json_atomic(path, cfg)
