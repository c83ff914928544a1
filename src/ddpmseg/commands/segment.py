"""The run's saved config.json decides everything (voting, test-time views, refiner); --set may set
inference keys as in `ddpmseg evaluate`. Per image: <stem>.png (class ids), <stem>_overlay.png,
<stem>_uncertainty.png; segments.csv has one row per image. --out has no default. Rerunning skips
finished images; an unreadable file is a warning and the rest go on; exit status 2 only when nothing
was segmented. Under torchrun each process segments its share of the images and the first writes
segments.csv; write --run_dir there, since torchrun takes --run for its own --run_path.
"""
from __future__ import annotations

import argparse

from ..classifier.segment_folder import segment_images
from ..classifier.segmenter import Segmenter
from ..common.cli import add_shared_option, config_overrides, run_cli
from ..common.distributed import init_world
from ..common.runfiles import saved_setting
from ..common.paths import probe_output_dir
from . import command_parser

EXAMPLE = ("  ddpmseg segment --run RUN --images photos/ --out segmented/ --set voting=soft\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg segment --run_dir RUN --images photos/ --out segmented/\n")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("segment", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--run", required=True)
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    add_shared_option(p, "--out", required=True)
    add_shared_option(p, "--set")
    add_shared_option(p, "--device")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        overrides = config_overrides(args.set, device=args.device)
        world = init_world(saved_setting(args.run, "device", overrides.get("device"), "auto"))
        if world.is_main:
            probe_output_dir(args.out, "--out")
        segmenter = Segmenter.from_run(args.run, {**overrides, "device": str(world.device)})
        counts = segment_images(segmenter, args.images, args.out, world)
        if world.is_main:
            print(f"segmented {counts['segmented']}, already done {counts['skipped']}, unreadable "
                  f"{counts['unreadable']}; outputs in {args.out}")

    return run_cli(job)
