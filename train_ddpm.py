"""Train a guided-diffusion DDPM from scratch on folders of unlabelled images.

    python train_ddpm.py --data_dir DIR [DIR ...] --log_dir RUN [MODEL_FLAGS] [--batch_size 16 ...]
    torchrun --nproc_per_node=8 train_ddpm.py ...      # data parallel; --batch_size is the global batch

MODEL_FLAGS are guided-diffusion's (--image_size 64 --num_channels 128 --learn_sigma True ...);
--model_flags FILE.json takes them from a checkpoint's json sidecar. Rerunning the same command
resumes from the latest complete checkpoint in --log_dir. The model and EMA files load in
train_interpreter.py as they are (their flags sit beside them in <checkpoint>.json).
"""
import argparse
import sys

from ddpmseg.common.cli import (add_dataclass_args, add_model_flag_args, dataclass_from_args, passed_model_flags,
                         read_flags_file, run_cli)
from ddpmseg.ddpm.train import DDPMTrainer, DDPMTrainOptions

FIXED = ("data_dirs", "log_dir", "model_flags")  # options with their own command-line form


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", nargs="+", required=True, help="folders of training images (searched recursively)")
    p.add_argument("--log_dir", required=True, help="run folder: checkpoints, sample grids, progress.csv, log.txt")
    p.add_argument("--model_flags", default=None, metavar="FILE.json",
                   help='guided-diffusion flags from a json file (a checkpoint sidecar with "flags", or a flat dict)')
    add_dataclass_args(p.add_argument_group("training options"), DDPMTrainOptions, skip=FIXED)
    add_model_flag_args(p, "guided-diffusion model flags (override --model_flags)")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> DDPMTrainOptions:
    model_flags = {**(read_flags_file(args.model_flags) if args.model_flags else {}), **passed_model_flags(args)}
    return dataclass_from_args(DDPMTrainOptions, args, data_dirs=list(args.data_dir), log_dir=args.log_dir,
                               model_flags=model_flags)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: DDPMTrainer(options_from_args(args)).run())


if __name__ == "__main__":
    sys.exit(main())
