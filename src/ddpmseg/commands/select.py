"""Extracts the activations of a step x block grid (default: 8 steps from 1 % to 80 % of the diffusion,
every decoder block of the U-Net) for the training images only, scores each cell and then a greedy
forward selection of steps x blocks by k-fold cross-validated mIoU of a small probe ensemble; the
test set is never read. Writes to --out (default <exp_dir>/feature_selection): selection.json (every
score with its fold spread), selection_heatmap.png, selected.json (the config with the chosen steps,
blocks and dim), and scores.json, which lets a rerun of the same command continue where it stopped.
"""
from __future__ import annotations

import argparse
import os
import time

from ..classifier.feature_selection import ProbeSettings, Selection
from ..common.cli import add_dataclass_args, add_shared_option, config_overrides, dataclass_from_args, run_cli
from ..common.config import ConfigError, load_config
from ..common.device import resolve_device
from ..common.model_flags import resolve_model_flags
from ..common.paths import probe_output_dir
from . import command_parser

EXAMPLE = ("  ddpmseg select --exp experiments/celebamask64/ddpm.json --budget_minutes 30\n"
           "  ddpmseg train --exp experiments/celebamask64/feature_selection/selected.json\n")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("select", __doc__, EXAMPLE, prog)
    add_shared_option(p, "--exp", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=None, help="candidate diffusion steps (default: 8 "
                   "from 1%% to 80%% of the diffusion's steps)")
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="candidate decoder blocks (default: every output block of the U-Net)")
    p.add_argument("--budget_minutes", type=float, default=None,
                   help="stop the search after this many minutes with the best selection so far (default: none)")
    add_shared_option(p, "--out")
    add_shared_option(p, "--set")
    add_shared_option(p, "--device")
    add_dataclass_args(p.add_argument_group("probe"), ProbeSettings)
    return p


def report(selected: dict | None, path: list, protocol, stopped: str, folds: int, out: str) -> None:
    """What the search found, and the command that trains it."""
    print(f"search stopped: {stopped}")
    if selected is None:
        print(f"nothing was scored; rerun the same command with a larger --budget_minutes (outputs in {out})")
        return
    best = path[-1]
    print(f"selected steps {best.steps} x blocks {best.blocks} (dim {selected['dim'][2]}): CV mIoU "
          f"{100 * best.miou:.2f} ± {100 * best.miou_std:.2f} over {folds} folds; outputs in {out}")
    if protocol is not None:
        print(f"the config's own steps {protocol.steps} x blocks {protocol.blocks}: CV mIoU "
              f"{100 * protocol.miou:.2f} ± {100 * protocol.miou_std:.2f}")
    if "budget" in stopped:
        print("the budget stopped the search early: rerun the same command to continue (scores are kept)")
    print(f"train it: ddpmseg train --exp {os.path.join(out, 'selected.json')}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)

    def job() -> None:
        t0 = time.time()
        if args.budget_minutes is not None and args.budget_minutes <= 0:
            raise ConfigError(f"--budget_minutes must be > 0, got {args.budget_minutes}")
        cfg = load_config(args.exp, config_overrides(args.set, device=args.device))
        out = args.out or os.path.join(cfg["exp_dir"], "feature_selection")
        probe = dataclass_from_args(ProbeSettings, args)
        probe_output_dir(out, "--out")
        sel = Selection(cfg, resolve_model_flags(cfg), resolve_device(cfg["device"]), out, args.steps, args.blocks,
                        probe, args.budget_minutes)
        os.makedirs(out, exist_ok=True)  # only now: a bad input leaves nothing behind
        sel.extract()
        singles, path, stopped = sel.search()
        selected, protocol = sel.write_outputs(singles, path, stopped, time.time() - t0)
        report(selected, path, protocol, stopped, probe.folds, out)

    return run_cli(job)
