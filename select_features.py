"""Choose the diffusion steps and decoder blocks of a config from its labelled training images.

    python select_features.py --exp experiments/<dataset>/ddpm.json [--steps 10 50 ...] [--blocks 4 5 ...]
                              [--folds 4] [--budget_minutes N] [--out DIR] [--set KEY=VALUE ...]

Extracts the activations of a step x block grid (default: 8 steps from 1 % to 80 % of the diffusion,
every decoder block of the U-Net) for the training images only, scores each cell and then a greedy
forward selection of steps x blocks by k-fold cross-validated mIoU of a small probe ensemble; the
test set is never read. Writes to --out (default <exp_dir>/feature_selection): selection.json (every
score with its fold spread), selection_heatmap.png, selected.json (the config with the chosen steps,
blocks and dim), and scores.json, which lets a rerun of the same command continue where it stopped.
"""
import argparse
import os
import sys
import time

from ddpmseg.common.cli import add_dataclass_args, dataclass_from_args, run_cli
from ddpmseg.common.config import ConfigError, load_config, parse_override
from ddpmseg.classifier.feature_selection import ProbeSettings, Selection
from ddpmseg.common.device import resolve_device
from ddpmseg.common.model_flags import resolve_model_flags


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment config, e.g. experiments/celebamask64/ddpm.json")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="candidate diffusion steps (default: 8 "
                   "from 1%% to 80%% of the diffusion's steps)")
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="candidate decoder blocks (default: every output block of the U-Net)")
    p.add_argument("--budget_minutes", type=float, default=None,
                   help="stop the search after this many minutes with the best selection so far (default: none)")
    p.add_argument("--out", default=None, help="output folder (default: <exp_dir>/feature_selection)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (e.g. training_path=...); value parsed as JSON if it can be")
    add_dataclass_args(p.add_argument_group("probe"), ProbeSettings)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        t0 = time.time()
        if args.budget_minutes is not None and args.budget_minutes <= 0:
            raise ConfigError(f"--budget_minutes must be > 0, got {args.budget_minutes}")
        cfg = load_config(args.exp, dict(parse_override(s) for s in args.set))
        out = args.out or os.path.join(cfg["exp_dir"], "feature_selection")
        probe = dataclass_from_args(ProbeSettings, args)
        sel = Selection(cfg, resolve_model_flags(cfg), resolve_device(cfg["device"]), out, args.steps, args.blocks,
                        probe, args.budget_minutes)
        os.makedirs(out, exist_ok=True)  # only now: a bad input leaves nothing behind
        sel.extract()
        singles, path, stopped = sel.search()
        selected, protocol = sel.write_outputs(singles, path, stopped, time.time() - t0)
        print(f"search stopped: {stopped}")
        if selected is None:
            print(f"nothing was scored; rerun the same command with a larger --budget_minutes (outputs in {out})")
            return
        best = path[-1]
        print(f"selected steps {best.steps} x blocks {best.blocks} (dim {selected['dim'][2]}): CV mIoU "
              f"{100 * best.miou:.2f} ± {100 * best.miou_std:.2f} over {probe.folds} folds; outputs in {out}")
        if protocol is not None:
            print(f"the config's own steps {protocol.steps} x blocks {protocol.blocks}: CV mIoU "
                  f"{100 * protocol.miou:.2f} ± {100 * protocol.miou_std:.2f}")
        if "budget" in stopped:
            print("the budget stopped the search early: rerun the same command to continue (scores are kept)")
        print(f"train it: python train_interpreter.py --exp {os.path.join(out, 'selected.json')}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
