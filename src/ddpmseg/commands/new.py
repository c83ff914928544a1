"""--classes FILE: one class per line, "name" or "name R G B" (its colour in RGB masks); a name with spaces
goes before a tab ("left eye<TAB>255 0 170") or in quotes; labelme2voc's labels.txt works as it is (its
__ignore__ line sets the ignore label 255). Without it the classes are class_0.. up to the largest id in
the masks. Masks of 0 and 255 only, with two classes, are binary (255 = class 1). There is no ignore label
unless --ignore_label, a labelme2voc __ignore__ line or VOC palette masks set one. Without --steps/--blocks,
those of the closest published config. MODEL_FLAGS (guided-diffusion's) are needed only when the checkpoint
has no <checkpoint>.json beside it. Writes experiments/NAME/ddpm.json and data_summary.md (images, sizes,
pixels per class and split) and prints the command that trains it. The masks are checked as
training checks them.

--masks may instead be an annotation tool's export, converted into experiments/NAME/data/ (its classes,
its ignore label, its train/test split where it has one): a CVAT "Segmentation mask 1.1" folder or zip,
a Pascal VOC / labelme2voc folder, a COCO JSON file (or the folder holding it and its images), a folder
of LabelMe JSON files. --images is needed only where the export does not hold the images.
"""
from __future__ import annotations

import argparse

from ..classifier.new_experiment import DEFAULT_TEST_FRACTION, new_experiment
from ..common.cli import add_model_flag_args, add_shared_option, passed_model_flags, run_cli
from ..data.annotations import FORMATS
from . import command_parser

EXAMPLE = ("  ddpmseg new --name faces --images my/images --masks my/masks --classes my/classes.txt \\\n"
           "      --model_path checkpoints/ddpm/ffhq.pt --test_fraction 0.3\n"
           "  ddpmseg new --name mine --masks cvat_export.zip --model_path checkpoints/ddpm/ffhq.pt\n")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("new", __doc__, EXAMPLE, prog)
    p.add_argument("--name", required=True, help="experiment name: experiments/NAME, pixel_classifiers/NAME")
    p.add_argument("--images", default=None,
                   help="folder of training images (optional where the --masks export holds them)")
    p.add_argument("--masks", required=True, help="folder of their masks (same stems): .npy or PNG; or an "
                   "annotation export: CVAT Segmentation mask 1.1 folder or zip, Pascal VOC / labelme2voc "
                   "folder, COCO JSON file, LabelMe JSON folder")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="the --masks format where it cannot be told apart (default: detected)")
    p.add_argument("--model_path", required=True, help="guided-diffusion checkpoint")
    p.add_argument("--classes", default=None, help="class file: one 'name' or 'name R G B' per line")
    p.add_argument("--ignore_label", type=int, default=None,
                   help="mask value of pixels left out of training and scoring, e.g. 255 (default: none)")
    p.add_argument("--allow_missing_classes", action="store_true",
                   help="train although a listed class has no training pixel (it will score IoU 0)")
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
        model_flags=passed_model_flags(args), seed=0 if args.seed is None else args.seed, force=args.force,
        ignore_label=args.ignore_label, allow_missing_classes=args.allow_missing_classes,
        annotation_format=args.format))
