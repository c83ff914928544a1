"""Evaluate a trained ensemble again with other inference settings, without retraining.

    python evaluate.py --run <run folder> [--set voting=soft] [--set 'tta=["hflip"]'] [--out DIR]

The run folder's config.json is the only input; only inference keys (voting, report_all_votings,
tta, hflip_class_pairs, testing_path, testing_masks_path, testing_number, device,
uncertainty_top_fraction) may be overridden. Outputs (config.json, metrics.json, predictions, visualizations) go to --out,
by default a sub-folder of the run named after the overrides.
"""
import argparse
import json
import os
import sys

from ddpmseg.common.cli import run_cli
from ddpmseg.common.config import parse_override
from ddpmseg.classifier.interpreter import evaluate_run


def default_out(run_dir: str, overrides: dict) -> str:
    """``<run>/eval_<key>-<value>_...``: one folder per distinct set of overrides."""
    parts = [f"{k}-{json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
             for k, v in sorted(overrides.items())]
    slug = "_".join(parts).translate(str.maketrans({c: "" for c in '[]{}" '}))
    return os.path.join(run_dir, "eval_" + (slug or "default"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="folder of a finished run (holds config.json and model_*.pth)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an inference key; the value is parsed as JSON if it can be (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval_<overrides>)")
    args = p.parse_args(argv)

    def job() -> None:
        overrides = dict(parse_override(s) for s in args.set)
        evaluate_run(args.run, overrides, args.out or default_out(args.run, overrides))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
