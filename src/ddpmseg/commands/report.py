"""Every run folder gets report.html when its run finishes; this rebuilds it from the folder's own files
(config.json, metrics.json, member files, PNGs), e.g. for a run made before the report existed. A
`ddpmseg segment` output folder gets its gallery page instead.
"""
from __future__ import annotations

import argparse

from ..common.cli import run_cli
from ..common.run_report import build_report
from . import command_parser

EXAMPLE = "  ddpmseg report pixel_classifiers/celebamask64/ddpm/50_150_250_4_5_6_7_8\n"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("report", __doc__, EXAMPLE, prog)
    p.add_argument("folders", nargs="+", help="run folders (with metrics.json) or `ddpmseg segment` output folders")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_cli(lambda: [print(build_report(folder)) for folder in args.folders])
