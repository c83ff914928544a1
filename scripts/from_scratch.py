"""The pipeline on celebamask64 with a DDPM trained here, vs the same U-Net untrained, vs the
reference faces checkpoint; writes the table into docs/train-ddpm.md from the runs' metrics.json.

    python scripts/from_scratch.py --ddpm runs/ddpm/celebamask64 --out runs/from_scratch --seeds 0 1 2 3 4

--ddpm is a `ddpmseg train-ddpm` folder (docs/train-ddpm.md gives the command that made it): its latest EMA
checkpoint is "trained", its model000000.pt (the initialisation, same flags) is "untrained".
Finished runs (metrics.json present) are skipped, so the command resumes; --table-only rebuilds
the table from existing metrics files alone. No number in the table is typed by hand.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys

from readme_block import publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/celebamask64/ddpm.json"
REFERENCE = "../shared/checkpoints/faces64_ema.pt"


def checkpoints(ddpm_dir: str) -> dict[str, str]:
    """Row name -> checkpoint: the run's latest raw weights, its initialisation, the reference.

    Raw weights, not the EMA: a CPU run stops after a few hundred updates, when an EMA of rate
    0.999 still gives the initialisation about half the weight."""
    models = sorted(glob.glob(os.path.join(ddpm_dir, "model*.pt")), key=lambda p: int(re.findall(r"(\d+)\.pt$", p)[0]))
    if not models:
        sys.exit(f"error: no model<step>.pt in {ddpm_dir}; train it first (docs/train-ddpm.md)")
    return {"trained": models[-1], "untrained": models[0], "reference": REFERENCE}


def run_dir(out: str, row: str, seed: int) -> str:
    return os.path.join(out, row, f"seed{seed}")


def metrics(out: str, row: str, seed: int) -> dict | None:
    path = glob.glob(os.path.join(run_dir(out, row, seed), "*", "metrics.json"))
    if not path:
        return None
    with open(path[0]) as f:
        return json.load(f)


def run_all(ckpts: dict[str, str], out: str, seeds: list[int]) -> None:
    for row, ckpt in ckpts.items():
        for seed in seeds:
            if metrics(out, row, seed):
                continue
            cmd = [sys.executable, "train_interpreter.py", "--exp", CONFIG, "--model_path", ckpt,
                   "--exp_dir", run_dir(out, row, seed), "--seed", str(seed)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)


def steps_of(ckpt: str) -> str:
    side = os.path.splitext(ckpt)[0] + ".json"
    if not os.path.isfile(os.path.join(REPO, side)):
        return "?"
    with open(os.path.join(REPO, side)) as f:
        info = json.load(f)
    return str(info.get("step", info.get("steps", "?")))  # our sidecars say "step", the reference "steps"


def table(ckpts: dict[str, str], out: str, seeds: list[int]) -> str:
    what = {
        "trained": "DDPM trained here with `ddpmseg train-ddpm` on unlabeled/ + real/train (170 images), raw weights",
        "untrained": "the same U-Net at its initialisation (`model000000.pt` of that run)",
        "reference": "the reference 64 px faces checkpoint in ../shared (same flags, other training run)",
    }
    lines = ["| U-Net weights | updates | test mIoU % (mean ± std) | seeds | checkpoint |", "|---|---:|---:|---:|---|"]
    for row, ckpt in ckpts.items():
        values = [100 * m["miou"] for s in seeds if (m := metrics(out, row, s))]
        cell = "not run" if not values else (
            f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}")
        lines.append(f"| {what[row]} | {steps_of(ckpt)} | {cell} | {len(values)} | `{ckpt}` |")
    return "\n".join(lines + ["", reading(out, seeds)]) + "\n"


def reading(out: str, seeds: list[int]) -> str:
    """The table's two comparisons, from the same metrics: the untrained U-Net's mIoU as a share of the
    trained one's, and trained minus reference per seed (mean ± sample std of the differences)."""
    miou = {row: {s: 100 * m["miou"] for s in seeds if (m := metrics(out, row, s))}
            for row in ("trained", "untrained", "reference")}
    parts = []
    if miou["trained"] and miou["untrained"]:
        share = statistics.mean(miou["untrained"].values()) / statistics.mean(miou["trained"].values())
        parts.append(f"the untrained U-Net reaches {100 * share:.0f} % of the trained one's mean mIoU")
    diff = [miou["trained"][s] - miou["reference"][s] for s in seeds if s in miou["trained"] and s in miou["reference"]]
    if len(diff) > 1:
        parts.append(f"trained here minus reference, per seed: {statistics.mean(diff):+.2f} ± "
                     f"{statistics.stdev(diff):.2f} points over {len(diff)} seeds")
    return ("Reading: " + "; ".join(parts) + ".") if parts else "Reading: not enough runs yet."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddpm", required=True, help="the ddpmseg train-ddpm folder (relative to the repository root)")
    p.add_argument("--out", default="runs/from_scratch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--rows", nargs="+", default=["trained", "untrained", "reference"],
                   help="which rows to run (the table always shows all)")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    ckpts = checkpoints(os.path.join(REPO, args.ddpm) if not os.path.isabs(args.ddpm) else args.ddpm)
    ckpts = {k: os.path.relpath(v, REPO) if os.path.isabs(v) else v for k, v in ckpts.items()}
    out = os.path.join(REPO, args.out)
    if ckpts["trained"] == ckpts["untrained"]:
        args.rows = [r for r in args.rows if r != "trained"]
        print(f"note: {args.ddpm} has no trained checkpoint yet; the 'trained' row is skipped")
    if not args.table_only:
        run_all({k: v for k, v in ckpts.items() if k in args.rows}, out, args.seeds)
    text = table(ckpts, out, args.seeds)
    publish("from_scratch", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
