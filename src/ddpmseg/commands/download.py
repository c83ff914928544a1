"""Runs the checkout's download scripts, which stay usable on their own:
datasets/download_datasets.sh (the paper's six labelled datasets, ~47 MB, into datasets/<dataset>/)
and checkpoints/<kind>/download_checkpoint.sh NAME (a pretrained DDPM, MAE or SwAV checkpoint into
checkpoints/<kind>/; NAME is the dataset it was trained on, e.g. ffhq: the script lists them).
Downloads resume after an interruption and appear only when complete. DDPMSEG_DOWNLOAD_BASE
overrides the server (scripts/download_lib.sh). The scripts need bash and curl and a checkout
(`pip install -e .` from a clone): they are not part of an installed wheel.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import command_parser

EXAMPLE = "  ddpmseg download datasets\n  ddpmseg download ddpm ffhq\n"
REPO = Path(__file__).resolve().parents[3]
DATASETS_SCRIPT = REPO / "datasets" / "download_datasets.sh"


def checkpoint_scripts() -> dict[str, Path]:
    """kind -> its checkpoints/<kind>/download_checkpoint.sh, as the checkout has them."""
    return {p.parent.name: p for p in sorted((REPO / "checkpoints").glob("*/download_checkpoint.sh"))}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("download", __doc__, EXAMPLE, prog)
    p.add_argument("what", choices=["datasets", *checkpoint_scripts()],
                   help="datasets, or the kind of checkpoint (checkpoints/<kind>/)")
    p.add_argument("name", nargs="?", default=None, help="the checkpoint's name (checkpoints only)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not DATASETS_SCRIPT.is_file():
        parser.error(f"the download scripts are not beside this installation ({REPO}): run it from a clone "
                     "installed with `pip install -e .`")
    if args.what == "datasets":
        if args.name is not None:
            parser.error(f"datasets takes no name (got {args.name!r}): it fetches all six")
        command = ["bash", str(DATASETS_SCRIPT)]
    else:
        if args.name is None:
            parser.error(f"{args.what} needs the checkpoint's name, e.g. ddpmseg download {args.what} ffhq")
        command = ["bash", str(checkpoint_scripts()[args.what]), args.name]
    return subprocess.run(command, stdout=sys.stdout, stderr=sys.stderr).returncode
