"""The paper's backbone comparison on one dataset: DDPM vs MAE vs SwAV vs SwAV-w2, and the newer
diffusers DDPM and DINOv2, under the same pixel classifier; writes the table into docs/backbones.md
from the runs' metrics.json.

    python scripts/backbones.py --dataset celebamask64 --out runs/backbones --seeds 0 1 2

Each (backbone, seed) is one train_interpreter.py run of experiments/<dataset>/<backbone>.json;
finished runs (metrics.json present) are skipped, so the command resumes, and --table-only
rebuilds the table from existing metrics files alone. No number in the table is typed by hand.
The seed also draws the weights of a random-weight backbone, so the spread covers both.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from readme_block import publish
# The same run layout (<out>/seed<N>/<row>) and helpers as the variants table.
from variants import REPO, load, mean_std, metrics_path, run, run_dir, set_args, shell_set_args

# Applied to every row: one epoch per member instead of early stopping after 5 or more. The
# backbones' 6720-13440 features per pixel make a full run 10-15 min per row on 2 CPU cores;
# the same budget for every row keeps the comparison fair. --full_protocol drops it (GPU).
SHORT_PROTOCOL = {"max_epochs": 1}
# Rows: name -> (experiment config, overrides, what it is).
ROWS = {
    "ddpm": ("ddpm.json", {}, "DDPM U-Net (the config's checkpoint)"),
    "ddpm_untrained": ("ddpm.json", {"model_path": "", "random_weights": True},
                       "the same U-Net with random weights (untrained control)"),
    "mae": ("mae.json", {}, "MAE ViT-L/8, last 12 blocks"),
    "swav": ("swav.json", {}, "SwAV ResNet-50, every other bottleneck input"),
    "swav_w2": ("swav_w2.json", {}, "SwAV ResNet-50-w2, every other bottleneck input"),
    "diffusers": ("diffusers.json", {}, "diffusers UNet2DModel in the google/ddpm-256 architecture, at 64 px: "
                                        "up_blocks 2-4 at t = 50, 150, 250"),
    "dinov2": ("dinov2.json", {}, "DINOv2 ViT-S/14, the 64 px image resized to 112: patch tokens of blocks 8-11"),
}


def run_all(dataset: str, out: str, seeds: list[int], names: list[str], protocol: dict) -> None:
    for seed in seeds:
        for name in names:
            config, overrides, _ = ROWS[name]
            if load(out, seed, name):
                continue
            run([sys.executable, "train_interpreter.py", "--exp", f"experiments/{dataset}/{config}",
                 "--exp_dir", run_dir(out, seed, name), "--seed", str(seed), *set_args({**overrides, **protocol})])


def weights_of(dataset: str, name: str) -> str:
    """Where the row's weights come from, read from its saved config (the run's ground truth)."""
    config, overrides, _ = ROWS[name]
    with open(os.path.join(REPO, "experiments", dataset, config)) as f:
        cfg = {**json.load(f), **overrides}
    return "random weights (seeded)" if cfg.get("random_weights") else f"`{cfg['model_path']}`"


def table(dataset: str, out: str, seeds: list[int], protocol: dict) -> str:
    # No time column: these runs shared the CPU with other work, so their times compare nothing.
    lines = ["| features | weights | dim | test mIoU % (mean ± std over seeds) | seeds |",
             "|---|---|---:|---:|---:|"]
    for name, (config, overrides, what) in ROWS.items():
        runs = [m for s in seeds if (m := load(out, s, name))]
        if not runs:
            lines.append(f"| {what} | {weights_of(dataset, name)} | – | not run | 0 |")
            continue
        with open(os.path.join(os.path.dirname(metrics_path(run_dir(out, seeds[0], name))), "config.json")) as f:
            dim = json.load(f)["dim"][2]
        lines.append(f"| {what} | {weights_of(dataset, name)} | {dim} | "
                     f"{mean_std([100 * m['miou'] for m in runs])} | {len(runs)} |")
    device = runs[0]["device"] if runs else "?"
    commands = "; ".join(f"`{name}`: `python train_interpreter.py --exp experiments/{dataset}/{config} --seed S"
                         + (f" {shell_set_args({**overrides, **protocol})}`" if overrides or protocol else "`")
                         for name, (config, overrides, _) in ROWS.items())
    return "\n".join(lines) + f"\n\nDevice {device}. Each row: {commands}.\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="celebamask64")
    p.add_argument("--out", default="runs/backbones", help="run folders (relative to the repository root)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS),
                   help="which rows to run (the table always shows all)")
    p.add_argument("--full_protocol", action="store_true", help="train with the config's early stopping "
                   f"instead of {SHORT_PROTOCOL}")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--docs", default="docs",
                   help="the folder of the page the table is written into (relative to the repository root)")
    args = p.parse_args(argv)
    protocol = {} if args.full_protocol else SHORT_PROTOCOL
    if not args.table_only:
        run_all(args.dataset, args.out, args.seeds, args.rows, protocol)
    text = table(args.dataset, args.out, args.seeds, protocol)
    publish("backbones", text, os.path.join(REPO, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
