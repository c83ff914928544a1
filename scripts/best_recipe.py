"""experiments/<dataset>/best.json: the selected steps x blocks and the variants that helped,
decided from the metrics of scripts/variants.py and scripts/selection_study.py; then its 5-seed runs and
a README sentence comparing them with the original method's row of the variants table.

    python scripts/best_recipe.py --dataset celebamask64 --variants runs/variants --selection runs/selection \
        --active_learning runs/active_learning --out runs/best_recipe --seeds 0 1 2 3 4

A change "helps" only if its mean gain over its baseline (same seeds) exceeds the seed spread: the
larger sample std over seeds of the two rows. Gains are measured one change at a time; whether they
add up is what the best recipe's own runs (<out>/seed<S>, resumable) measure. --decide-only writes
best.json and stops; --table-only rebuilds the sentence from existing runs.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

import variants
from ddpmseg.common.atomic import write_json_atomic
from readme_block import add_study_arguments, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETF = {"regularizer": "etf", "etf_alpha": 1.0, "etf_beta": 0.4}  # etf.json's own keys over ddpm.json
# (change, its config keys, (variants run, voting), (baseline run, voting)): one change per row.
CANDIDATES = [
    ("soft voting", {"voting": "soft"}, ("ddpm", "soft"), ("ddpm", "hard")),
    ("ETF regularizer", ETF, ("etf", "hard"), ("ddpm", "hard")),
    ("test-time mirror", {"tta": ["hflip"]}, ("etf_tta_flip", "soft"), ("etf", "soft")),
    ("DDPS refinement", {"refine": {"method": "ddps"}}, ("ddps", "hard"), ("ddps", "hard" + variants.UNREFINED)),
    ("dropout 0.4 after BN", {"dropout": 0.4, "dropout_position": "after_bn"},
     ("ddpm_dropout_after_bn", "hard"), ("ddpm", "hard")),
    ("aug/AdamW/dropout after BN", {**variants.REGULARISATION, "dropout_position": "after_bn"},
     ("etf_reg_after_bn", "soft"), ("etf", "soft")),
]
ORIGINAL = ("ddpm", "hard")  # the variants table's "DDPM" row: the original method
TARGET_GAIN = 2.0  # the target: mIoU points above the original method


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def judge(name: str, changed: dict[int, float], base: dict[int, float]) -> dict:
    """Gain of ``changed`` over ``base`` (mIoU % by seed) on their common seeds, and whether it helps."""
    seeds = sorted(set(changed) & set(base))
    a, b = [changed[s] for s in seeds], [base[s] for s in seeds]
    if len(seeds) < 2:
        return {"change": name, "seeds": len(seeds), "helps": False, "why": f"{len(seeds)} seeds, fewer than 2: no seed spread, not judged"}
    gain, spread = statistics.mean(a) - statistics.mean(b), max(std(a), std(b))
    return {"change": name, "seeds": len(seeds), "gain": gain, "spread": spread, "helps": gain > spread,
            "why": f"{gain:+.2f} points vs a seed spread of {spread:.2f} over {len(seeds)} seeds"}


def variant_mious(out: str, seeds: list[int], run: str, voting: str) -> dict[int, float]:
    return {s: 100 * variants.row_miou(m, voting) for s in seeds if (m := variants.load(out, s, run)) is not None}


def selection_mious(out: str, seeds: list[int], protocol: str) -> dict[int, float]:
    """The reference U-Net's runs of scripts/selection_study.py (hand-set or selected)."""
    found = {}
    for s in seeds:
        path = glob.glob(os.path.join(REPO, out, "reference", protocol, f"seed{s}", "*", "metrics.json"))
        if path:
            with open(path[0]) as f:
                found[s] = 100 * json.load(f)["miou"]
    return found


def decide(variants_out: str, selection_out: str, seeds: list[int]) -> tuple[dict, list[dict]]:
    """best.json's keys over ddpm.json, and the judgement of every change."""
    recipe, verdicts = {}, []
    sel = judge("selected steps x blocks", selection_mious(selection_out, seeds, "selected"),
                selection_mious(selection_out, seeds, "hand"))
    verdicts.append(sel)
    if sel["helps"]:
        with open(os.path.join(REPO, selection_out, "reference", "selection", "selected.json")) as f:
            chosen = json.load(f)
        recipe.update(steps=chosen["steps"], blocks=chosen["blocks"], dim=chosen["dim"])
    for name, keys, (run, voting), (base_run, base_voting) in CANDIDATES:
        verdict = judge(name, variant_mious(variants_out, seeds, run, voting),
                        variant_mious(variants_out, seeds, base_run, base_voting))
        verdicts.append(verdict)
        if verdict["helps"]:
            recipe.update(keys)
    return recipe, verdicts


def sentence(out: str, variants_out: str, seeds: list[int], verdicts: list[dict], strategy: dict | None) -> str:
    helped = [v["change"] for v in verdicts if v["helps"]] or ["nothing (best.json is ddpm.json)"]
    judged = any("gain" in v for v in verdicts)
    lines = ["#### Best recipe", "", f"`experiments/<dataset>/best.json` "
             f"{'takes ' + ', '.join(helped) if judged else 'is not decided yet (no change has runs of 2 seeds)'}; "
             f"judged by `scripts/best_recipe.py` (a change helps if its mean gain exceeds the seed std):", ""]
    lines += [f"- {v['change']}: {v['why']}{' (helps)' if v['helps'] else ''}" for v in verdicts]
    best = [100 * m["miou"] for s in seeds if (m := variants.load(out, s, "")) is not None]
    original = list(variant_mious(variants_out, seeds, *ORIGINAL).values())
    lines.append("")
    if len(best) < 2 or len(original) < 2:
        lines.append(f"Its runs: {len(best)} of {len(seeds)} seeds finished, original method: {len(original)}; "
                     f"no comparison yet.")
    else:
        gain = statistics.mean(best) - statistics.mean(original)
        reached = "reaches" if gain >= TARGET_GAIN else f"misses by {TARGET_GAIN - gain:.2f} points"
        lines.append(f"best.json: {variants.mean_std(best)} mIoU over {len(best)} seeds vs the original method's "
                     f"{variants.mean_std(original)} (variants table, DDPM row): {gain:+.2f} points, which {reached} "
                     f"the target of +{TARGET_GAIN:.0f}.")
    if strategy and strategy.get("text"):
        lines.append(f"Active learning (`scripts/active_learning.py`): {strategy['text']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, "runs/best_recipe", "best_recipe")
    p.add_argument("--variants", default="runs/variants", help="scripts/variants.py's --out")
    p.add_argument("--selection", default="runs/selection", help="scripts/selection_study.py's --out")
    p.add_argument("--active_learning", default="runs/active_learning", help="scripts/active_learning.py's --out")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--decide-only", action="store_true", help="write best.json, run nothing")
    group.add_argument("--table-only", action="store_true", help="only rebuild the sentence")
    args = p.parse_args(argv)
    best_path = os.path.join(REPO, "experiments", args.dataset, "best.json")
    if not os.path.isfile(os.path.join(REPO, "experiments", args.dataset, "ddpm.json")):
        p.error(f"experiments/{args.dataset}/ddpm.json does not exist")
    recipe, verdicts = decide(args.variants, args.selection, args.seeds)
    best = {"base": "ddpm.json", "exp_dir": f"pixel_classifiers/{args.dataset}/best", **recipe}
    if not args.table_only:
        write_json_atomic(best_path, best)
        print(f"wrote {os.path.relpath(best_path, REPO)}: {json.dumps(recipe)}")
    if not (args.table_only or args.decide_only):
        # The runs of <out> belong to one recipe: more seeds in the studies may change the decision.
        trained_with = os.path.join(REPO, args.out, "recipe.json")
        if os.path.isfile(trained_with):
            with open(trained_with) as f:
                if json.load(f) != best:
                    sys.exit(f"error: the runs in {args.out} were trained with another best.json ({trained_with}); "
                             f"choose another --out")
        write_json_atomic(trained_with, best)
        for seed in args.seeds:
            folder = os.path.join(args.out, f"seed{seed}")
            if variants.metrics_path(os.path.join(REPO, folder)) is None:
                variants.run([sys.executable, "train_interpreter.py", "--exp", os.path.relpath(best_path, REPO),
                              "--exp_dir", folder, "--seed", str(seed)])
    strategy_path = os.path.join(REPO, args.active_learning, "best_strategy.json")
    strategy = json.load(open(strategy_path)) if os.path.isfile(strategy_path) else None
    # variants.load(<out>, seed, "") reads <out>/seed<S>/(*/)metrics.json: the best recipe's runs.
    text = sentence(args.out, args.variants, args.seeds, verdicts, strategy)
    publish("best_recipe", text, os.path.join(REPO, args.table), readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
