"""The bad-input catalogue: every command-line tool, every kind of wrong input.

Each case builds its inputs in a fresh folder, runs the tool's ``main(argv)`` and checks the
error policy of the guide: exit status 2, exactly one ``error:`` line that names the culprit,
no traceback, and no new, changed or half-written file anywhere under the case's folder (the
tree of paths and file contents is compared before and after). The case in ``SUBPROCESS`` also
runs as a real process, to prove the exit status the shell sees.

Tests run as root, for whom chmod denies nothing; "permission" cases therefore put a file
where the tool must create a folder, which fails for every user alike. A full disk is a
write that raises ENOSPC: while the tool runs, every file opened for writing under the case
folder (with ``open`` or ``os.fdopen``, which is how every writer here reaches the disk,
torch.save and np.savez included) raises ``OSError(ENOSPC)`` on its first write, as a full
filesystem does.
"""
from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import demo
from ddpmseg.commands import evaluate
from ddpmseg.commands import generate as generate_dataset
from ddpmseg.commands import new as new_experiment
from ddpmseg.commands import sample
from ddpmseg.commands import segment
from ddpmseg.commands import select as select_features
from ddpmseg.commands import suggest
from ddpmseg.commands import train_ddpm
from ddpmseg.commands import deeplab as train_deeplab
from ddpmseg.commands import train as train_interpreter
from conftest import REPO, checkout_env, ddpmseg_command, shapes64
from ddpmseg.commands import COMMANDS

TOOLS = {"interp": train_interpreter, "eval": evaluate, "ddpm": train_ddpm, "sample": sample,
         "gen": generate_dataset, "deeplab": train_deeplab, "demo": demo, "newexp": new_experiment,
         "segment": segment, "select": select_features, "suggest": suggest}
# One case also runs as a real process (torch's import alone takes seconds there).
SUBPROCESS = {"interp-json-syntax"}
FACES = json.loads((REPO / "experiments/celebamask64/ddpm.json").read_text())
# /proc takes no new entries, not even from root: an output folder that no user can create.
UNWRITABLE = "/proc/ddpmseg-catalogue/out"
# A DDPM small enough to build in milliseconds (ddpmseg train-ddpm / ddpmseg sample cases).
TINY_DDPM = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
             "--attention_resolutions", "", "--diffusion_steps", "100"]


class Ctx:
    """The inputs of one case, all under ``root``."""

    def __init__(self, root: Path, ckpt: Path, run: Callable[[], Path]):
        self.root, self._ckpt, self._run = root, ckpt, run

    def data(self, train: int = 3, test: int = 2) -> tuple[Path, Path]:
        """Copies of the first shapes64 images (png + npy), so a case may break them."""
        src = shapes64() / "real"
        out = []
        for split, n in (("train", train), ("test", test)):
            dst = self.root / "data" / split
            dst.mkdir(parents=True, exist_ok=True)
            for png in sorted((src / split).glob("*.png"))[:n]:
                shutil.copy(png, dst / png.name)
                shutil.copy(png.with_suffix(".npy"), dst / png.with_suffix(".npy").name)
            out.append(dst)
        return out[0], out[1]

    def config(self, **changes) -> Path:
        """A complete rgb_xy experiment (no checkpoint to load) with ``changes``; None drops a key."""
        train, test = self.data()
        cfg = {k: FACES[k] for k in ("category", "number_class", "ignore_label", "class_names", "palette")}
        cfg.update(exp_dir=str(self.root / "exp"), model_type="rgb_xy", model_path="", dim=[64, 64, 5], steps=[],
                   blocks=[], training_path=str(train), testing_path=str(test), training_number=3, testing_number=2,
                   model_num=2, max_epochs=1, early_stop_after_epoch=0, early_stop_patience=3, device="cpu")
        cfg.update(changes)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        path = self.root / "exp.json"
        path.write_text(json.dumps(cfg))
        return path

    def ddpm_config(self) -> list[str]:
        """train_interpreter.py arguments of a model_type 'ddpm' run with the tiny 64 px U-Net."""
        train, test = self.data()
        return ["--exp", str(REPO / "experiments/celebamask64/ddpm.json"), "--exp_dir", str(self.root / "exp"),
                "--training_path", str(train), "--testing_path", str(test), "--model_path", str(self.ckpt()),
                "--set", "training_number=3", "--set", "testing_number=2", "--set", "steps=[50]",
                "--set", "dim=[64,64,384]", "--set", "device=cpu"]

    def ckpt(self) -> Path:
        """A copy of the tiny 64 px checkpoint and its flags sidecar."""
        dst = self.root / "ckpt"
        if not dst.exists():
            dst.mkdir()
            shutil.copy(self._ckpt, dst / "tiny64.pt")
            shutil.copy(self._ckpt.with_suffix(".json"), dst / "tiny64.json")
        return dst / "tiny64.pt"

    def run(self) -> Path:
        """A copy of a finished tiny train_interpreter.py run (model_type 'ddpm')."""
        dst = self.root / "run"
        if not dst.exists():
            shutil.copytree(self._run(), dst)
        return dst

    def rgb_run(self) -> Path:
        """A finished model_type 'rgb_xy' run, trained here (about a second)."""
        assert train_interpreter.main(["--exp", str(self.config())]) == 0
        return self.root / "exp"

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def file(self, name: str, content: bytes | str = b"") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def npz(self, n: int = 4, size: int = 64, classes: int = 19, **change) -> Path:
        """A synthetic DatasetDDPM set (images, masks, uncertainty) of ``n`` samples."""
        rng = np.random.default_rng(0)
        arrays = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                  "masks": rng.integers(0, classes, (n, size, size)).astype(np.uint8),
                  "uncertainty": rng.random(n)}
        arrays.update(change)
        path = self.root / "samples.npz"
        np.savez(path, *arrays.values())
        return path

    def ddpm_dir(self, n: int = 2) -> Path:
        """A folder of ``n`` unlabelled images for ddpmseg train-ddpm."""
        d = self.root / "unlabelled"
        d.mkdir(exist_ok=True)
        for png in sorted((shapes64() / "real" / "train").glob("*.png"))[:n]:
            shutil.copy(png, d / png.name)
        return d


def _edit_label(ctx: Ctx, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    cfg = ctx.config()
    label = sorted((ctx.root / "data" / "train").glob("*.npy"))[1]
    np.save(label, edit(np.load(label)))
    return cfg


def _edit_file(ctx: Ctx, split: str, pattern: str, edit: Callable[[Path], object]) -> list[str]:
    """The rgb_xy experiment with ``edit`` applied to the first ``pattern`` file of a data split."""
    cfg = ctx.config()
    edit(sorted((ctx.root / "data" / split).glob(pattern))[0])
    return ["--exp", str(cfg)]


def _broken_sidecar(ctx: Ctx) -> list[str]:
    argv = ctx.ddpm_config()
    ctx.file("ckpt/tiny64.json", "{not json")
    return argv


def _run_without_member_0(ctx: Ctx) -> list[str]:
    (ctx.rgb_run() / "model_0.pth").unlink()
    return ["--run", str(ctx.root / "exp")]


def _npz_of_two_arrays(ctx: Ctx) -> list[str]:
    np.savez(ctx.root / "two.npz", np.zeros(1), np.zeros(1))
    return _deeplab(ctx, npz=ctx.root / "two.npz")


def _deeplab(ctx: Ctx, *extra: str, npz: Path | None = None, **cfg_changes) -> list[str]:
    exp = ctx.config(deeplab_pretrained_backbone=False, deeplab_backbone="mobilenet_v3_large", **cfg_changes)
    return ["--exp", str(exp), "--data_path", str(npz or ctx.npz()), "--deeplab_batch_size", "2", "--num_epoch", "1",
            "--workers", "0", *extra]


def _deeplab_epoch(ctx: Ctx, learning_rate: float) -> list[str]:
    """An interrupted DeepLab run whose epoch 0 was trained with another learning rate."""
    argv = _deeplab(ctx, "--num_epoch", "2")
    folder = ctx.root / "exp" / "deeplab_class_19_checkpoint_0_filter_out_0.100000"
    folder.mkdir(parents=True)
    signature = {"deeplab_backbone": "mobilenet_v3_large", "number_class": 19, "deeplab_res": 64,
                 "deeplab_pretrained_backbone": False, "uncertainty_filter": "most_uncertain", "seed": 0,
                 "learning_rate": learning_rate, "batch_size": 2}
    torch.save({"epoch": 0, "model_state_dict": {}, "signature": signature}, folder / "deeplab_epoch_0.pth")
    return argv


def _ddpm_resumed(ctx: Ctx, flags: dict | None = None, **changed) -> list[str]:
    """ddpmseg train-ddpm arguments resuming a log_dir whose train_config.json has ``changed`` options
    and model ``flags``."""
    data, log_dir = ctx.ddpm_dir(), ctx.root / "log"
    argv = ["--data_dir", str(data), "--log_dir", str(log_dir), "--batch_size", "2", "--max_steps", "1",
            "--device", "cpu", *TINY_DDPM]
    opts = train_ddpm.options_from_args(train_ddpm.build_parser().parse_args(argv))
    changed["model_flags"] = {**opts.model_flags, **(flags or {})}
    ctx.file("log/train_config.json", json.dumps(dataclasses.asdict(dataclasses.replace(opts, **changed))))
    return argv


def _sample_resumed(ctx: Ctx) -> list[str]:
    """ddpmseg sample arguments resuming an interrupted run (its shards/generation.json is there)."""
    argv = ["--model_path", str(ctx.ckpt()), "--out", str(ctx.root / "samples"), "--num_samples", "2",
            "--batch_size", "1", "--use_ddim", "True", "--timestep_respacing", "ddim2", "--device", "cpu"]
    args = sample.build_parser().parse_args(argv)
    opts = sample.dataclass_from_args(sample.SampleOptions, args)
    record = {"model_path": os.path.abspath(args.model_path), **dataclasses.asdict(opts), "image_size": 64,
              "labelled": False}
    ctx.file("samples/shards/generation.json", json.dumps(record, indent=1) + "\n")
    return argv


def _interp_resumed(ctx: Ctx, **changes) -> list[str]:
    """An interrupted rgb_xy run (member 1 missing) rerun with config ``changes``."""
    run = ctx.rgb_run()
    (run / "model_1.pth").unlink()
    return ["--exp", str(ctx.config(**changes))]


def _evaluated_once(ctx: Ctx) -> list[str]:
    """ddpmseg evaluate arguments that write again into the folder of an earlier evaluation."""
    argv = ["--run", str(ctx.rgb_run()), "--out", str(ctx.root / "eval")]
    assert evaluate.main(argv) == 0
    return argv


def _gen_out_is_file(ctx: Ctx) -> list[str]:
    out = ctx.file("gen_out")
    return ["--run_dir", str(ctx.run()), "--out", str(out), "--num_samples", "1", "--batch_size", "1",
            "--use_ddim", "True", "--timestep_respacing", "ddim2", "--device", "cpu"]


# (id, tool, setup(ctx) -> argv, text the error must contain, disk full while the tool runs)
def _new_experiment(ctx: Ctx, images: Path | None = None, rename_mask: bool = False) -> list[str]:
    """ddpmseg new on images/ + masks/ copies of the data (it would write experiments/NAME)."""
    train, _ = ctx.data()
    img_dir, mask_dir = ctx.folder("own/images"), ctx.folder("own/masks")
    for png in sorted(train.glob("*.png")):
        shutil.copy(png, img_dir / png.name)
        shutil.copy(png.with_suffix(".npy"), mask_dir / png.with_suffix(".npy").name)
    if rename_mask:
        first = sorted(mask_dir.glob("*.npy"))[0]
        first.rename(mask_dir / "someone_else.npy")
    return ["--name", f"catalogue_{ctx.root.name}", "--images", str(images or img_dir), "--masks", str(mask_dir),
            "--model_path", str(ctx.ckpt()), "--steps", "50", "--blocks", "4"]


def _segment(ctx: Ctx, run: str, images: Path | None = None) -> list[str]:
    if images is None:
        images = ctx.data()[1]
    return ["--run", run, "--images", str(images), "--out", str(ctx.root / "segmented")]


def _sample(ctx: Ctx, *extra: str, out: str | None = None) -> list[str]:
    """ddpmseg sample arguments drawing one DDIM sample of two steps from the tiny checkpoint."""
    return ["--model_path", str(ctx.ckpt()), "--out", out or str(ctx.root / "s"), "--num_samples", "1",
            "--batch_size", "1", "--use_ddim", "True", "--timestep_respacing", "ddim2", "--device", "cpu", *extra]


def _generate(ctx: Ctx, *extra: str, out: str | None = None) -> list[str]:
    """ddpmseg generate arguments labelling one DDIM sample of the finished tiny run."""
    return ["--run_dir", str(ctx.run()), "--out", out or str(ctx.root / "g"), "--num_samples", "1",
            "--batch_size", "1", "--use_ddim", "True", "--timestep_respacing", "ddim2", "--device", "cpu", *extra]


def _train_ddpm(ctx: Ctx, *extra: str, log_dir: str | None = None) -> list[str]:
    return ["--data_dir", str(ctx.ddpm_dir()), "--log_dir", log_dir or str(ctx.root / "log"), "--batch_size", "2",
            "--max_steps", "1", "--device", "cpu", *TINY_DDPM, *extra]


def _select(ctx: Ctx) -> list[str]:
    """ddpmseg select on the tiny U-Net's experiment (training images only)."""
    argv = ctx.ddpm_config()
    return [*argv[:2], "--set", f"exp_dir={argv[3]}", "--set", f"training_path={argv[5]}",
            "--set", f"testing_path={argv[7]}", "--set", f"model_path={argv[9]}", "--set", "training_number=3",
            "--folds", "3", "--out", str(ctx.root / "selection")]


def _suggest(ctx: Ctx, k: int = 2, pool: Path | None = None) -> list[str]:
    run = ctx.rgb_run()
    if pool is None:
        pool = ctx.data()[1]
    return ["--run", str(run), "--pool", str(pool), "--k", str(k), "--out", str(ctx.root / "suggested")]


CASES: list[tuple[str, str, Callable[[Ctx], list[str]], str, bool]] = [
    # --- experiment configs: files, JSON syntax, keys, types, ranges (train_interpreter.py) ---
    ("interp-config-missing", "interp", lambda c: ["--exp", str(c.root / "nope.json")], "nope.json", False),
    ("interp-json-syntax", "interp", lambda c: ["--exp", str(c.file("bad.json", '{"exp_dir": "x",}'))],
     "not valid JSON", False),
    ("interp-json-not-object", "interp", lambda c: ["--exp", str(c.file("list.json", "[1, 2]"))],
     "top level must be a JSON object", False),
    ("interp-base-loop", "interp", lambda c: ["--exp", str(c.file("loop.json", '{"base": "loop.json"}'))],
     "'base' chain loops", False),
    ("interp-unknown-key", "interp", lambda c: ["--exp", str(c.config(model_nmu=2))], "'model_nmu'", False),
    ("interp-missing-key", "interp", lambda c: ["--exp", str(c.config(category=None))], "'category'", False),
    ("interp-type-str-for-int", "interp", lambda c: ["--exp", str(c.config(number_class="19"))],
     "'number_class' must be int", False),
    ("interp-type-bool-for-int", "interp", lambda c: ["--exp", str(c.config(model_num=True))],
     "'model_num' must be int", False),
    ("interp-set-bad-json-value", "interp", lambda c: ["--exp", str(c.config()), "--set", "batch_size=6x"],
     "'batch_size' must be int", False),
    ("interp-set-no-equals", "interp", lambda c: ["--exp", str(c.config()), "--set", "voting"],
     "override 'voting' must look like key=value", False),
    ("interp-range-model-num", "interp", lambda c: ["--exp", str(c.config(model_num=0))],
     "'model_num' must be >= 1", False),
    ("interp-range-dropout", "interp", lambda c: ["--exp", str(c.config(dropout=1.5))], "'dropout' must be in",
     False),
    ("interp-choice-voting", "interp", lambda c: ["--exp", str(c.config(voting="majority"))],
     "'voting' must be one of", False),
    ("interp-dim-length", "interp", lambda c: ["--exp", str(c.config(dim=[64, 64]))], "'dim' must be a list of 3",
     False),
    ("interp-dim-not-square", "interp", lambda c: ["--exp", str(c.config(dim=[64, 32, 5]))],
     "'dim' must be square", False),
    ("interp-dim-channels", "interp", lambda c: ["--exp", str(c.config(dim=[64, 64, 6]))],
     "'dim' says 6 feature channels", False),
    ("interp-class-names", "interp", lambda c: ["--exp", str(c.config(class_names=["a", "b"]))],
     "'class_names' must list 19 names", False),
    ("interp-palette-range", "interp", lambda c: ["--exp", str(c.config(palette=[[300, 0, 0]] * 19))],
     "'palette'", False),
    ("interp-flip-pairs", "interp", lambda c: ["--exp", str(c.config(hflip_class_pairs=[[4, 40]]))],
     "'hflip_class_pairs'", False),
    ("interp-noise-draws-no-noise", "interp", lambda c: ["--exp", str(c.config(noise_draws=4))],
     "model_type 'rgb_xy' adds no noise, so there are no noise draws to average", False),
    ("interp-range-noise-draws", "interp", lambda c: ["--exp", str(c.config(model_type="ddpm", random_weights=True, steps=[50],
                                                                blocks=[5], noise_draws=0))],
     "'noise_draws' must be >= 1", False),
    ("interp-choice-class-weighting", "interp", lambda c: ["--exp", str(c.config(class_weighting="inverse"))],
     "'class_weighting' must be one of", False),
    ("interp-tta-view", "interp", lambda c: ["--exp", str(c.config(tta=["rotate"]))], "'tta' must list", False),
    ("interp-model-flag-rgb", "interp", lambda c: ["--exp", str(c.config()), "--num_channels", "64"],
     "apply to model_type 'ddpm' only", False),
    ("interp-flag-bad-int", "interp", lambda c: ["--exp", str(c.config()), "--seed", "abc"],
     "argument --seed: invalid int value", False),
    ("interp-random-weights-and-path", "interp",
     lambda c: ["--exp", str(c.config(model_type="ddpm", random_weights=True, model_path="x.pt"))],
     "'random_weights'", False),
    # --- dataset folders, images and labels ---
    ("interp-train-folder-missing", "interp",
     lambda c: ["--exp", str(c.config(training_path=str(c.root / "nowhere")))], "nowhere", False),
    ("interp-train-folder-empty", "interp",
     lambda c: ["--exp", str(c.config(training_path=str((c.root / "empty").mkdir() or c.root / "empty")))],
     "no images in", False),
    ("interp-label-missing", "interp", lambda c: _edit_file(c, "train", "*.npy", lambda p: p.unlink()),
     "have no label file", False),
    ("interp-image-truncated", "interp",
     lambda c: _edit_file(c, "test", "*.png", lambda p: p.write_bytes(p.read_bytes()[:200])),
     "cannot be read as an image", False),
    ("interp-image-other-size-than-label", "interp",
     lambda c: _edit_file(c, "train", "*.png", lambda p: Image.new("RGB", (64, 48)).save(p)),
     "label shape (64, 64) does not match the image's (H, W) (48, 64)", False),
    ("interp-label-shape", "interp", lambda c: ["--exp", str(_edit_label(c, lambda a: a[:32]))],
     "does not match the image's", False),
    ("interp-label-float", "interp", lambda c: ["--exp", str(_edit_label(c, lambda a: a.astype(np.float32)))],
     "label dtype is float32", False),
    ("interp-label-range", "interp", lambda c: ["--exp", str(_edit_label(c, lambda a: a + 30))],
     "are invalid with number_class=19", False),
    ("interp-label-pickled", "interp", lambda c: ["--exp", str(_edit_label(c, lambda a: np.array([{"a": 1}])))],
     "cannot be read as a .npy array", False),
    # --- checkpoints (model_type 'ddpm' with the tiny U-Net) ---
    ("interp-ckpt-missing", "interp", lambda c: [*c.ddpm_config(), "--model_path", str(c.root / "gone.pt")],
     "checkpoint not found", False),
    ("interp-ckpt-garbage", "interp", lambda c: [*c.ddpm_config(), "--model_path", str(c.file("junk.pt", b"x" * 99))],
     "cannot be read as a PyTorch checkpoint", False),
    ("interp-ckpt-wrong-flags", "interp", lambda c: [*c.ddpm_config(), "--num_channels", "64"],
     "does not match the model", False),
    ("interp-ckpt-sidecar-broken", "interp", _broken_sidecar, "tiny64.json", False),
    ("interp-unknown-model-flag", "interp", lambda c: [*c.ddpm_config(), "--set", 'model_flags={"num_chanels": 8}'],
     "unknown model flag(s) ['num_chanels']", False),
    # --- run folders: blocked, resumed with another config, full disk ---
    ("interp-exp-dir-is-file", "interp", lambda c: ["--exp", str(c.config(exp_dir=str(c.file("blocked"))))],
     "blocked", False),
    ("interp-resume-changed-config", "interp", lambda c: _interp_resumed(c, learning_rate=0.01, batch_size=32),
     "batch_size, learning_rate", False),
    ("interp-resume-disk-full", "interp", lambda c: _interp_resumed(c), "exp/config.json: No space left on device",
     True),
    # --- ddpmseg evaluate ---
    ("eval-no-config", "eval", lambda c: ["--run", str((c.root / "empty").mkdir() or c.root / "empty")],
     "has no config.json", False),
    ("eval-training-key", "eval", lambda c: ["--run", str(c.rgb_run()), "--set", "model_num=3"],
     "['model_num'] change the trained ensemble", False),
    ("eval-bad-voting", "eval", lambda c: ["--run", str(c.rgb_run()), "--set", "voting=majority"],
     "'voting' must be one of", False),
    ("eval-missing-members", "eval", _run_without_member_0, "lacks ensemble members [0]", False),
    ("eval-out-is-file", "eval", lambda c: ["--run", str(c.rgb_run()), "--out", str(c.file("taken"))], "taken",
     False),
    ("eval-disk-full", "eval", _evaluated_once, "eval/config.json: No space left on device", True),
    # --- generate_dataset.py ---
    ("gen-run-missing", "gen", lambda c: ["--run_dir", str(c.root / "norun"), "--num_samples", "1"],
     "has no config.json", False),
    ("gen-rgb-run", "gen", lambda c: ["--run_dir", str(c.rgb_run()), "--num_samples", "1", "--batch_size", "1"],
     "model_type 'rgb_xy'", False),
    ("gen-zero-batch", "gen", lambda c: ["--run_dir", str(c.root / "x"), "--num_samples", "1", "--batch_size", "0"],
     "batch_size must be positive", False),
    ("gen-out-is-file", "gen", _gen_out_is_file, "gen_out", False),
    # --- ddpmseg train-ddpm ---
    ("ddpm-data-missing", "ddpm", lambda c: ["--data_dir", str(c.root / "none"), "--log_dir", str(c.root / "log"),
                                             *TINY_DDPM], "image folder not found", False),
    ("ddpm-batch-too-big", "ddpm", lambda c: ["--data_dir", str(c.ddpm_dir()), "--log_dir", str(c.root / "log"),
                                              "--batch_size", "4", *TINY_DDPM], "but batch_size is 4", False),
    ("ddpm-ema-rate", "ddpm", lambda c: ["--data_dir", str(c.ddpm_dir()), "--log_dir", str(c.root / "log"),
                                         "--ema_rate", "1.5", *TINY_DDPM], "ema_rate '1.5'", False),
    ("ddpm-precision-cpu", "ddpm", lambda c: ["--data_dir", str(c.ddpm_dir()), "--log_dir", str(c.root / "log"),
                                              "--batch_size", "2", "--precision", "bf16", "--device", "cpu",
                                              *TINY_DDPM], "precision bf16 needs a CUDA device", False),
    ("ddpm-flags-file-json", "ddpm", lambda c: ["--data_dir", str(c.ddpm_dir()), "--log_dir", str(c.root / "log"),
                                                "--model_flags", str(c.file("flags.json", "{oops"))],
     "--model_flags", False),
    ("ddpm-flag-bool", "ddpm", lambda c: ["--data_dir", "d", "--log_dir", "l", "--learn_sigma", "maybe"],
     "argument --learn_sigma", False),
    ("ddpm-log-dir-is-file", "ddpm", lambda c: ["--data_dir", str(c.ddpm_dir()), "--log_dir", str(c.file("logf")),
                                                "--batch_size", "2", "--device", "cpu", *TINY_DDPM], "logf", False),
    ("ddpm-resume-changed-lr", "ddpm", lambda c: _ddpm_resumed(c, lr=1e-3, random_flip=False),
     "lr: 0.001 -> 0.0001; random_flip: False -> True", False),
    ("ddpm-resume-changed-flags", "ddpm", lambda c: _ddpm_resumed(c, flags={"num_channels": 64}),
     "model_flags.num_channels: 64 -> 32", False),
    # --- ddpmseg sample ---
    ("sample-ckpt-missing", "sample", lambda c: ["--model_path", str(c.root / "x.pt"), "--out", str(c.root / "s")],
     "checkpoint not found", False),
    ("sample-zero-samples", "sample", lambda c: ["--model_path", "x.pt", "--out", str(c.root / "s"),
                                                 "--num_samples", "0"], "num_samples must be positive", False),
    ("sample-ddim-spacing", "sample", lambda c: ["--model_path", "x.pt", "--out", str(c.root / "s"),
                                                 "--timestep_respacing", "ddim5"], "add --use_ddim True", False),
    ("sample-wrong-flags", "sample", lambda c: ["--model_path", str(c.ckpt()), "--out", str(c.root / "s"),
                                                "--num_channels", "64", "--device", "cpu"],
     "does not match the model", False),
    ("sample-impossible-flags", "sample", lambda c: ["--model_path", str(c.ckpt()), "--out", str(c.root / "s"),
                                                     "--num_channels", "16", "--device", "cpu"],
     "num_channels (16) must be divisible by num_groups (32)", False),
    ("sample-out-is-file", "sample", lambda c: ["--model_path", str(c.ckpt()), "--out", str(c.file("sfile")),
                                                "--num_samples", "1", "--batch_size", "1", "--device", "cpu"],
     "sfile", False),
    ("sample-resume-changed-seed", "sample", lambda c: [*_sample_resumed(c), "--seed", "3"], "'seed': (0, 3)",
     False),
    ("sample-disk-full", "sample", _sample_resumed, "generation.json: No space left on device", True),
    # --- train_deeplab.py ---
    ("deeplab-npz-missing", "deeplab", lambda c: _deeplab(c, npz=c.root / "none.npz"),
     "synthetic dataset not found", False),
    ("deeplab-npz-arrays", "deeplab", _npz_of_two_arrays, "holds 2 arrays", False),
    ("deeplab-mask-range", "deeplab", lambda c: _deeplab(c, npz=c.npz(masks=np.full((4, 64, 64), 40, np.uint8))),
     "mask values [40]", False),
    ("deeplab-portion", "deeplab", lambda c: _deeplab(c, "--uncertainty_portion", "1.5"),
     "--uncertainty_portion must be in [0, 1)", False),
    ("deeplab-batch-size-zero", "deeplab", lambda c: _deeplab(c, "--deeplab_batch_size", "0"),
     "--deeplab_batch_size must be >= 1",
     False),
    ("deeplab-res-small", "deeplab", lambda c: _deeplab(c, deeplab_res=16), "'deeplab_res' must be >= 32", False),
    ("deeplab-aspp-dropout", "deeplab", lambda c: _deeplab(c, "--aspp_dropout", "1"),
     "--aspp_dropout must be in [0, 1)", False),
    ("deeplab-autocast-on-cpu", "deeplab", lambda c: _deeplab(c, "--precision", "bf16", "--device", "cpu"),
     "precision bf16 needs a CUDA device; on cpu use fp32", False),
    ("deeplab-too-few-kept", "deeplab", lambda c: _deeplab(c, "--deeplab_batch_size", "3", "--uncertainty_portion", "0.5"),
     "only 2 synthetic samples are kept", False),
    ("deeplab-resume-missing", "deeplab", lambda c: _deeplab(c, "--resume", str(c.root / "e.pth")),
     "checkpoint not found", False),
    ("deeplab-resume-garbage", "deeplab", lambda c: _deeplab(c, "--resume", str(c.file("e.pth", b"junk"))),
     "cannot be read as a checkpoint", False),
    ("deeplab-resume-changed-lr", "deeplab", lambda c: _deeplab_epoch(c, learning_rate=0.01),
     "learning_rate 0.01 (now 0.001)", False),
    # --- ddpmseg demo ---
    ("demo-preset", "demo", lambda c: ["--out", str(c.root / "d"), "--preset", "huge"], "argument --preset", False),
    ("demo-out-is-file", "demo", lambda c: ["--out", str(c.file("dfile")), "--preset", "smoke", "--device", "cpu"],
     "dfile", False),
    # --- your own data, feature selection, labelling suggestions ---
    ("newexp-empty-images", "newexp", lambda c: _new_experiment(c, images=c.folder("empty")), "empty", False),
    ("newexp-mask-of-another-stem", "newexp", lambda c: _new_experiment(c, rename_mask=True), "someone_else.npy",
     False),
    ("segment-run-without-member-0", "segment", lambda c: _segment(c, _run_without_member_0(c)[1]),
     "lacks ensemble members [0]", False),
    ("segment-empty-images-folder", "segment", lambda c: _segment(c, str(c.rgb_run()), images=c.folder("none")),
     "no image", False),
    ("select-block-the-unet-lacks", "select", lambda c: [*_select(c), "--blocks", "99"], "block", False),
    ("select-step-beyond-diffusion", "select", lambda c: [*_select(c), "--steps", "1000"], "1000", False),
    ("suggest-k-larger-than-pool", "suggest", lambda c: _suggest(c, k=50), "k", False),
    ("suggest-empty-pool", "suggest", lambda c: _suggest(c, pool=c.folder("empty_pool")), "empty_pool", False),
    # --- values only the checkpoint can check: steps, blocks, respacing, image size (before any feature) ---
    ("interp-step-beyond-diffusion", "interp", lambda c: [*c.ddpm_config(), "--set", "steps=[5000]"],
     "steps [5000] do not exist: this diffusion has 1000 steps, so 'steps' must lie in 0..999", False),
    ("interp-block-the-unet-lacks", "interp", lambda c: [*c.ddpm_config(), "--set", "blocks=[99]"],
     "blocks [99] do not exist: this U-Net has decoder blocks (output_blocks) 0..11", False),
    ("interp-dim-other-than-checkpoint-size", "interp", lambda c: [*c.ddpm_config(), "--set", "dim=[128,128,384]"],
     "was trained at 64 px (image_size in its .json beside it): set \"dim\": [64, 64, 384]", False),
    ("newexp-step-beyond-diffusion", "newexp",
     lambda c: [*_new_experiment(c)[:-4], "--steps", "5000", "--blocks", "4", "--allow_missing_classes"],
     "steps [5000] do not exist", False),
    ("sample-respacing-beyond-diffusion", "sample", lambda c: _sample(c, "--timestep_respacing", "ddim5000"),
     "--timestep_respacing 'ddim5000' does not fit this model's 1000 diffusion steps", False),
    ("sample-image-size-other-than-checkpoint", "sample", lambda c: _sample(c, "--image_size", "128"),
     "image_size 128 (--image_size or --model_flags), but", False),
    ("gen-respacing-beyond-diffusion", "gen", lambda c: _generate(c, "--timestep_respacing", "5000",
                                                                   "--use_ddim", "False"),
     "--timestep_respacing '5000' does not fit this model's 1000 diffusion steps", False),
    # --- output folders probed (created, a temp file written, all of it removed) before any work ---
    ("interp-exp-dir-cannot-be-created", "interp", lambda c: [*c.ddpm_config(), "--exp_dir", UNWRITABLE],
     f"exp_dir {UNWRITABLE}/50_4_5_6_7_8 cannot be created or written", False),
    ("eval-out-cannot-be-created", "eval", lambda c: ["--run", str(c.rgb_run()), "--out", UNWRITABLE],
     f"--out {UNWRITABLE} cannot be created", False),
    ("segment-out-cannot-be-created", "segment", lambda c: [*_segment(c, str(c.rgb_run()))[:-1], UNWRITABLE],
     f"--out {UNWRITABLE} cannot be created", False),
    ("suggest-out-cannot-be-created", "suggest", lambda c: [*_suggest(c)[:-1], UNWRITABLE],
     f"--out {UNWRITABLE} cannot be created", False),
    ("select-out-cannot-be-created", "select", lambda c: [*_select(c)[:-1], UNWRITABLE],
     f"--out {UNWRITABLE} cannot be created", False),
    ("gen-out-cannot-be-created", "gen", lambda c: _generate(c, out=UNWRITABLE), f"--out {UNWRITABLE} cannot be",
     False),
    ("sample-out-cannot-be-created", "sample", lambda c: _sample(c, out=UNWRITABLE), f"--out {UNWRITABLE} cannot be",
     False),
    ("ddpm-log-dir-cannot-be-created", "ddpm", lambda c: _train_ddpm(c, log_dir=UNWRITABLE),
     f"--log_dir {UNWRITABLE} cannot be created", False),
    ("deeplab-exp-dir-cannot-be-created", "deeplab", lambda c: _deeplab(c, exp_dir=UNWRITABLE),
     f"the DeepLab run folder (under exp_dir) {UNWRITABLE}/deeplab_class_19", False),
    # --- path kinds: a folder where a file is meant, a file where a folder is ---
    ("interp-ckpt-is-a-folder", "interp", lambda c: [*c.ddpm_config(), "--model_path", str(c.folder("ckptdir"))],
     "ckptdir is a folder, not a checkpoint file", False),
    ("interp-config-is-a-folder", "interp", lambda c: ["--exp", str(c.folder("configs"))],
     "configs is a folder, not a file", False),
    ("interp-train-folder-is-a-file", "interp", lambda c: ["--exp", str(c.config(training_path=str(c.file("tr"))))],
     "tr is a file, not a folder", False),
    ("interp-masks-folder-is-a-file", "interp",
     lambda c: ["--exp", str(c.config(training_masks_path=str(c.file("mk"))))], "mk is a file, not a folder", False),
    ("eval-run-is-a-file", "eval", lambda c: ["--run", str(c.file("run.txt"))], "run.txt is a file, not a folder",
     False),
    ("segment-run-is-a-file", "segment", lambda c: _segment(c, str(c.file("run.txt"))),
     "run.txt is a file, not a folder", False),
    ("gen-run-is-a-file", "gen", lambda c: ["--run_dir", str(c.file("run.txt")), "--num_samples", "1"],
     "run.txt is a file, not a folder", False),
    ("suggest-pool-is-a-file", "suggest", lambda c: _suggest(c, pool=c.file("pool.png")),
     "pool.png is a file, not a folder", False),
    ("sample-ckpt-is-a-folder", "sample", lambda c: ["--model_path", str(c.folder("ckptdir")), "--out",
                                                     str(c.root / "s"), "--device", "cpu"],
     "ckptdir is a folder, not a checkpoint file", False),
    ("sample-flags-file-is-a-folder", "sample", lambda c: _sample(c, "--model_flags", str(c.folder("flagsdir"))),
     "--model_flags", False),
    ("ddpm-data-dir-is-a-file", "ddpm", lambda c: ["--data_dir", str(c.file("one.png")), "--log_dir",
                                                   str(c.root / "log"), *TINY_DDPM], "one.png is a file", False),
    ("deeplab-npz-is-a-folder", "deeplab", lambda c: _deeplab(c, npz=c.folder("npzdir")),
     "npzdir is a folder, not a file", False),
    ("deeplab-resume-is-a-folder", "deeplab", lambda c: _deeplab(c, "--resume", str(c.folder("epochs"))),
     "epochs is a folder, not a file", False),
    ("newexp-ckpt-is-a-folder", "newexp",
     lambda c: [*_new_experiment(c), "--model_path", str(c.folder("ckptdir")), "--allow_missing_classes"],
     "ckptdir is a folder, not a checkpoint file", False),
    # --- counts against what exists ---
    ("interp-training-number-beyond-folder", "interp", lambda c: ["--exp", str(c.config(training_number=50))],
     "'training_number' is 50, but", False),
    ("interp-testing-number-beyond-folder", "interp", lambda c: ["--exp", str(c.config(testing_number=50))],
     "'testing_number' is 50, but", False),
    ("interp-refine-folds-beyond-images", "interp",
     lambda c: ["--exp", str(c.config(refine={"method": "ddps", "folds": 5}))],
     "'refine' folds 5 is more than the 3 training images", False),
    ("eval-testing-number-beyond-folder", "eval",
     lambda c: ["--run", str(c.rgb_run()), "--set", "testing_number=50"], "'testing_number' is 50, but", False),
    ("select-training-number-beyond-folder", "select", lambda c: [*_select(c), "--set", "training_number=50"],
     "'training_number' is 50, but", False),
    ("deeplab-testing-number-beyond-folder", "deeplab", lambda c: _deeplab(c, testing_number=50),
     "'testing_number' is 50, but", False),

]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: folders as "dir", files by size and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


class _NoSpaceFile:
    """A file object whose writes fail as on a full filesystem."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def disk_full(monkeypatch, root: Path) -> None:
    """Make every file opened for writing under ``root`` raise ENOSPC on write."""
    real_open, real_fdopen, root = builtins.open, os.fdopen, os.path.realpath(root)

    def under_root(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(root + os.sep)

    def writing(mode: str) -> bool:
        return any(m in mode for m in "wax+")

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _NoSpaceFile(f) if writing(mode) and under_root(file) else f

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd}")
        f = real_fdopen(fd, mode, *args, **kwargs)
        return _NoSpaceFile(f) if writing(mode) and under_root(path) else f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)


@pytest.fixture(scope="module")
def finished_run(request):
    """The conftest's finished tiny interpreter run, built only if a case needs it."""
    return lambda: request.getfixturevalue("tiny_interpreter_run")


def check_error(rc: int, err: str, culprit: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert culprit in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("case_id, tool, setup, culprit, full", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, tool, setup, culprit, full, tmp_path, capsys, monkeypatch, tiny64_checkpoint,
                   finished_run):
    ctx = Ctx(tmp_path, tiny64_checkpoint, finished_run)
    argv = setup(ctx)
    capsys.readouterr()
    before = tree(tmp_path)
    if full:
        disk_full(monkeypatch, tmp_path)
    try:
        rc = TOOLS[tool].main(argv)
    except SystemExit as e:  # argparse's own exit
        rc = e.code
    finally:
        monkeypatch.undo()
    check_error(rc, capsys.readouterr().err, culprit)
    assert tree(tmp_path) == before
    if case_id in SUBPROCESS:
        name = next(n for n, c in COMMANDS.items() if TOOLS[tool].__name__ == f"ddpmseg.commands.{c.module}")
        proc = subprocess.run([*ddpmseg_command(name), *argv], capture_output=True, text=True, cwd=REPO,
                              env=checkout_env(OMP_NUM_THREADS="1"), timeout=600)
        check_error(proc.returncode, proc.stderr, culprit)
        assert tree(tmp_path) == before


def test_catalogue_size():
    """At least 40 cases across the tools; every tool has some."""
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1] for c in CASES} == set(TOOLS)
