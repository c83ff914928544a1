"""MODEL_FLAGS are guided-diffusion's (--image_size 64 --num_channels 128 --learn_sigma True ...);
--model_flags FILE.json takes them from a checkpoint's json sidecar. Rerunning the same command
resumes from the latest complete checkpoint in --log_dir. The model and EMA files load in
`ddpmseg train` as they are (their flags sit beside them in <checkpoint>.json). Under torchrun the
processes train data-parallel and --batch_size is the global batch.
"""
from __future__ import annotations

import argparse

from ..common.cli import (add_dataclass_args, add_model_flag_args, dataclass_from_args, passed_model_flags,
                          read_flags_file, run_cli)
from ..ddpm.train import DDPMTrainer, DDPMTrainOptions
from . import command_parser

EXAMPLE = ("  ddpmseg train-ddpm --data_dir images/ --log_dir runs/ddpm64 --image_size 64 --num_channels 64\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg train-ddpm --data_dir images/ --log_dir runs/ddpm256 ...\n")
FIXED = ("data_dirs", "log_dir", "model_flags")  # options with their own command-line form


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("train-ddpm", __doc__, EXAMPLE, prog)
    p.add_argument("--data_dir", nargs="+", required=True, help="folders of training images (searched recursively)")
    p.add_argument("--log_dir", required=True, help="run folder: checkpoints, sample grids, progress.csv, log.txt")
    p.add_argument("--model_flags", default=None, metavar="FILE.json",
                   help='guided-diffusion flags from a json file (a checkpoint sidecar with "flags", or a flat dict)')
    add_dataclass_args(p.add_argument_group("training options"), DDPMTrainOptions, skip=FIXED)
    add_model_flag_args(p, "guided-diffusion model flags (override --model_flags)")
    return p


def options_from_args(args: argparse.Namespace) -> DDPMTrainOptions:
    model_flags = {**(read_flags_file(args.model_flags) if args.model_flags else {}), **passed_model_flags(args)}
    return dataclass_from_args(DDPMTrainOptions, args, data_dirs=list(args.data_dir), log_dir=args.log_dir,
                               model_flags=model_flags)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_cli(lambda: DDPMTrainer(options_from_args(args)).run())
