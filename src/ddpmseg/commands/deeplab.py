"""The arguments are the original's train_deeplab.py ones, except that DeepLab's learning rate and
batch size are --deeplab_lr and --deeplab_batch_size: the config's learning_rate and batch_size are
the pixel MLPs', which this command does not use, so --set may not set them. A rerun continues from
the last finished epoch; once every epoch exists it only evaluates. The epoch with the best mIoU on
the real labelled training images is scored on the test set. See ddpmseg.datasetddpm.deeplab for the
run folder's contents. `train_deeplab.py` (the original's script name) runs this command. Under
torchrun the processes train data-parallel, --deeplab_batch_size is the global batch, and with
--aspp_dropout 0 they compute what one process computes.
"""
from __future__ import annotations

import argparse
import dataclasses

from ..common.cli import add_shared_option, config_overrides, run_cli
from ..common.config import ConfigError, load_config
from ..common.precision import PRECISIONS
from ..datasetddpm.deeplab import DeepLabSettings, run_deeplab
from . import command_parser

EXAMPLE = ("  ddpmseg deeplab --exp experiments/celebamask64/ddpm.json --max_data 50000 \\\n"
           "      --uncertainty_portion 0.1 --deeplab_lr 1e-3 --set deeplab_backbone=resnet50\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg deeplab --exp experiments/celebamask64/ddpm.json \\\n"
           "      --deeplab_batch_size 64 --precision bf16\n")
DEFAULT = DeepLabSettings()  # every default lives in the dataclass
# DeepLab settings whose option is named apart from the config key of the same name (the MLPs').
RENAMED = {"learning_rate": "--deeplab_lr", "batch_size": "--deeplab_batch_size"}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("deeplab", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--exp", required=True)
    p.add_argument("--resume", default=DEFAULT.resume,
                   help="an epoch checkpoint (deeplab_epoch_<e>.pth) to continue from; by default a rerun "
                        "continues from the run folder's last epoch")
    p.add_argument("--data_path", default=DEFAULT.data_path,
                   help="synthetic dataset .npz (default: <exp_dir>/<steps>_<blocks>/samples_<H>x<W>x3.npz)")
    add_shared_option(p, "--seed")
    p.add_argument("--max_data", type=int, default=DEFAULT.max_data,
                   help="use the first N synthetic samples; 0 = all (default %(default)s)")
    p.add_argument("--uncertainty_portion", type=float, default=DEFAULT.uncertainty_portion,
                   help="fraction of samples the uncertainty filter drops (default %(default)s)")
    p.add_argument(RENAMED["learning_rate"], dest="learning_rate", metavar="LR", type=float,
                   default=DEFAULT.learning_rate,
                   help="DeepLab's Adam learning rate (default %(default)s)")
    p.add_argument(RENAMED["batch_size"], dest="batch_size", metavar="N", type=int, default=DEFAULT.batch_size,
                   help="DeepLab's batch size (default %(default)s)")
    p.add_argument("--num_epoch", type=int, default=DEFAULT.num_epoch, help="(default %(default)s)")
    p.add_argument("--workers", type=int, default=DEFAULT.workers,
                   help="DataLoader worker processes; 0 = load in the main process (default %(default)s)")
    p.add_argument("--aspp_dropout", type=float, default=DEFAULT.aspp_dropout,
                   help="drop probability of the ASPP head's dropout (default %(default)s, torchvision's)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT.precision,
                   help="fp32; bf16 or fp16 autocast (CUDA only); fp64 (default %(default)s)")
    add_shared_option(p, "--device")
    add_shared_option(p, "--set")
    return p


def deeplab_overrides(args: argparse.Namespace) -> dict:
    overrides = config_overrides(args.set, seed=args.seed, device=args.device)
    for key, option in RENAMED.items():
        if key in overrides:
            raise ConfigError(f"--set {key}= sets the pixel MLPs' {key}, which DeepLab does not use; "
                              f"DeepLab's is {option}")
    return overrides


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        cfg = load_config(args.exp, deeplab_overrides(args))
        settings = DeepLabSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DeepLabSettings)})
        run_deeplab(cfg, settings)

    return run_cli(job)
