"""Steps x blocks chosen by ddpmseg select vs the hand-set protocol, for three U-Nets:
the reference checkpoint, a DDPM trained here, and the untrained U-Net. Writes the table into
docs/selection.md from the runs' metrics.json and selection.json files.

    python scripts/selection_study.py --ddpm runs/ddpm/celebamask64 --out runs/selection --seeds 0 1 2 3 4

For each U-Net, ddpmseg select runs once on the training images (the test set is never read by
it) and writes <out>/<unet>/selection/selected.json; then train_interpreter.py trains the full
config (experiments/<dataset>/ddpm.json, 10 members) per seed with the hand-set steps x blocks
(<out>/<unet>/hand/seed<S>) and with selected.json (<out>/<unet>/selected/seed<S>). When the selection
kept the config's own steps, blocks and noise draws, selected.json is the hand-set config, and its runs
are the hand-set ones. --ddpm is a
ddpmseg train-ddpm folder: its latest model<step>.pt is "the DDPM trained here", picked as
scripts/from_scratch.py picks it. Finished steps (selected.json, metrics.json present) are skipped, so
the command resumes; --table-only rebuilds the table from the files alone. --quick runs the same
machinery on a 2 x 2 grid, a 1-member probe and a 2-member, 1-epoch ensemble on a few images (tests).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

from ddpmseg.common.config import load_config
from from_scratch import checkpoints
from readme_block import add_study_arguments, publish
from variants import run, set_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNETS = ("reference", "trained", "untrained")
WHAT = {"reference": "reference checkpoint (`../shared/checkpoints/faces64_ema.pt`)",
        "trained": "DDPM trained here (`ddpmseg train-ddpm`)",
        "untrained": "untrained U-Net (`random_weights`, seeded per run)"}
# --quick: a 2 x 2 candidate grid scored by a 1-member, 20-iteration probe over 2 folds of 4 training
# images; runs train 2 members for one epoch and are scored on 2 test images.
QUICK_SETS = {"training_number": 4, "testing_number": 2, "model_num": 2, "max_epochs": 1}
QUICK_SELECT = ["--steps", "50", "250", "--blocks", "5", "6", "--folds", "2", "--members", "1", "--iterations", "20"]


def unet_sets(unet: str, ddpm: str | None) -> dict:
    """Config overrides that make the config's U-Net this one."""
    if unet == "untrained":
        return {"random_weights": True, "model_path": ""}
    if unet == "trained":
        return {"model_path": trained_checkpoint(ddpm)}
    return {}  # the config's own checkpoint is the reference


def trained_checkpoint(ddpm: str) -> str:
    """The latest model<step>.pt of the ddpmseg train-ddpm folder, relative to the repository like the configs."""
    folder = ddpm if os.path.isabs(ddpm) else os.path.join(REPO, ddpm)
    found = checkpoints(folder)
    if found["trained"] == found["untrained"]:
        sys.exit(f"error: {ddpm} holds only its initialisation {os.path.basename(found['untrained'])}; "
                 f"train it further, or leave 'trained' out of --unets")
    return os.path.relpath(found["trained"], REPO)


def read_json(path: str | None) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def kept_own(selection: str, config: str) -> bool:
    """Whether ddpmseg select kept the config's own steps, blocks and noise draws: the selected config is
    then the hand-set one, and its runs are the hand-set runs (the same command), not trained twice."""
    path = os.path.join(selection, "selected.json")
    if not os.path.isfile(path):
        return False
    chosen, own = load_config(path), load_config(os.path.join(REPO, config))
    return all(chosen[k] == own[k] for k in ("steps", "blocks", "noise_draws", "dim"))


def metrics(out: str, unet: str, protocol: str, seed: int, config: str | None = None) -> dict | None:
    if protocol == "selected" and config and kept_own(os.path.join(out, unet, "selection"), config):
        protocol = "hand"
    found = glob.glob(os.path.join(out, unet, protocol, f"seed{seed}", "*", "metrics.json"))
    return read_json(found[0]) if found else None


def run_unet(dataset: str, out: str, unet: str, ddpm: str | None, seeds: list[int], quick: bool,
             budget_minutes: float | None) -> None:
    config = f"experiments/{dataset}/ddpm.json"
    sets = {**unet_sets(unet, ddpm), **(QUICK_SETS if quick else {})}
    selection = os.path.join(out, unet, "selection")
    selected = os.path.join(selection, "selected.json")
    if not os.path.isfile(selected):
        budget = ["--budget_minutes", str(budget_minutes)] if budget_minutes is not None else []
        run([sys.executable, "-m", "ddpmseg", "select", "--exp", config, "--out", selection, *budget,
             *(QUICK_SELECT if quick else []), *set_args(sets)])
        if not os.path.isfile(selected):
            sys.exit(f"error: ddpmseg select scored nothing for {unet}; rerun with a larger --budget_minutes")
    protocols = [("hand", config)] + ([] if kept_own(selection, config) else [("selected", selected)])
    for seed in seeds:
        for protocol, exp in protocols:
            if metrics(out, unet, protocol, seed):
                continue
            run([sys.executable, "train_interpreter.py", "--exp", exp, "--exp_dir",
                 os.path.join(out, unet, protocol, f"seed{seed}"), "--seed", str(seed), *set_args(sets)])


def mean_std(values: list[float], signed: bool = False) -> str:
    if not values:
        return "not run"
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.2f}"
    return f"{statistics.mean(values):{sign}.2f} ± {statistics.stdev(values):.2f}"


def rows(out: str, seeds: list[int], unets: list[str], config: str) -> list[dict]:
    """Per U-Net: the mIoU % of each seed's hand-set and selected run, and the selection's report."""
    found = []
    for unet in unets:
        hand = {s: 100 * m["miou"] for s in seeds if (m := metrics(out, unet, "hand", s))}
        chosen = {s: 100 * m["miou"] for s in seeds if (m := metrics(out, unet, "selected", s, config))}
        report = read_json(os.path.join(out, unet, "selection", "selection.json"))
        found.append({"unet": unet, "hand": hand, "selected": chosen, "report": report,
                      "difference": [chosen[s] - hand[s] for s in seeds if s in hand and s in chosen]})
    return found


def table(found: list[dict], command: str) -> str:
    lines = ["#### Steps and blocks chosen by ddpmseg select vs the hand-set protocol", "",
             f"Generated by `scripts/selection_study.py` from the runs' `metrics.json` and `selection.json`: "
             f"`{command}`.",
             "Test mIoU % of the full config (mean ± sample std over seeds; difference = selected − hand-set per "
             "seed); the selection is made once per U-Net from the training images alone. CV score: the "
             "selection's cross-validated probe mIoU % (± fold spread) of the chosen protocol / of the hand-set one.",
             "", "| U-Net | hand-set mIoU | selected mIoU | difference | chosen steps × blocks | CV score | seeds |",
             "|---|---:|---:|---:|---|---|---:|"]
    for row in found:
        report = row["report"] or {}
        chosen, own = report.get("selected"), report.get("config_protocol")
        protocol = f"{chosen['steps']} × {chosen['blocks']}" if chosen else "not selected yet"
        check = report.get("full_training_check")
        if report.get("fallback") and check and check["gain"]:
            end, probe_gain, full_gain = report["greedy_path"][-1], report["search_gain_over_config"], check["gain"]
            protocol += (f" (the config's own: the search's {end['steps']} × {end['blocks']} beat it by "
                         f"{100 * probe_gain['mean']:+.2f} ± {100 * probe_gain['standard_error']:.2f} in the probe's "
                         f"CV, and by {100 * full_gain['mean']:+.2f} ± {100 * full_gain['standard_error']:.2f} "
                         f"trained in full, {check['members']} members: not enough)")
        elif check and check["passed"]:
            full_gain = check["gain"]
            protocol += (f" (checked trained in full, {check['members']} members: {100 * full_gain['mean']:+.2f} ± "
                         f"{100 * full_gain['standard_error']:.2f} over the config's own)")
        elif report.get("fallback"):
            protocol += " (the config's own: the search's result did not beat it)"
        if report.get("complete") is False:
            protocol += " (unfinished search)"
        cv = " / ".join(f"{100 * s['miou']:.2f} ± {100 * s['miou_std']:.2f}" if s else "–" for s in (chosen, own))
        seeds = min(len(row["hand"]), len(row["selected"]))
        lines.append(f"| {WHAT[row['unet']]} | {mean_std(list(row['hand'].values()))} | "
                     f"{mean_std(list(row['selected'].values()))} | {mean_std(row['difference'], signed=True)} | "
                     f"{protocol} | {cv if chosen else '–'} | {seeds} |")
    if any(row["unet"] == "untrained" for row in found):
        lines += ["", "The untrained U-Net's weights follow each run's seed, so its selection (made with seed 0's "
                  "weights) is applied to other random weights in seeds ≠ 0."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, "runs/selection", "a folder of experiments/ with ddpm.json")
    p.add_argument("--ddpm", default=None, help="the ddpmseg train-ddpm folder (needed for the 'trained' U-Net)")
    p.add_argument("--unets", nargs="+", choices=UNETS, default=list(UNETS), help="which U-Nets to run")
    p.add_argument("--budget_minutes", type=float, default=None, help="ddpmseg select's --budget_minutes")
    p.add_argument("--quick", action="store_true", help="a tiny grid, probe and ensemble (for tests)")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(REPO, "experiments", args.dataset, "ddpm.json")):
        p.error(f"experiments/{args.dataset}/ddpm.json does not exist")
    if "trained" in args.unets and args.ddpm is None and not args.table_only:
        p.error("the 'trained' U-Net needs --ddpm <ddpmseg train-ddpm folder> (or leave it out of --unets)")
    out = os.path.join(REPO, args.out)
    if not args.table_only:
        for unet in args.unets:
            run_unet(args.dataset, out, unet, args.ddpm, args.seeds, args.quick, args.budget_minutes)
    command = (f"python scripts/selection_study.py --dataset {args.dataset} --ddpm {args.ddpm or '<train_ddpm folder>'} "
               f"--out {args.out} --seeds {' '.join(map(str, args.seeds))} --unets {' '.join(args.unets)}"
               + (" --quick" if args.quick else ""))
    text = table(rows(out, args.seeds, args.unets, f"experiments/{args.dataset}/ddpm.json"), command)
    publish("selection", text, os.path.join(REPO, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
