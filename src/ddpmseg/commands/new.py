"""--classes FILE: one class per line, "name" or "name R G B" (its colour in RGB masks); without it the
classes are class_0.. up to the largest id in the masks. Without --steps/--blocks, those of the
closest published config. MODEL_FLAGS (guided-diffusion's) are needed only when the checkpoint has no
<checkpoint>.json beside it. The masks are checked as training checks them. Writes
experiments/NAME/ddpm.json and prints the command that trains it.
"""
from __future__ import annotations

import argparse

from ..classifier.new_experiment import DEFAULT_TEST_FRACTION, new_experiment
from ..common.cli import add_model_flag_args, add_shared_option, passed_model_flags, run_cli
from . import command_parser

EXAMPLE = ("  ddpmseg new --name faces --images my/images --masks my/masks --classes my/classes.txt \\\n"
           "      --model_path checkpoints/ddpm/ffhq.pt --test_fraction 0.3\n")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("new", __doc__, EXAMPLE, prog)
    p.add_argument("--name", required=True, help="experiment name: experiments/NAME, pixel_classifiers/NAME")
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument("--masks", required=True, help="folder of their masks (same stems): .npy or PNG")
    p.add_argument("--model_path", required=True, help="guided-diffusion checkpoint")
    p.add_argument("--classes", default=None, help="class file: one 'name' or 'name R G B' per line")
    p.add_argument("--test_images", default=None, help="folder of test images (default: split --images)")
    p.add_argument("--test_masks", default=None, help="folder of the test masks")
    p.add_argument("--test_fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="share of --images held out for testing when no --test_images "
                        f"(default {DEFAULT_TEST_FRACTION})")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="diffusion steps (default: closest published)")
    p.add_argument("--blocks", type=int, nargs="+", default=None, help="decoder blocks (default: closest published)")
    add_shared_option(p, "--seed")
    p.add_argument("--force", action="store_true", help="replace an existing experiments/NAME")
    add_model_flag_args(p, "guided-diffusion model flags (override the checkpoint's .json sidecar)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_cli(lambda: new_experiment(
        args.name, args.images, args.masks, args.model_path, classes=args.classes, test_images=args.test_images,
        test_masks=args.test_masks, test_fraction=args.test_fraction, steps=args.steps, blocks=args.blocks,
        model_flags=passed_model_flags(args), seed=0 if args.seed is None else args.seed, force=args.force))
