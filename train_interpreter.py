"""Train and evaluate the pixel-classifier ensemble on DDPM features.

    python train_interpreter.py --exp experiments/<dataset>/ddpm.json [MODEL_FLAGS] [--seed N]

MODEL_FLAGS are guided-diffusion's (e.g. --num_channels 256 --learn_sigma True); unlike the
original, only flags you actually pass override the config, so argparse defaults can never
silently replace the checkpoint's architecture. See README.md for the outputs.
"""
import argparse
import sys

from ddpmseg.common.cli import add_model_flag_args, passed_model_flags, run_cli
from ddpmseg.common.config import load_config, parse_override
from ddpmseg.classifier.interpreter import run_interpreter
from ddpmseg.common.model_flags import resolve_model_flags
from ddpmseg.common.runfiles import experiment_dir

PATH_KEYS = ("exp_dir", "training_path", "training_masks_path", "testing_path", "testing_masks_path", "model_path")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment config, e.g. experiments/bedroom_28/ddpm.json")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed (default 0)")
    for key in PATH_KEYS:
        p.add_argument(f"--{key}", default=None, help=f"overrides the config's {key}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key; the value is parsed as JSON if it can be (repeatable)")
    add_model_flag_args(p, "guided-diffusion model flags (override the config's model_flags)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        overrides = dict(parse_override(s) for s in args.set)
        overrides.update({k: getattr(args, k) for k in PATH_KEYS if getattr(args, k) is not None})
        if args.seed is not None:
            overrides["seed"] = args.seed
        cfg = load_config(args.exp, overrides)
        run_interpreter(cfg, resolve_model_flags(cfg, passed_model_flags(args)))
        print(f"segment new images (any size) with:\n  python segment.py --run {experiment_dir(cfg)} "
              f"--images YOUR_IMAGES --out segmented")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
