"""MODEL_FLAGS are guided-diffusion's (e.g. --num_channels 256 --learn_sigma True); unlike the
original, only flags you actually pass override the config, so argparse defaults can never
silently replace the checkpoint's architecture. The run folder is <exp_dir>/<steps>_<blocks>:
config.json (the resolved config), metrics.json, model_<m>.pth per member, predictions/ and
visualizations/. `train_interpreter.py` (the original's script name) runs this command.
"""
from __future__ import annotations

import argparse

from ..classifier.interpreter import run_interpreter
from ..common.cli import add_model_flag_args, add_shared_option, config_overrides, passed_model_flags, run_cli
from ..common.config import load_config
from ..common.model_flags import resolve_model_flags
from ..common.runfiles import experiment_dir
from . import command_parser

EXAMPLE = ("  ddpmseg train --exp experiments/celebamask64/ddpm.json\n"
           "  ddpmseg train --exp experiments/ffhq_34/ddpm.json --seed 1 --set model_num=5\n")
PATH_KEYS = ("exp_dir", "training_path", "training_masks_path", "testing_path", "testing_masks_path", "model_path")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("train", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--exp", required=True)
    add_shared_option(p, "--seed")
    add_shared_option(p, "--device")
    for key in PATH_KEYS:
        p.add_argument(f"--{key}", default=None, help=f"sets the config's {key}")
    add_shared_option(p, "--set")
    add_model_flag_args(p, "guided-diffusion model flags (override the config's model_flags)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        own = {key: getattr(args, key) for key in (*PATH_KEYS, "seed", "device")}
        cfg = load_config(args.exp, config_overrides(args.set, **own))
        run_interpreter(cfg, resolve_model_flags(cfg, passed_model_flags(args)))
        print(f"segment new images (any size) with:\n  ddpmseg segment --run {experiment_dir(cfg)} "
              f"--images YOUR_IMAGES --out segmented")

    return run_cli(job)
