"""Evaluate a trained ensemble again with other inference settings, without retraining.

The run folder's config.json is the only input; only inference keys (voting, report_all_votings,
tta, hflip_class_pairs, testing_path, testing_masks_path, testing_number, device,
uncertainty_top_fraction) may be set. Outputs (config.json, metrics.json, predictions,
visualizations) go to --out, by default a sub-folder of the run named after the settings:
<run>/eval_<key>-<value>_...
"""
from __future__ import annotations

import argparse
import json
import os

from ..classifier.interpreter import evaluate_run
from ..common.cli import add_shared_option, config_overrides, run_cli
from . import command_parser

EXAMPLE = "  ddpmseg evaluate --run RUN --set voting=soft --set 'tta=[\"hflip\"]'\n"


def default_out(run_dir: str, overrides: dict) -> str:
    """``<run>/eval_<key>-<value>_...``: one folder per distinct set of overrides."""
    parts = [f"{k}-{json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
             for k, v in sorted(overrides.items())]
    slug = "_".join(parts).translate(str.maketrans({c: "" for c in '[]{}" '}))
    return os.path.join(run_dir, "eval_" + (slug or "default"))


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("evaluate", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--run", required=True)
    add_shared_option(p, "--set")
    add_shared_option(p, "--device")
    add_shared_option(p, "--out")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        overrides = config_overrides(args.set, device=args.device)
        evaluate_run(args.run, overrides, args.out or default_out(args.run, overrides))

    return run_cli(job)
