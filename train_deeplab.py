"""Train DeepLabV3 on a DDPM-generated synthetic dataset and test it on the real one (DatasetDDPM).

    python train_deeplab.py --exp experiments/<dataset>/ddpm.json [--data_path samples.npz]
        [--max_data 50000] [--uncertainty_portion 0.1] [--set deeplab_backbone=resnet50]

The arguments are the original's. A rerun continues from the last finished epoch; once
every epoch exists it only evaluates. The epoch with the best mIoU on the real labelled
training images is scored on the test set. See ddpmseg.datasetddpm.deeplab for the run folder's contents.
"""
import argparse
import dataclasses
import sys

from ddpmseg.common.cli import run_cli
from ddpmseg.common.config import load_config, parse_override
from ddpmseg.datasetddpm.deeplab import DeepLabSettings, run_deeplab

DEFAULT = DeepLabSettings()  # every default lives in the dataclass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment config, e.g. experiments/bedroom_28/ddpm.json")
    p.add_argument("--resume", default=DEFAULT.resume,
                   help="an epoch checkpoint (deeplab_epoch_<e>.pth) to continue from; by default a rerun "
                        "continues from the run folder's last epoch")
    p.add_argument("--data_path", default=DEFAULT.data_path,
                   help="synthetic dataset .npz (default: <exp_dir>/<steps>_<blocks>/samples_<H>x<W>x3.npz)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed (default 0)")
    p.add_argument("--max_data", type=int, default=DEFAULT.max_data,
                   help="use the first N synthetic samples; 0 = all (default %(default)s)")
    p.add_argument("--uncertainty_portion", type=float, default=DEFAULT.uncertainty_portion,
                   help="fraction of samples the uncertainty filter drops (default %(default)s)")
    p.add_argument("--learning_rate", type=float, default=DEFAULT.learning_rate, help="Adam (default %(default)s)")
    p.add_argument("--batch_size", type=int, default=DEFAULT.batch_size, help="(default %(default)s)")
    p.add_argument("--num_epoch", type=int, default=DEFAULT.num_epoch, help="(default %(default)s)")
    p.add_argument("--workers", type=int, default=DEFAULT.workers,
                   help="DataLoader worker processes; 0 = load in the main process (default %(default)s)")
    p.add_argument("--device", default=None, help="overrides the config's device (auto, cpu, cuda, cuda:1, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key; the value is parsed as JSON if it can be (repeatable)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        overrides = dict(parse_override(s) for s in args.set)
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.device is not None:
            overrides["device"] = args.device
        cfg = load_config(args.exp, overrides)
        settings = DeepLabSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DeepLabSettings)})
        run_deeplab(cfg, settings)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
