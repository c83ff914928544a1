"""Active learning on celebamask64: does choosing the next images to label by the ensemble's
uncertainty, member disagreement or uncertainty spread out by feature diversity beat labelling random
ones? Writes the table into docs/selection.md, and a plot, from the runs' metrics.json files.

    python scripts/active_learning.py --dataset celebamask64 --out runs/active_learning --seeds 0 1 2 3 4

Pool = the training images + the first POOL_TEST test images by sorted stem; evaluation = the other test
images (fixed: never in the pool, never read by ddpmseg suggest). For each seed a seeded random start of
--start pool images (the same for every strategy: round 0 is trained once and shared), then --rounds
rounds: ``ddpmseg suggest --run <previous round's run> --pool <its unlabelled pool> --k ADD --strategy S``
picks ADD images, they join the labelled set, and the full config (experiments/<dataset>/ddpm.json) is
retrained with train_interpreter.py and scored on the evaluation images. Labelled sets and pools are
folders of symlinks to the dataset's files (never copies). Layout under --out:

    split.json, evaluation/                     the pool and the evaluation images
    seed<S>/round0/                             the shared start
    seed<S>/<strategy>/round<r>/                suggestions/ (ddpmseg suggest's outputs), labelled/, pool/,
                                                labelled.json (stems), run/<steps>_<blocks>/metrics.json
    best_strategy.json                          the verdict (the plot goes to --plot)

Finished steps are skipped (a round with labelled.json has chosen its images; one with metrics.json is
trained), so the command resumes. --table-only rebuilds the table, plot and verdict from the files alone.
--quick runs the same machinery on a few images with a 2-member, 1-epoch ensemble (the tests use it).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import statistics
import sys

import torch

from line_plot import line_plot, save_png
from ddpmseg.common.atomic import write_json_atomic
from ddpmseg.classifier.suggest import STRATEGIES  # ddpmseg suggest's --strategy choices
from ddpmseg.common.seeding import stream_generator
from readme_block import add_study_arguments, publish
from variants import run, set_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL_TEST = 30  # test images (first by sorted stem) that join the pool; the other 20 of 50 are the evaluation set
# The protocol: 8 random labelled images, then 3 rounds of +4.
START, ROUNDS, ADD = 8, 3, 4
# --quick: the same machinery on 4 training + 4 test images in the pool, 2 evaluation images, a start
# of 2 and 2 rounds of +1, with a 2-member ensemble trained for one epoch.
QUICK = {"train_images": 4, "pool_test": 4, "eval_images": 2, "start": 2, "rounds": 2, "add": 1,
         "sets": {"model_num": 2, "max_epochs": 1}}
IMAGE_EXT, LABEL_EXT = ".png", ".npy"  # the format the config's dataset folders have (stem.png + stem.npy)


def start_images(pool: list[str], size: int, seed: int) -> list[str]:
    """The ``size`` pool stems every strategy of ``seed`` starts from (sorted)."""
    order = torch.randperm(len(pool), generator=stream_generator("active_learning_start", seed)).tolist()
    return sorted(sorted(pool)[i] for i in order[:size])


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stems_of(folder: str) -> list[str]:
    """Sorted stems of the folder's labelled images (stem.png with a stem.npy beside it)."""
    return sorted(f[:-len(IMAGE_EXT)] for f in os.listdir(folder)
                  if f.endswith(IMAGE_EXT) and os.path.isfile(os.path.join(folder, f[:-len(IMAGE_EXT)] + LABEL_EXT)))


def split(config: dict, pool_test: int, train_images: int | None = None, eval_images: int | None = None) -> dict:
    """{"pool": {stem: image path}, "evaluation": {stem: image path}}: the training images (the first
    ``train_images``) + the first ``pool_test`` test images are the pool, the rest of the test images (the
    first ``eval_images`` of them) the evaluation set."""
    train_dir = os.path.join(REPO, config["training_path"])
    test_dir = os.path.join(REPO, config["testing_path"])
    train, test = stems_of(train_dir), stems_of(test_dir)
    both = set(train) & set(test)
    if both:
        sys.exit(f"error: stems {sorted(both)[:5]} are both training and test images; the pool needs unique stems")
    if len(test) <= pool_test:
        sys.exit(f"error: {test_dir} has {len(test)} labelled images, not more than the {pool_test} the pool takes")
    pool = {s: os.path.join(train_dir, s + IMAGE_EXT) for s in train[:train_images]}
    pool.update({s: os.path.join(test_dir, s + IMAGE_EXT) for s in test[:pool_test]})
    evaluation = {s: os.path.join(test_dir, s + IMAGE_EXT) for s in test[pool_test:][:eval_images]}
    return {"pool": pool, "evaluation": evaluation}


def link_folder(folder: str, stems: list[str], images: dict[str, str]) -> None:
    """``folder`` holds symlinks stem.png and stem.npy to the dataset's files of ``stems`` and nothing else;
    built beside it and renamed, so an interrupted build leaves no half folder."""
    want = sorted(s + ext for s in stems for ext in (IMAGE_EXT, LABEL_EXT))
    if os.path.isdir(folder) and sorted(os.listdir(folder)) == want:
        return
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for s in stems:
        image = images[s]
        for ext, source in ((IMAGE_EXT, image), (LABEL_EXT, os.path.splitext(image)[0] + LABEL_EXT)):
            os.symlink(os.path.relpath(source, tmp), os.path.join(tmp, s + ext))  # relative: same from folder
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def metrics_path(round_dir: str) -> str | None:
    """metrics.json of a round's run: the trainer writes it in run/<steps>_<blocks>/."""
    found = glob.glob(os.path.join(round_dir, "run", "*", "metrics.json"))
    return found[0] if found else None


def round_dir(out: str, seed: int, strategy: str, r: int) -> str:
    """Round 0 is shared by every strategy of a seed."""
    return os.path.join(out, f"seed{seed}", "round0" if r == 0 else os.path.join(strategy, f"round{r}"))


class Study:
    """One --out folder: its split, and the rounds of every seed and strategy."""

    def __init__(self, dataset: str, out: str, quick: bool):
        self.config_path = f"experiments/{dataset}/ddpm.json"
        self.out = os.path.join(REPO, out)
        with open(os.path.join(REPO, self.config_path)) as f:
            config = json.load(f)
        q = QUICK if quick else {}
        self.data = split(config, q.get("pool_test", POOL_TEST), q.get("train_images"), q.get("eval_images"))
        self.sets = q.get("sets", {})
        self.images = {**self.data["pool"], **self.data["evaluation"]}
        recorded = {"pool": sorted(self.data["pool"]), "evaluation": sorted(self.data["evaluation"]),
                    "training_overrides": self.sets}
        saved = read_json(os.path.join(self.out, "split.json"))
        if saved is not None and saved != recorded:
            sys.exit(f"error: {out} was made with another pool/evaluation split or settings (split.json); "
                     f"choose another --out")
        if saved is None:
            write_json_atomic(os.path.join(self.out, "split.json"), recorded)
        self.eval_dir = os.path.join(self.out, "evaluation")
        link_folder(self.eval_dir, sorted(self.data["evaluation"]), self.images)

    def train(self, folder: str, seed: int, labelled: list[str]) -> None:
        if metrics_path(folder):
            return
        sets = {"training_number": len(labelled), "testing_number": len(self.data["evaluation"]), **self.sets}
        run([sys.executable, "train_interpreter.py", "--exp", self.config_path, "--exp_dir", os.path.join(folder, "run"),
             "--seed", str(seed), "--training_path", os.path.join(folder, "labelled"), "--testing_path", self.eval_dir,
             *set_args(sets)])

    def start(self, seed: int, size: int) -> dict:
        """Round 0: a seeded random draw of ``size`` pool images, trained once for every strategy."""
        folder = round_dir(self.out, seed, "", 0)
        state = read_json(os.path.join(folder, "labelled.json"))
        if state is None:
            # A stream of the seeding table over the sorted stems: the same start for every strategy.
            labelled = start_images(self.data["pool"], size, seed)
            state = {"round": 0, "strategy": None, "added": labelled, "labelled": labelled,
                     "pool": sorted(set(self.data["pool"]) - set(labelled))}
            write_json_atomic(os.path.join(folder, "labelled.json"), state)
        self.materialise(folder, seed, state)
        return state

    def step(self, seed: int, strategy: str, r: int, previous: dict, add: int) -> dict:
        """Round r > 0: ddpmseg suggest picks ``add`` images of the previous round's pool with its run."""
        folder, before = round_dir(self.out, seed, strategy, r), round_dir(self.out, seed, strategy, r - 1)
        state = read_json(os.path.join(folder, "labelled.json"))
        if state is None:
            suggestions = os.path.join(folder, "suggestions")
            table = os.path.join(suggestions, "suggestions.csv")
            if not os.path.isfile(table):
                run([sys.executable, "-m", "ddpmseg", "suggest", "--run", os.path.dirname(metrics_path(before)),
                     "--pool", os.path.join(before, "pool"), "--k", str(add), "--strategy", strategy,
                     "--seed", str(seed), "--out", suggestions])
            with open(table) as f:
                added = [row["stem"] for row in csv.DictReader(f)]
            if len(added) != add or not set(added) <= set(previous["pool"]):
                sys.exit(f"error: {table} does not list {add} images of the previous pool; delete {folder} and rerun")
            labelled = sorted(previous["labelled"] + added)
            state = {"round": r, "strategy": strategy, "added": added, "labelled": labelled,
                     "pool": sorted(set(previous["pool"]) - set(added))}
            write_json_atomic(os.path.join(folder, "labelled.json"), state)
        self.materialise(folder, seed, state)
        return state

    def materialise(self, folder: str, seed: int, state: dict) -> None:
        link_folder(os.path.join(folder, "labelled"), state["labelled"], self.images)
        link_folder(os.path.join(folder, "pool"), state["pool"], self.images)
        self.train(folder, seed, state["labelled"])


def run_all(study: Study, seeds: list[int], strategies: list[str], start: int, rounds: int, add: int) -> None:
    for seed in seeds:
        first = study.start(seed, start)
        for strategy in strategies:
            state = first
            for r in range(1, rounds + 1):
                state = study.step(seed, strategy, r, state, add)


def results(out: str, seeds: list[int], strategies: list[str], rounds: int) -> dict:
    """strategy -> [(labelled images, [mIoU % per finished seed]) per round], from the round folders."""
    found = {}
    for strategy in strategies:
        per_round = []
        for r in range(rounds + 1):
            counts, values = set(), []
            for seed in seeds:
                folder = round_dir(out, seed, strategy, r)
                path, state = metrics_path(folder), read_json(os.path.join(folder, "labelled.json"))
                if path and state:
                    counts.add(len(state["labelled"]))
                    values.append(100 * read_json(path)["miou"])
            if len(counts) > 1:
                sys.exit(f"error: round {r} of {strategy} has different labelled counts {sorted(counts)} across seeds")
            per_round.append((counts.pop() if counts else None, values))
        found[strategy] = per_round
    return found


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (std 0 for a single seed: no spread measured)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    if not values:
        return "not run"
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}" if len(values) > 1 else f"{m:.2f}"


def verdict(found: dict) -> dict:
    """The best strategy at the last round, and whether it beats random by more than the seed spread
    (the larger sample std of the two)."""
    last = {s: rounds[-1][1] for s, rounds in found.items() if rounds[-1][1]}
    if not last:
        return {"best": None, "text": "no strategy has finished its last round yet"}
    stats = {s: mean_std(v) for s, v in last.items()}
    best = max(stats, key=lambda s: stats[s][0])
    result = {"best": best, "last_round": len(next(iter(found.values()))) - 1,
              "mean_miou": {s: m for s, (m, _) in stats.items()}, "std_miou": {s: sd for s, (_, sd) in stats.items()},
              "seeds": {s: len(v) for s, v in last.items()}}
    if "random" not in stats:
        result.update(beats_random=None, text=f"best strategy: {best} (random was not run, so nothing to compare)")
        return result
    gain = stats[best][0] - stats["random"][0]
    spread = max(stats[best][1], stats["random"][1])
    result.update(gain_over_random=gain, seed_spread=spread, beats_random=best != "random" and gain > spread)
    if result["beats_random"]:
        result["text"] = (f"best strategy: {best}, {gain:.2f} points above random at the last round "
                          f"(seed spread {spread:.2f})")
    else:
        result["text"] = (f"no strategy beats random by more than the seed spread (best: {best}, "
                          f"{gain:+.2f} points vs random, spread {spread:.2f})")
    return result


def table(found: dict, command: str, decision: dict, plot_path: str) -> str:
    rounds = len(next(iter(found.values())))
    counts = [next((c for rs in found.values() if (c := rs[r][0]) is not None), None) for r in range(rounds)]
    head = [f"round {r} ({c} labelled)" if c is not None else f"round {r}" for r, c in enumerate(counts)]
    lines = ["#### Active learning: which image to label next", "",
             f"Generated by `scripts/active_learning.py` from the rounds' `metrics.json` files: `{command}`.",
             "Test mIoU % on the fixed evaluation images (mean ± sample std over seeds) after each round; round 0",
             f"is the same seeded random start for every strategy. Plot: `{plot_path}`.",
             "", "| strategy | " + " | ".join(head) + " | seeds |", "|---|" + "---:|" * (rounds + 1)]
    for strategy, per_round in found.items():
        lines.append(f"| {strategy} | " + " | ".join(cell(v) for _, v in per_round) + f" | {len(per_round[-1][1])} |")
    lines += ["", decision["text"] + "."]
    return "\n".join(lines) + "\n"


def plot(found: dict, path: str) -> None:
    series = {s: [(c, *mean_std(v)) for c, v in rs if v] for s, rs in found.items()}
    series = {s: v for s, v in series.items() if v}
    if series:
        save_png(line_plot(series, "labelled images", "test mIoU %", "active learning"), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, "runs/active_learning", "a folder of experiments/ with ddpm.json")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--start", type=int, default=None, help=f"random labelled images of round 0 (default {START})")
    p.add_argument("--rounds", type=int, default=None, help=f"rounds after the start (default {ROUNDS})")
    p.add_argument("--add", type=int, default=None, help=f"images ddpmseg suggest adds per round (default {ADD})")
    p.add_argument("--quick", action="store_true", help="a few images and a tiny ensemble (for tests)")
    p.add_argument("--plot", default="docs/active_learning.png", help="the plot PNG to write")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table, plot and verdict")
    args = p.parse_args(argv)
    quick = QUICK if args.quick else {"start": START, "rounds": ROUNDS, "add": ADD}
    start, rounds, add = (quick[k] if getattr(args, k) is None else getattr(args, k) for k in ("start", "rounds", "add"))
    if not os.path.isfile(os.path.join(REPO, "experiments", args.dataset, "ddpm.json")):
        p.error(f"experiments/{args.dataset}/ddpm.json does not exist")
    if min(start, rounds, add) < 1:
        p.error(f"--start, --rounds and --add must be >= 1, got {start}, {rounds}, {add}")
    out = os.path.join(REPO, args.out)
    if not args.table_only:
        study = Study(args.dataset, args.out, args.quick)
        if start + rounds * add > len(study.data["pool"]) - 1:
            p.error(f"--start {start} + --rounds {rounds} x --add {add} leaves fewer than 1 of the "
                    f"{len(study.data['pool'])} pool images unlabelled for the last round's ddpmseg suggest")
        run_all(study, args.seeds, args.strategies, start, rounds, add)
    found = results(out, args.seeds, args.strategies, rounds)
    decision = verdict(found)
    write_json_atomic(os.path.join(out, "best_strategy.json"), decision)
    plot(found, os.path.join(REPO, args.plot))
    command = (f"python scripts/active_learning.py --dataset {args.dataset} --out {args.out} --seeds "
               f"{' '.join(map(str, args.seeds))} --strategies {' '.join(args.strategies)} --start {start} "
               f"--rounds {rounds} --add {add}" + (" --quick" if args.quick else ""))
    text = table(found, command, decision, args.plot)
    publish("active_learning", text, os.path.join(REPO, args.docs))
    print(decision["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
