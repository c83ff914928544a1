"""The offline demo: procedural data -> DDPM trained from scratch -> pixel classifiers on its
features vs on raw RGB + (x, y) -> a small synthetic labelled set -> report.

    python demo.py                      # runs/demo, about 7 minutes on 2 CPU cores, no downloads
    python demo.py --out DIR --seed 1   # another folder / seed; rerunning resumes

Read <out>/report.md (both mIoUs, per class, stage timings) and <out>/comparison.png.
"""
import argparse
import sys

from ddpmseg.common.cli import run_cli
from ddpmseg.demo import PRESETS, run_demo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="full: the real demo; smoke: every stage at toy size, for tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto = CUDA if available, else CPU")
    args = p.parse_args(argv)
    return run_cli(lambda: run_demo(args.out, args.preset, args.seed, args.device))


if __name__ == "__main__":
    sys.exit(main())
