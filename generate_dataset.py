"""DatasetDDPM: sample images from the run's DDPM and label them with its trained ensemble.

    python generate_dataset.py --run_dir pixel_classifiers/<ds>/ddpm/<steps_blocks> --num_samples 10000 --batch_size 100
    python generate_dataset.py --exp experiments/<ds>/ddpm.json ...     # the run folder of that config
    torchrun --nproc_per_node=8 generate_dataset.py ...                 # batches spread over the processes

The run folder is a finished train_interpreter.py run: its config.json names the U-Net, which
both draws the samples and gives their features. Writes <out>/samples_<H>x<W>x3.npz as the
original (arr_0 images uint8 [N,H,W,3], arr_1 masks [N,H,W], arr_2 uncertainty [N]) and
<out>/synthetic_grid.png (sample | mask pairs). Batches are saved as they finish
(<out>/shards/): rerunning the command after a crash draws only the missing ones.
"""
import argparse
import sys

from ddpmseg.common.cli import add_dataclass_args, dataclass_from_args, run_cli
from ddpmseg.common.config import load_config
from ddpmseg.common.distributed import init_world
from ddpmseg.ddpm.generate import SampleOptions
from ddpmseg.datasetddpm.labelling import generate_labelled_set
from ddpmseg.common.runfiles import experiment_dir
from ddpmseg.common.runlog import RunLog

# The original's SAMPLE_FLAGS (scripts/datasetDDPM/generate_dataset.sh): 1000 ancestral steps.
DEFAULTS = {"num_samples": 10000, "batch_size": 100}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    # Not "--run": torchrun's parser would take it for an abbreviation of its --run_path.
    where.add_argument("--run_dir", help="folder of a finished train_interpreter.py run")
    where.add_argument("--exp", help="experiment config whose run folder to use")
    p.add_argument("--out", default=None, help="output folder (default: the run folder, as the original)")
    p.add_argument("--device", default="auto")
    add_dataclass_args(p, SampleOptions, defaults=DEFAULTS)
    return p.parse_args(argv)


def generate_dataset(args: argparse.Namespace) -> None:
    opts = dataclass_from_args(SampleOptions, args)
    run_dir = args.run_dir or experiment_dir(load_config(args.exp))
    world = init_world(args.device)
    generate_labelled_set(run_dir, args.out or run_dir, opts, world, RunLog())


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: generate_dataset(args))


if __name__ == "__main__":
    sys.exit(main())
