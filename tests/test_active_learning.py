"""scripts/active_learning.py: the rounds' data, the strategies' picks, resume, and the table's numbers."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import CELEBAMASK64, FACES_CKPT, REPO, checkout_env, ddpmseg_command, require, run_repo_script
from ddpmseg.common.seeding import stream_generator

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbours, as when run
spec = importlib.util.spec_from_file_location("active_learning", REPO / "scripts" / "active_learning.py")
al = importlib.util.module_from_spec(spec)
spec.loader.exec_module(al)
import line_plot  # noqa: E402  (scripts/ is on the path only from here)
STRATEGIES = ["uncertainty", "random"]


def run_script(tmp):
    return run_repo_script("scripts/active_learning.py", "--out", str(tmp / "al"), "--seeds", "0", "--strategies",
                           *STRATEGIES, "--quick", "--docs", str(tmp), "--plot", str(tmp / "al.png"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    require(CELEBAMASK64), require(FACES_CKPT)
    tmp = tmp_path_factory.mktemp("al")
    (tmp / "selection.md").write_text("<!-- selection:begin -->\nselection table\n<!-- selection:end -->\n")
    return tmp, run_script(tmp)


def state(tmp, strategy, r):
    with open(os.path.join(al.round_dir(str(tmp / "al"), 0, strategy, r), "labelled.json")) as f:
        return json.load(f)


def stems(folder):
    return sorted({os.path.splitext(f)[0] for f in os.listdir(folder)})


def test_split_and_folders_keep_the_evaluation_images_out(study):
    tmp, _ = study
    q = al.QUICK
    train = sorted(p.stem for p in (CELEBAMASK64 / "real" / "train").glob("*.png"))
    test = sorted(p.stem for p in (CELEBAMASK64 / "real" / "test").glob("*.png"))
    split = json.loads((tmp / "al" / "split.json").read_text())
    assert split["pool"] == sorted(train[:q["train_images"]] + test[:q["pool_test"]])
    assert split["evaluation"] == test[q["pool_test"]:q["pool_test"] + q["eval_images"]]
    assert stems(tmp / "al" / "evaluation") == split["evaluation"]
    folders = [os.path.join(d, name) for d, subdirs, _ in os.walk(tmp / "al") for name in subdirs
               if name in ("labelled", "pool")]
    assert len(folders) == 2 * (1 + 2 * len(STRATEGIES))  # round 0 once, 2 rounds per strategy
    for folder in folders + [str(tmp / "al" / "evaluation")]:
        inside = stems(folder)
        if not folder.endswith("evaluation"):
            assert not set(inside) & set(split["evaluation"]), folder
        for f in os.listdir(folder):  # links into the dataset, never copies
            path = os.path.join(folder, f)
            assert os.path.islink(path) and os.path.realpath(path).startswith(os.path.realpath(CELEBAMASK64))
    # ddpmseg suggest was only ever shown pool images.
    for strategy in STRATEGIES:
        for r in (1, 2):
            with open(os.path.join(al.round_dir(str(tmp / "al"), 0, strategy, r), "suggestions", "suggestions.csv")) as f:
                for row in csv.DictReader(f):
                    assert row["stem"] in split["pool"] and row["stem"] not in split["evaluation"]


def test_rounds_grow_by_the_strategy_picks_from_a_shared_start(study):
    tmp, _ = study
    out = str(tmp / "al")
    assert sorted(os.listdir(tmp / "al" / "seed0")) == sorted(["round0", *STRATEGIES])  # one round 0
    start = state(tmp, "", 0)
    assert len(start["labelled"]) == al.QUICK["start"]
    pool = sorted(json.loads((tmp / "al" / "split.json").read_text())["pool"])
    order = torch.randperm(len(pool), generator=stream_generator("active_learning_start", 0))
    assert start["labelled"] == sorted(pool[i] for i in order[:al.QUICK["start"]].tolist())
    for strategy in STRATEGIES:
        before = start
        for r in (1, 2):
            folder = al.round_dir(out, 0, strategy, r)
            now = state(tmp, strategy, r)
            with open(os.path.join(folder, "suggestions", "suggestions.csv")) as f:
                picked = [row["stem"] for row in csv.DictReader(f)]
            assert now["added"] == picked and len(picked) == al.QUICK["add"]
            assert now["labelled"] == sorted(before["labelled"] + picked) and set(picked) <= set(before["pool"])
            assert now["pool"] == sorted(set(before["pool"]) - set(picked))
            assert stems(os.path.join(folder, "labelled")) == now["labelled"]
            assert stems(os.path.join(folder, "pool")) == now["pool"]
            run_dir = os.path.dirname(al.metrics_path(folder))
            cfg = json.loads(open(os.path.join(run_dir, "config.json")).read())
            assert cfg["training_path"] == os.path.join(folder, "labelled") and cfg["training_number"] == len(now["labelled"])
            assert cfg["testing_path"] == os.path.join(out, "evaluation") and cfg["seed"] == 0
            before = now


def test_uncertainty_picks_the_most_uncertain_pool_image(study, tmp_path):
    """`ddpmseg suggest` on round 0's whole pool: the image round 1 added by uncertainty tops that ranking."""
    tmp, _ = study
    round0 = al.round_dir(str(tmp / "al"), 0, "", 0)
    r = subprocess.run([*ddpmseg_command("suggest"), "--run", os.path.dirname(al.metrics_path(round0)), "--pool",
                        os.path.join(round0, "pool"), "--k", str(len(state(tmp, "", 0)["pool"])),
                        "--strategy", "uncertainty", "--out", str(tmp_path)], cwd=REPO, env=checkout_env(), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "suggestions.csv")))
    scores = [float(row["uncertainty"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert state(tmp, "uncertainty", 1)["added"] == [rows[0]["stem"]]


def test_table_plot_and_verdict_come_from_the_metrics(study):
    tmp, printed = study
    out = str(tmp / "al")
    text = (tmp / "selection.md").read_text()
    assert text.startswith("<!-- selection:begin -->\nselection table\n<!-- selection:end -->")  # kept
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| strategy")}
    means = {}
    for strategy in STRATEGIES:
        values = [100 * json.load(open(al.metrics_path(al.round_dir(out, 0, strategy, r))))["miou"] for r in range(3)]
        assert rows[strategy][1:4] == [f"{v:.2f}" for v in values]
        means[strategy] = values[-1]
    assert "round 0 (2 labelled) | round 1 (3 labelled) | round 2 (4 labelled)" in text
    assert rows["uncertainty"][1] == rows["random"][1]  # the shared start
    decision = json.loads((tmp / "al" / "best_strategy.json").read_text())
    assert decision["best"] == max(means, key=means.get) and decision["mean_miou"] == pytest.approx(means)
    assert decision["beats_random"] == (decision["best"] != "random" and means[decision["best"]] > means["random"])
    assert decision["text"] in printed
    with Image.open(tmp / "al.png") as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert set(line_plot.COLOURS[:len(STRATEGIES)]) <= colours  # a line per strategy


def test_a_rerun_skips_every_finished_step(study):
    tmp, _ = study
    finished = sorted(str(p) for p in (tmp / "al").rglob("*") if p.name in ("metrics.json", "suggestions.csv",
                                                                              "labelled.json"))
    mtimes = [os.stat(p).st_mtime_ns for p in finished]
    printed = run_script(tmp)
    assert "+ " not in printed  # no ddpmseg suggest or train_interpreter.py was started
    assert [os.stat(p).st_mtime_ns for p in finished] == mtimes


def test_verdict_says_when_no_strategy_beats_random_by_the_seed_spread():
    close = {"uncertainty": [(8, [20.0, 21.0]), (12, [24.0, 26.0])], "random": [(8, [20.0, 21.0]), (12, [23.0, 25.0])]}
    v = al.verdict(close)
    assert v["best"] == "uncertainty" and v["beats_random"] is False and v["seed_spread"] == pytest.approx(2 ** 0.5)
    assert v["text"].startswith("no strategy beats random by more than the seed spread")
    clear = {"uncertainty": [(8, [20.0, 21.0]), (12, [28.0, 28.5])], "random": close["random"]}
    v = al.verdict(clear)
    assert v["beats_random"] is True and v["gain_over_random"] == pytest.approx(4.25)
    assert v["text"].startswith("best strategy: uncertainty, 4.25 points above random")
