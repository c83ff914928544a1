"""Extracts the activations of a step x block grid (default: 8 steps from 1 % to 80 % of the diffusion,
every decoder block of the U-Net) for the training images only, scores each cell and then a greedy
forward selection of steps x blocks by k-fold cross-validated mIoU of a small probe ensemble; a result
that beats the config's own steps x blocks replaces them only if it beats them trained in full too
(--confirm, on the same folds). The test set is never read. Writes to --out (default
<exp_dir>/feature_selection): selection.json (every score with its fold spread), selection_heatmap.png,
selected.json (the config with the chosen steps, blocks and dim), and scores.json, which lets a rerun of
the same command continue where it stopped.
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
    p.add_argument("--noise_draws", type=int, nargs="+", default=None,
                   help="after the search, score the selected steps x blocks with each of these numbers of noise "
                   "draws (config noise_draws; one more extraction each) and keep the best only if it improves "
                   "on the config's own (paired gain above --min_gain and its standard error; default: the "
                   "config's own, not compared)")
    p.add_argument("--budget_minutes", type=float, default=None,
                   help="stop the search after this many minutes with the best selection so far (default: none)")
    add_shared_option(p, "--out")
    add_shared_option(p, "--set")
    add_shared_option(p, "--device")
    add_dataclass_args(p.add_argument_group("probe"), ProbeSettings)
    return p


def report(result, selected: dict | None, probe, out: str, draws: dict | None = None) -> None:
    """What the search found, the config's own score beside it, and the command that trains the choice."""
    print(f"search stopped: {result.stopped}")
    if selected is None:
        print(f"nothing was scored; rerun the same command with a larger --budget_minutes (outputs in {out})")
        return
    folds = probe.folds * probe.repeats
    scores = [("the config's own", result.own)] + ([("the search's", result.path[-1])] if result.path else [])
    for what, s in scores:
        print(f"{what} steps {s.steps} x blocks {s.blocks}: CV mIoU {100 * s.miou:.2f} ± {100 * s.miou_std:.2f} "
              f"over {folds} folds")
    check = result.confirmation
    if check is not None:
        for what, s in (("the config's own", check.own), ("the search's", check.search)):
            if s is not None:
                print(f"{what} steps {s.steps} x blocks {s.blocks}, full training ({check.members} members): "
                      f"CV mIoU {100 * s.miou:.2f} ± {100 * s.miou_std:.2f}")
    chosen = result.chosen
    if not result.fallback:
        verdict = "the search's result"
    elif check is not None and result.probe_choice is not result.own:
        verdict = ("kept: the search's result beat it in the probe's CV but not trained in full (by more than "
                   "--min_gain and its paired standard error)" if check.search is not None else
                   "kept: the budget ran out before the search's result was checked by full training")
    else:
        verdict = "kept: the search's result does not beat it by more than --min_gain and its paired standard error"
    print(f"selected steps {chosen.steps} x blocks {chosen.blocks} (dim {selected['dim'][2]}), {verdict}; "
          f"outputs in {out}")
    if draws is not None:
        shown = ", ".join(f"{k}: {100 * v['miou']:.2f}" for k, v in draws["scores"].items())
        print(f"noise draws (CV mIoU of the selection): {shown}; the selected config keeps {draws['kept']}")
    if not result.complete:
        print("the search is unfinished: the budget stopped it; rerun the same command (with a larger "
              "--budget_minutes) to continue it, the scores so far are kept")
    print(f"train it{'' if result.complete else ' (unfinished search)'}: "
          f"ddpmseg train --exp {os.path.join(out, 'selected.json')}")


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
                        probe, args.budget_minutes, noise_draws=args.noise_draws)
        os.makedirs(out, exist_ok=True)  # only now: a bad input leaves nothing behind
        sel.extract()
        result = sel.confirm(sel.search())
        selected = sel.write_outputs(result, time.time() - t0)
        report(result, selected, probe, out, sel.noise_draw_scores if selected is not None else None)

    return run_cli(job)
