"""Segment new, unlabelled images of any size with a trained run.

    python segment.py --run <run folder> --images DIR_OR_FILE [...] --out DIR [--set voting=soft]

The run's saved config.json decides everything (voting, test-time views, refiner); --set may
override inference keys as in evaluate.py. Per image: <stem>.png (class ids), <stem>_overlay.png,
<stem>_uncertainty.png; segments.csv has one row per image. Rerunning skips finished images; an
unreadable file is a warning and the rest go on; exit status 2 only when nothing was segmented.
"""
import argparse
import sys

from ddpmseg.common.cli import run_cli
from ddpmseg.common.config import parse_override
from ddpmseg.classifier.segment_folder import segment_images
from ddpmseg.classifier.segmenter import Segmenter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="folder of a finished run (holds config.json and model_*.pth)")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an inference key (voting, tta, device, ...); value parsed as JSON if it can be")
    args = p.parse_args(argv)

    def job() -> None:
        overrides = dict(parse_override(s) for s in args.set)
        segmenter = Segmenter.from_run(args.run, overrides)
        counts = segment_images(segmenter, args.images, args.out)
        print(f"segmented {counts['segmented']}, already done {counts['skipped']}, unreadable "
              f"{counts['unreadable']}; outputs in {args.out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
