"""Run the method variants over several seeds and write their table into docs/experiments.md from their metrics.

    python scripts/variants.py --dataset celebamask64 --out runs/variants --seeds 0 1 2 3 4

Each (variant, seed) is one train_interpreter.py or ddpmseg evaluate process whose folder holds its
config.json and metrics.json; finished ones (metrics.json present) are skipped, so the command
resumes. The table is then built from those files alone (``--table-only`` rebuilds it without
running anything): no number in it is typed by hand.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

from readme_block import add_study_arguments, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTA_VIEWS = ["hflip", "color_jitter", "grayscale", "color_jitter_hflip"]
REGULARISATION = {"augmentation_copies": 4, "optimizer": "adamw", "weight_decay": 1e-4, "dropout": 0.4}

# Trained runs: name -> (experiment config, overrides).
TRAINED = {
    "ddpm": ("ddpm.json", {"report_all_votings": True}),
    "etf": ("etf.json", {}),
    "etf_decoupled": ("etf.json", {"regularizer": "etf_decoupled"}),
    "etf_reg": ("etf.json", REGULARISATION),
    "ddps": ("ddpm.json", {"refine": {"method": "ddps"}}),
    # Where dropout 0.4 sits (config dropout_position): alone, and with the other regularisers.
    "ddpm_dropout": ("ddpm.json", {"dropout": 0.4}),
    "ddpm_dropout_after_bn": ("ddpm.json", {"dropout": 0.4, "dropout_position": "after_bn"}),
    "etf_reg_after_bn": ("etf.json", {**REGULARISATION, "dropout_position": "after_bn"}),
}
# Re-evaluations of a trained run: name -> (trained run, inference overrides).
EVALUATED = {
    "etf_tta": ("etf", {"tta": TTA_VIEWS}),
    "etf_tta_flip": ("etf", {"tta": ["hflip"]}),
    "etf_reg_tta": ("etf_reg", {"tta": TTA_VIEWS}),
}
# A row whose voting ends with this reads a refined run's masks before refinement.
UNREFINED = ", unrefined"
# Table rows: (label, run, voting whose mIoU is read, what it is).
ROWS = [
    ("DDPM (last member)", "ddpm", "last_member",
     "the published ETF code's \"hard voting\", which returns the last member's mask"),
    ("DDPM", "ddpm", "hard", "the original method: majority vote of 10 MLPs"),
    ("DDPM_V", "ddpm", "soft", "soft voting (mean log-probability)"),
    ("DDPM_E (published, decoupled)", "etf_decoupled", "hard",
     "the published ETF regularizer: a separate trunk that cannot affect the classifier"),
    ("DDPM_E", "etf", "hard", "ETF regularizer on the classifier's own penultimate features"),
    ("DDPM_VE", "etf", "soft", "ETF + soft voting (`experiments/<dataset>/etf.json`)"),
    ("DDPM_VE + aug/AdamW/dropout", "etf_reg", "soft",
     "+ 4 augmented copies per image, AdamW (wd 1e-4), dropout 0.4"),
    ("DDPM_VE + TTA", "etf_tta", "soft", f"+ test-time views {', '.join(TTA_VIEWS)} (the same ensembles as DDPM_VE)"),
    ("DDPM_VE + TTA (mirror only)", "etf_tta_flip", "soft", "+ the mirrored view alone (the same ensembles)"),
    ("all together", "etf_reg_tta", "soft", "ETF + soft voting + aug/AdamW/dropout + TTA"),
    ("DDPM, before DDPS refinement", "ddps", "hard" + UNREFINED,
     "the DDPS run's own ensemble (the same members as DDPM), its masks before refinement"),
    ("DDPM + DDPS refinement", "ddps", "hard",
     "the mask-prior refiner (ddpmseg.classifier.refine, default settings) applied to that ensemble's prediction"),
    ("DDPM + dropout 0.4 before BN", "ddpm_dropout", "hard",
     "dropout 0.4 alone: after each hidden ReLU, before its BatchNorm (`dropout_position` before_bn)"),
    ("DDPM + dropout 0.4 after BN", "ddpm_dropout_after_bn", "hard",
     "the same dropout after each BatchNorm instead (`dropout_position` after_bn)"),
    ("DDPM_VE + aug/AdamW/dropout after BN", "etf_reg_after_bn", "soft",
     "DDPM_VE + aug/AdamW/dropout with the dropout after each BatchNorm"),
]


def run_dir(out: str, seed: int, name: str) -> str:
    """A run's folder; ``out`` is relative to the repository root, like every path in the configs."""
    return os.path.join(REPO, out, f"seed{seed}", name)


def metrics_path(folder: str) -> str | None:
    """metrics.json of a run folder: the trainer writes it one level down, in <steps>_<blocks>/."""
    found = glob.glob(os.path.join(folder, "metrics.json")) + glob.glob(os.path.join(folder, "*", "metrics.json"))
    return found[0] if found else None


def set_args(overrides: dict) -> list[str]:
    """``--set key=<JSON value>`` arguments for train_interpreter.py / ddpmseg evaluate."""
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def shell_set_args(overrides: dict) -> str:
    """The same arguments as the table prints them, quoted for a shell."""
    return " ".join(f"--set '{k}={json.dumps(v)}'" for k, v in overrides.items())


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)  # one write: the runs of best_recipe.py --jobs print from threads
    subprocess.run(cmd, check=True, cwd=REPO)


# The order runs are made in, a row (every seed) at a time so that a stopped command leaves whole rows
# behind: the original method and the rows the best recipe is judged on first, the augmented ones
# (five times the features to extract and train on) and the four-view evaluation last.
RUN_ORDER = ("ddpm", "etf", "etf_tta_flip", "ddps", "etf_decoupled", "ddpm_dropout", "ddpm_dropout_after_bn",
             "etf_tta", "etf_reg", "etf_reg_tta", "etf_reg_after_bn")


def run_all(dataset: str, out: str, seeds: list[int], names: list[str]) -> None:
    for name in names:
        for seed in seeds:
            if name in TRAINED:
                run_trained(dataset, out, seed, name)
                continue
            source, overrides = EVALUATED[name]
            folder = run_dir(out, seed, name)
            if metrics_path(folder):
                continue
            run_trained(dataset, out, seed, source)
            trained = os.path.dirname(metrics_path(run_dir(out, seed, source)))
            run([sys.executable, "-m", "ddpmseg", "evaluate", "--run", trained, "--out", folder, *set_args(overrides)])


def run_trained(dataset: str, out: str, seed: int, name: str) -> None:
    config, overrides = TRAINED[name]
    folder = run_dir(out, seed, name)
    if metrics_path(folder):
        return
    run([sys.executable, "train_interpreter.py", "--exp", f"experiments/{dataset}/{config}",
         "--exp_dir", folder, "--seed", str(seed), *set_args(overrides)])


def load(out: str, seed: int, name: str) -> dict | None:
    path = metrics_path(run_dir(out, seed, name))
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def training_seconds(m: dict) -> float:
    """Feature extraction + ensemble training of the run that trained these members."""
    t = m.get("training_timings_s", m["timings_s"])
    return t.get("train_features_s", 0.0) + t.get("train_s", 0.0)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "–"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def mean_seconds(values: list[float]) -> str:
    return f"{statistics.mean(values):.0f}" if values else "–"


def row_miou(m: dict, voting: str) -> float:
    """A run's mIoU under ``voting``; "<voting>, unrefined" reads a refined run's ensemble alone."""
    if voting.endswith(UNREFINED):
        return m["refine"]["miou_before"]
    return m["by_voting"][voting]["miou"] if "by_voting" in m else m["miou"]


def table(dataset: str, out: str, seeds: list[int], note: str = "") -> str:
    """The variants block of docs/experiments.md, from the metrics.json files under ``out``."""
    lines = [
        "#### Results: method variants",
        "",
        "Generated by `scripts/variants.py` from the runs' `metrics.json` files; do not edit by hand.",
        f"Reproduce with `python scripts/variants.py --dataset {dataset} --out {out} "
        f"--seeds {' '.join(map(str, seeds))}`.",
        "",
        f"Dataset **{dataset}**. mIoU (%, the original's dataset-level definition) as mean ± sample std",
        "over seeds; each seed changes the members' initialisation and shuffling, the shared noise,",
        "the ETF frame, the augmentation draws and the test-time views. Training time is feature",
        "extraction plus ensemble training of the run that trained the members, mean over seeds.",
        "",
        "| variant | mIoU | seeds | training time (s) | evaluation time (s) | run | voting |",
        "|---|---|---|---|---|---|---|",
    ]
    devices = set()
    for label, name, voting, _ in ROWS:
        found = [m for m in (load(out, s, name) for s in seeds) if m is not None]
        mious = [100 * row_miou(m, voting) for m in found
                 if "by_voting" in m or m["voting"] == voting.removesuffix(UNREFINED)]
        devices.update(m["device"] for m in found)
        train_t = mean_seconds([training_seconds(m) for m in found])
        eval_t = mean_seconds([m["timings_s"]["evaluation_s"] for m in found])
        lines.append(f"| {label} | {mean_std(mious)} | {len(mious)} | {train_t} | {eval_t} | `{name}` | {voting} |")
    lines += ["", "What each row is:", ""]
    lines += [f"- **{label}**: {what}." for label, _, _, what in ROWS]
    lines += ["", "Runs (`<out>/seed<N>/<run>`), each a command of this repository:", ""]
    for name, (config, overrides) in TRAINED.items():
        sets = shell_set_args(overrides)
        command = (f"python train_interpreter.py --exp experiments/{dataset}/{config} "
                   f"--exp_dir <out>/seed<N>/{name} --seed <N> {sets}").rstrip()
        lines.append(f"- `{name}`: `{command}`")
    for name, (source, overrides) in EVALUATED.items():
        sets = shell_set_args(overrides)
        lines.append(f"- `{name}`: `ddpmseg evaluate --run <out>/seed<N>/{source}/<steps>_<blocks> "
                     f"--out <out>/seed<N>/{name} {sets}`")
    lines += ["", f"Machine: {', '.join(sorted(devices)) or '–'}, {os.cpu_count()} CPU cores ({platform.machine()}), "
              f"torch {torch.__version__}." + (f" {note}" if note else "")]
    return "\n".join(lines) + "\n"


def refinement_summary(out: str, seeds: list[int]) -> str:
    """The sentence of docs/refinement.md on the DDPS refinement, from the ddps runs' metrics.json."""
    runs = [m for m in (load(out, s, "ddps") for s in seeds) if m is not None]
    if not runs:
        return "no ddps runs yet\n"
    gains = [100 * (m["refine"]["miou_after"] - m["refine"]["miou_before"]) for m in runs]
    before = mean_std([100 * m["refine"]["miou_before"] for m in runs])
    after = mean_std([100 * m["refine"]["miou_after"] for m in runs])
    first = mean_std([100 * m["refine"]["miou_by_step"][0] for m in runs])
    cost = mean_seconds([m["timings_s"]["refiner_s"] for m in runs if "refiner_s" in m["timings_s"]])
    return (f"refinement changed test mIoU by {min(gains):+.2f} to {max(gains):+.2f} points across the "
            f"{len(runs)} seeds, from {before} to {after} (after the first re-noising step alone: {first}); "
            f"the fold ensembles and refiner training took {cost} s per run on {runs[0]['device']}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, "runs/variants", "a folder of experiments/ with ddpm.json and etf.json")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from existing runs")
    p.add_argument("--runs", nargs="+", choices=RUN_ORDER, default=list(RUN_ORDER),
                   help="which runs to make, in this order (the table always shows every row)")
    p.add_argument("--note", default="", help="how the runs were made (e.g. several at a time), for the table")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(REPO, "experiments", args.dataset, "etf.json")):
        p.error(f"experiments/{args.dataset}/etf.json does not exist")
    if not args.table_only:
        run_all(args.dataset, args.out, args.seeds, args.runs)
    # Only this script's blocks: the other scripts that share their pages write theirs.
    docs = os.path.join(REPO, args.docs)
    publish("variants", table(args.dataset, args.out, args.seeds, args.note), docs)
    if args.dataset == "celebamask64":
        publish("ddps", refinement_summary(args.out, args.seeds), docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
