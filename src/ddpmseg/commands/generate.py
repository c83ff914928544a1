"""The run folder is a finished `ddpmseg train` run: its config.json names the U-Net, which both
draws the samples and gives their features (a guided-diffusion U-Net draws with the run's flags, a
diffusers DDPM with its folder's scheduler: there --timestep_respacing is "", N or ddimN), and its
seed and device are the defaults of --seed and --device. Writes <out>/samples_<H>x<W>x3.npz as the original (arr_0 images uint8 [N,H,W,3], arr_1
masks [N,H,W], arr_2 uncertainty [N]) and <out>/synthetic_grid.png (sample | mask pairs); --out
defaults to the run folder, as the original. Batches are saved as they finish (<out>/shards/):
rerunning the command after a crash draws only the missing ones. Under torchrun the batches are
spread over the processes; write --run_dir there, since torchrun takes --run for its own --run_path.
`generate_dataset.py` (the original's script name) runs this command.
"""
from __future__ import annotations

import argparse

from ..common.cli import add_dataclass_args, add_shared_option, dataclass_from_args, run_cli
from ..common.config import load_config
from ..common.distributed import init_world
from ..common.runfiles import experiment_dir, saved_setting
from ..common.runlog import RunLog
from ..datasetddpm.labelling import generate_labelled_set
from ..ddpm.generate import SampleOptions
from . import command_parser

EXAMPLE = ("  ddpmseg generate --exp experiments/celebamask64/ddpm.json --num_samples 1000\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg generate --run_dir RUN --num_samples 10000\n")
# The original's SAMPLE_FLAGS (scripts/datasetDDPM/generate_dataset.sh): 1000 ancestral steps.
DEFAULTS = {"num_samples": 10000, "batch_size": 100}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("generate", __doc__, EXAMPLE, prog)
    where = p.add_mutually_exclusive_group(required=True)
    add_shared_option(where, "--run")
    add_shared_option(where, "--exp")
    add_shared_option(p, "--out")
    add_shared_option(p, "--device")
    add_dataclass_args(p, SampleOptions, defaults=DEFAULTS)
    return p


def generate_dataset(args: argparse.Namespace) -> None:
    run_dir = args.run or experiment_dir(load_config(args.exp))
    args.seed = saved_setting(run_dir, "seed", args.seed, SampleOptions.seed)
    opts = dataclass_from_args(SampleOptions, args)
    world = init_world(saved_setting(run_dir, "device", args.device, "auto"))
    generate_labelled_set(run_dir, args.out or run_dir, opts, world, RunLog())


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_cli(lambda: generate_dataset(args))
