"""Segments every image of --pool (searched recursively) with the run's full inference and ranks them:
"uncertainty" is the original's image uncertainty (mean of the top uncertainty_top_fraction of the
pixels' mutual information between members), "disagreement" the same mean over the share of member
votes that differ from the majority, "diverse" the uncertainty spread out by feature diversity (each
next image maximises its uncertainty times its feature distance to the nearest one already chosen, so
the k suggestions are not near-copies of one hard image), "random" a seeded random order (the control).
Writes to --out (default <run>/suggestions_<strategy>): suggestions.csv (rank, stem, file, uncertainty,
disagreement) of the top N, and suggestions.png, a contact sheet of image | prediction | uncertainty
per suggestion. Under torchrun each process scores its share of the pool and the first ranks them all
and writes the files; write --run_dir there, since torchrun takes --run for its own --run_path.
"""
from __future__ import annotations

import argparse
import os

from ..classifier.segmenter import Segmenter
from ..classifier.suggest import CSV_NAME, DEFAULT_STRATEGY, SHEET_NAME, STRATEGIES, check_pool, suggest
from ..common.cli import add_shared_option, config_overrides, run_cli
from ..common.distributed import init_world
from ..common.runfiles import saved_setting
from ..common.paths import probe_output_dir
from . import command_parser

EXAMPLE = ("  ddpmseg suggest --run RUN --pool unlabelled/ --k 4 --strategy uncertainty\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg suggest --run_dir RUN --pool unlabelled/ --k 4\n")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("suggest", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--run", required=True)
    p.add_argument("--pool", required=True, help="folder of unlabelled images")
    p.add_argument("--k", type=int, required=True, help="how many images to suggest")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help=f"(default: {DEFAULT_STRATEGY}; on celebamask64 no score beat a random choice: "
                        "docs/selection.md, 'Which image to label next')")
    add_shared_option(p, "--out")
    add_shared_option(p, "--seed")
    add_shared_option(p, "--device")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        out = args.out or os.path.join(args.run, f"suggestions_{args.strategy}")
        inputs = check_pool(args.pool, args.k, out)
        world = init_world(saved_setting(args.run, "device", args.device, "auto"))
        if world.is_main:
            probe_output_dir(out, "--out")
        segmenter = Segmenter.from_run(args.run, config_overrides([], device=str(world.device)))
        seed = segmenter.cfg["seed"] if args.seed is None else args.seed
        chosen = suggest(segmenter, inputs, args.k, args.strategy, out, world, seed)
        if not world.is_main:
            return
        print(f"suggested {len(chosen)} of {len(inputs)} pool images by {args.strategy}: "
              f"{', '.join(im.stem for im in chosen[:10])}{' ...' if len(chosen) > 10 else ''}")
        print(f"outputs: {os.path.join(out, CSV_NAME)}, {os.path.join(out, SHEET_NAME)}")

    return run_cli(job)
