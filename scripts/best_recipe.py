"""experiments/<dataset>/best.json, stacked greedily: the changes that each raise the mean over the seeds by
more than the seed spread, tried one at a time in a fixed order, each on top of the changes kept before it;
then a block of docs/experiments.md with every verdict and best.json against the original method.

    python scripts/best_recipe.py --dataset celebamask64 --accuracy runs/accuracy --selection runs/selection \
        --active_learning runs/active_learning --out runs/best_recipe --seeds 0 1 2 3 4

The order (``STACK``): the selected steps x blocks (judged from scripts/selection_study.py's runs, hand-set vs
selected); the best noise_draws and the best class_weighting of scripts/accuracy_study.py (the setting with
the highest mean, a candidate only if it beat the defaults there by more than the seed spread); soft voting;
the ETF regularizer; the test-time mirror; DDPS refinement. A candidate is the recipe so far plus its keys,
trained with train_interpreter.py over the seeds (<out>/<its changes joined by +>/seed<S>, resumable; a recipe
of one accuracy-study setting alone is that study's own runs). It is kept if its mean exceeds the current
recipe's by more than the seed spread (the larger sample std over the seeds of the two), on the same seeds.
best.json is the recipe at the end, and its numbers are the runs of the last change kept. --table-only runs
nothing: it judges from the runs there are and stops at the first candidate without them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

import accuracy_study
import selection_study
import variants
from ddpmseg.common.atomic import write_json_atomic
from readme_block import add_study_arguments, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETF = {"regularizer": "etf", "etf_alpha": 1.0, "etf_beta": 0.4}  # etf.json's own keys over ddpm.json
# The accuracy study's settings each candidate is chosen among (names of accuracy_study.SETTINGS).
NOISE_DRAWS = ("draws2", "draws4", "draws8")
CLASS_WEIGHTING = ("inverse", "sqrt_inverse", "balanced")
# The changes tried after the selection and the accuracy study's two: (folder name, what it is, its config
# keys), in this order: the ensemble's own changes (voting, regularizer) before those that act on its
# predictions (test-time views, refinement). Every stage retrains, so that each is one plain command.
CHANGES = [
    ("soft_voting", "soft voting", {"voting": "soft"}),
    ("etf", "ETF regularizer", ETF),
    ("mirror", "test-time mirror", {"tta": ["hflip"]}),
    ("ddps", "DDPS refinement", {"refine": {"method": "ddps"}}),
]
TARGET_GAIN = 2.0  # the gain worth a new default recipe: mIoU points above the original method


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def judge(name: str, changed: dict[int, float], base: dict[int, float]) -> dict:
    """Gain of ``changed`` over ``base`` (mIoU % by seed) on their common seeds, and whether it helps."""
    seeds = sorted(set(changed) & set(base))
    a, b = [changed[s] for s in seeds], [base[s] for s in seeds]
    if len(seeds) < 2:
        return {"change": name, "seeds": len(seeds), "helps": False,
                "why": f"{len(seeds)} seeds, fewer than 2: no seed spread, not judged"}
    gain, spread = statistics.mean(a) - statistics.mean(b), max(std(a), std(b))
    return {"change": name, "seeds": len(seeds), "gain": gain, "spread": spread, "helps": gain > spread,
            "why": f"{gain:+.2f} points vs a seed spread of {spread:.2f} over {len(seeds)} seeds"}


def mious(folder: str, seeds: list[int]) -> dict[int, float]:
    """mIoU % by seed of the runs ``folder.format(S)`` (their metrics.json, one level down or not)."""
    found = {}
    for s in seeds:
        path = variants.metrics_path(os.path.join(REPO, folder.format(s)))
        if path is not None:
            with open(path) as f:
                found[s] = 100 * json.load(f)["miou"]
    return found


def selection_verdict(dataset: str, selection_out: str, seeds: list[int]) -> dict:
    """The reference U-Net's selected steps x blocks against the hand-set ones (scripts/selection_study.py)."""
    what = "selected steps x blocks"
    if selection_study.kept_own(os.path.join(REPO, selection_out, "reference", "selection"),
                                f"experiments/{dataset}/ddpm.json"):
        return {"change": what, "seeds": 0, "helps": False,
                "why": "ddpmseg select kept ddpm.json's own steps x blocks: nothing to add"}
    runs = os.path.join(selection_out, "reference", "{}", "seed{{}}")
    return judge(what, mious(runs.format("selected"), seeds), mious(runs.format("hand"), seeds))


def accuracy_choice(accuracy_out: str, seeds: list[int], names: tuple[str, ...], what: str) -> dict:
    """The setting of ``names`` with the highest mean mIoU in the accuracy study, judged against its defaults:
    a verdict with "name" and "keys" (the setting's overrides) added; a candidate of the stacking if it helps."""
    base = mious(os.path.join(accuracy_out, "seed{}", "default"), seeds)
    found = {n: mious(os.path.join(accuracy_out, "seed{}", n), seeds) for n in names}
    found = {n: v for n, v in found.items() if len(set(v) & set(base)) >= 2}
    if not found:
        return {"change": what, "seeds": 0, "helps": False, "keys": {}, "name": None,
                "why": "no setting has runs of 2 seeds in the accuracy study, not judged"}
    best = max(found, key=lambda n: statistics.mean(found[n].values()))
    keys = accuracy_study.SETTINGS[best][0]
    label = f"{what} ({', '.join(f'{k} {v}' for k, v in keys.items())}, the best of the accuracy study)"
    return {**judge(label, found[best], base), "keys": keys, "name": best}


def stage_folder(out: str, names: list[str]) -> str:
    """<out>/<names joined by +>/seed{}: the runs of the recipe of these changes ('{}' takes the seed)."""
    return os.path.join(out, "+".join(names), "seed{}")


def train_stage(dataset: str, folder: str, keys: dict, seeds: list[int], jobs: int = 1) -> None:
    """The seeds' runs of ddpm.json + ``keys`` that ``folder`` does not hold yet, ``jobs`` at a time."""
    commands = [[sys.executable, "train_interpreter.py", "--exp", f"experiments/{dataset}/ddpm.json",
                 "--exp_dir", folder.format(seed), "--seed", str(seed), *variants.set_args(keys)]
                for seed in seeds if variants.metrics_path(os.path.join(REPO, folder.format(seed))) is None]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(variants.run, commands))  # list(): a failed run raises here


def stack(dataset: str, accuracy_out: str, selection_out: str, out: str, seeds: list[int],
          train: bool, jobs: int = 1) -> tuple[dict, list[dict], str | None]:
    """(best.json's keys over ddpm.json, the verdict of every candidate in order, the folder pattern of the
    final recipe's runs; None when a candidate has no runs and ``train`` is False: the stacking stopped)."""
    keys, names, verdicts = {}, [], []
    current = os.path.join(accuracy_out, "seed{}", "default")  # ddpm.json as it is: the original method
    sel = selection_verdict(dataset, selection_out, seeds)
    verdicts.append(sel)
    if sel["helps"]:
        with open(os.path.join(REPO, selection_out, "reference", "selection", "selected.json")) as f:
            chosen = json.load(f)
        keys = {"steps": chosen["steps"], "blocks": chosen["blocks"], "dim": chosen["dim"]}
        names, current = ["selected"], os.path.join(selection_out, "reference", "selected", "seed{}")
    # (name, what, keys) of each candidate, or the verdict of an accuracy-study setting that is not one.
    candidates: list[tuple | dict] = []
    for group, what in ((NOISE_DRAWS, "noise draws"), (CLASS_WEIGHTING, "class weighting")):
        choice = accuracy_choice(accuracy_out, seeds, group, what)
        candidates.append((choice["name"], choice["change"], choice["keys"]) if choice["helps"] else choice)
    for candidate in candidates + CHANGES:
        if isinstance(candidate, dict):
            verdicts.append(candidate)
            continue
        name, what, extra = candidate
        tried = {**keys, **extra}
        if name in accuracy_study.SETTINGS and tried == accuracy_study.SETTINGS[name][0]:
            folder = os.path.join(accuracy_out, "seed{}", name)  # that study's own runs of this recipe
        else:
            folder = stage_folder(out, names + [name])
            if train:
                train_stage(dataset, folder, tried, seeds, jobs)
        measured = {f: mious(f, seeds) for f in (current, folder)}
        missing = [f for f, found in measured.items() if len(found) < 2]
        if missing:
            verdicts.append({"change": what, "seeds": 0, "helps": False, "why": (
                f"not measured yet (fewer than 2 seeds in `{missing[0].format('<S>')}`): the stacking stops here")})
            return keys, verdicts, None
        verdict = judge(what, measured[folder], measured[current])
        verdicts.append(verdict)
        if verdict["helps"]:
            keys, names, current = tried, names + [name], folder
    return keys, verdicts, current


def second_unet(dataset: str, selection_out: str, out: str, ddpm: str, keys: dict, seeds: list[int], train: bool,
                jobs: int = 1) -> dict:
    """The original method and best.json on the DDPM trained here (the latest checkpoint of the ddpmseg
    train-ddpm folder ``ddpm``), over the seeds: whether the recipe chosen on the reference checkpoint
    carries over to another U-Net. The original method's runs are scripts/selection_study.py's hand-set
    runs of that U-Net (the same command); best.json's are <out>/trained_unet/seed<S>."""
    checkpoint = selection_study.trained_checkpoint(ddpm)
    original = os.path.join(selection_out, "trained", "hand", "seed{}")
    best = os.path.join(out, "trained_unet", "seed{}")
    if train:
        train_stage(dataset, original, {"model_path": checkpoint}, seeds, jobs)
        train_stage(dataset, best, {**keys, "model_path": checkpoint}, seeds, jobs)
    return {"checkpoint": checkpoint, "original": mious(original, seeds), "best": mious(best, seeds)}


def comparison(best: dict[int, float], original: dict[int, float], where: str) -> str:
    """best.json against the original method on their common seeds, and whether it reaches TARGET_GAIN."""
    common = sorted(set(best) & set(original))
    if len(common) < 2:
        return f"best.json {where}: {len(best)} seeds measured, the original method {len(original)}; no comparison yet."
    gain = statistics.mean(best[s] for s in common) - statistics.mean(original[s] for s in common)
    per_seed = ", ".join(f"{best[s] - original[s]:+.2f}" for s in common)
    reached = "reaches" if gain >= TARGET_GAIN else f"misses by {TARGET_GAIN - gain:.2f} points"
    return (f"best.json {where}: {variants.mean_std([best[s] for s in common])} mIoU over {len(common)} seeds vs "
            f"the original method's {variants.mean_std([original[s] for s in common])}: {gain:+.2f} points "
            f"(per seed {per_seed}), which {reached} the target of +{TARGET_GAIN:.0f}.")


def sentence(accuracy_out: str, final: str | None, seeds: list[int], verdicts: list[dict],
             strategy: dict | None, second: dict | None = None) -> str:
    helped = [v["change"] for v in verdicts if v["helps"]] or ["nothing (best.json is ddpm.json)"]
    lines = ["#### Best recipe", "",
             f"`experiments/<dataset>/best.json` {'takes ' + ', '.join(helped) if final else 'is not decided yet'}; "
             f"stacked by `scripts/best_recipe.py`: each change in turn, on top of those kept before it, kept if "
             f"its mean gain over the current recipe exceeds the seed std:", ""]
    lines += [f"- {v['change']}: {v['why']}{' (kept)' if v['helps'] else ''}" for v in verdicts]
    lines.append("")
    original = mious(os.path.join(accuracy_out, "seed{}", "default"), seeds)
    lines.append(comparison(mious(final, seeds) if final else {}, original,
                            "on the reference checkpoint (the original method: ddpm.json, the accuracy study's "
                            "defaults)"))
    if second is not None:
        lines += ["", comparison(second["best"], second["original"],
                                 f"on the DDPM trained here (`{second['checkpoint']}`, the same keys; the stack was "
                                 f"judged on the reference checkpoint only)")]
    if strategy and strategy.get("text"):
        lines.append(f"Active learning (`scripts/active_learning.py`): {strategy['text']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, "runs/best_recipe")
    p.add_argument("--accuracy", default="runs/accuracy", help="scripts/accuracy_study.py's --out")
    p.add_argument("--selection", default="runs/selection", help="scripts/selection_study.py's --out")
    p.add_argument("--active_learning", default="runs/active_learning", help="scripts/active_learning.py's --out")
    p.add_argument("--ddpm", default=None, help="a ddpmseg train-ddpm folder: also run the original method and "
                   "best.json on its latest checkpoint (the DDPM trained here)")
    p.add_argument("--table-only", action="store_true", help="run nothing: judge from the runs there are")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs of a stage at a time (each with its own threads: set OMP_NUM_THREADS)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if not os.path.isfile(os.path.join(REPO, "experiments", args.dataset, "ddpm.json")):
        p.error(f"experiments/{args.dataset}/ddpm.json does not exist")
    keys, verdicts, final = stack(args.dataset, args.accuracy, args.selection, args.out, args.seeds,
                                  train=not args.table_only, jobs=args.jobs)
    if final is not None:
        best_path = os.path.join(REPO, "experiments", args.dataset, "best.json")
        write_json_atomic(best_path, {"base": "ddpm.json", "exp_dir": f"pixel_classifiers/{args.dataset}/best", **keys})
        print(f"wrote {os.path.relpath(best_path, REPO)}: {json.dumps(keys)}")
    second = None
    if args.ddpm is not None and final is not None:
        second = second_unet(args.dataset, args.selection, args.out, args.ddpm, keys, args.seeds,
                             train=not args.table_only, jobs=args.jobs)
    strategy_path = os.path.join(REPO, args.active_learning, "best_strategy.json")
    strategy = json.load(open(strategy_path)) if os.path.isfile(strategy_path) else None
    publish("best_recipe", sentence(args.accuracy, final, args.seeds, verdicts, strategy, second),
            os.path.join(REPO, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
