"""Procedural data -> DDPM trained from scratch -> pixel classifiers on its features vs on raw RGB +
(x, y) -> a small synthetic labelled set -> report. About 7 minutes on 2 CPU cores, no downloads;
rerunning resumes. --out defaults to runs/demo. Read <out>/report.md (both mIoUs, per class, stage
timings) and <out>/comparison.png.
"""
from __future__ import annotations

import argparse

from ..common.cli import add_shared_option, run_cli
from ..demo import PRESETS, run_demo
from . import command_parser

EXAMPLE = ("  ddpmseg demo                      # into runs/demo\n"
           "  ddpmseg demo --out DIR --seed 1   # another folder and seed\n")
DEFAULT_OUT = "runs/demo"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("demo", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--out")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="full: the real demo; smoke: every stage at toy size, for tests")
    add_shared_option(p, "--seed")
    add_shared_option(p, "--device")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    seed = 0 if args.seed is None else args.seed
    return run_cli(lambda: run_demo(args.out or DEFAULT_OUT, args.preset, seed, args.device or "auto"))
