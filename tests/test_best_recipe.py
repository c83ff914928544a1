"""scripts/best_recipe.py: the greedy stacking's verdicts, the runs it trains, best.json and the sentence's
numbers, on fabricated metrics files."""
import importlib.util
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbours, as when run
spec = importlib.util.spec_from_file_location("best_recipe", REPO / "scripts" / "best_recipe.py")
best_recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(best_recipe)
SEEDS = [0, 1, 2]
# Every fabricated row is base + offset + 0.5 * seed, so each row's seed std is 0.50 and a gain is its offset
# difference: "helps" means an offset difference above 0.50.
ACCURACY = {"default": 0.0, "draws2": 0.3, "draws4": 1.0, "draws8": 0.6,
            "inverse": -6.0, "sqrt_inverse": 0.3, "balanced": 0.2}
# Stage runs of <out>/<changes>: draws4 (the accuracy study's own runs) + soft voting +0.8 (kept), + ETF +0.1
# (not), + mirror +1.0 (kept), + DDPS -1.0 (not).
STAGES = {"draws4+soft_voting": 1.8, "draws4+soft_voting+etf": 1.9, "draws4+soft_voting+mirror": 2.8,
          "draws4+soft_voting+mirror+ddps": 1.8}
BASE = 38.0


def miou(offset, seed):
    return BASE + offset + 0.5 * seed


def write(path, value):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"device": "cpu", "miou": value / 100}))


def fabricate(root, stages=STAGES):
    for s in SEEDS:
        for name, offset in ACCURACY.items():
            write(root / "runs" / "accuracy" / f"seed{s}" / name / "50_150_4", miou(offset, s))
        for name, offset in stages.items():
            write(root / "runs" / "best_recipe" / name / f"seed{s}" / "50_150_4", miou(offset, s))
    (root / "experiments" / "celebamask64").mkdir(parents=True)
    (root / "experiments" / "celebamask64" / "ddpm.json").write_text("{}")
    (root / "runs" / "active_learning").mkdir()
    (root / "runs" / "active_learning" / "best_strategy.json").write_text(json.dumps(
        {"best": "random", "text": "no strategy beats random by more than the seed spread (best: random)"}))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for module in (best_recipe, best_recipe.variants, best_recipe.selection_study):
        monkeypatch.setattr(module, "REPO", str(tmp_path))
    return tmp_path


def test_each_change_is_kept_only_if_it_beats_the_current_recipe_by_the_seed_spread(repo, capsys):
    fabricate(repo)
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--table-only", "--docs", "."]) == 0
    best = json.loads((repo / "experiments" / "celebamask64" / "best.json").read_text())
    assert best == {"base": "ddpm.json", "exp_dir": "pixel_classifiers/celebamask64/best", "noise_draws": 4,
                    "voting": "soft", "tta": ["hflip"]}
    text = (repo / "experiments.md").read_text()
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert verdicts == [
        "- selected steps x blocks: 0 seeds, fewer than 2: no seed spread, not judged",
        "- noise draws (noise_draws 4, the best of the accuracy study): +1.00 points vs a seed spread of 0.50 "
        "over 3 seeds (kept)",
        # sqrt_inverse has the highest mean of the class weightings, +0.30 over the defaults: not a candidate.
        "- class weighting (class_weighting sqrt_inverse_frequency, the best of the accuracy study): "
        "+0.30 points vs a seed spread of 0.50 over 3 seeds",
        "- soft voting: +0.80 points vs a seed spread of 0.50 over 3 seeds (kept)",
        "- ETF regularizer: +0.10 points vs a seed spread of 0.50 over 3 seeds",  # judged against +soft voting
        "- test-time mirror: +1.00 points vs a seed spread of 0.50 over 3 seeds (kept)",
        "- DDPS refinement: -1.00 points vs a seed spread of 0.50 over 3 seeds",  # against +mirror, not +ETF
    ]
    assert "takes noise draws (noise_draws 4, the best of the accuracy study), soft voting, test-time mirror;" in text
    # best.json's runs are the last kept stage's (offset 2.8): 41.30 ± 0.50 against the defaults' 38.50 ± 0.50.
    assert ("best.json on the reference checkpoint (the original method: ddpm.json, the accuracy study's "
            "defaults): 41.30 ± 0.50 mIoU over 3 seeds vs the original method's 38.50 ± 0.50: +2.80 points (per "
            "seed +2.80, +2.80, +2.80), which reaches the target of +2.") in text
    assert "DDPM trained here" not in text  # no --ddpm
    assert "Active learning (`scripts/active_learning.py`): no strategy beats random" in text
    body = text.removeprefix("<!-- best_recipe:begin -->\n").removesuffix("<!-- best_recipe:end -->\n")
    assert body.startswith("#### Best recipe\n\n`experiments/<dataset>/best.json` takes")
    assert body in capsys.readouterr().out


def test_a_candidate_without_runs_stops_the_stacking_and_best_json_stays(repo):
    fabricate(repo, {k: v for k, v in STAGES.items() if k != "draws4+soft_voting+etf"})
    (repo / "experiments" / "celebamask64" / "best.json").write_text('{"base": "ddpm.json"}')
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--table-only", "--docs", "."]) == 0
    text = (repo / "experiments.md").read_text()
    assert ("- ETF regularizer: not measured yet (fewer than 2 seeds in "
            "`runs/best_recipe/draws4+soft_voting+etf/seed<S>`): the stacking stops here") in text
    assert "test-time mirror" not in text and "is not decided yet" in text and "no comparison yet" in text
    assert (repo / "experiments" / "celebamask64" / "best.json").read_text() == '{"base": "ddpm.json"}'


def test_a_missed_target_says_by_how_much_and_nothing_kept_is_ddpm_json(repo):
    fabricate(repo, {})
    for s in SEEDS:
        for name in ACCURACY:
            write(repo / "runs" / "accuracy" / f"seed{s}" / name / "50_150_4", miou(0.2 * (name != "default"), s))
    verdicts = [best_recipe.judge("soft voting", {0: 40.0, 1: 40.5}, {0: 38.75, 1: 39.25})]
    text = best_recipe.sentence("runs/accuracy", "runs/accuracy/seed{}/draws4", SEEDS, verdicts, None)
    assert "+1.25 points vs a seed spread of 0.35 over 2 seeds (kept)" in text
    assert "+0.20 points (per seed +0.20, +0.20, +0.20), which misses by 1.80 points the target of +2." in text
    assert "takes nothing (best.json is ddpm.json)" in best_recipe.sentence(
        "runs/accuracy", "runs/accuracy/seed{}/default", SEEDS, [verdicts[0] | {"helps": False}], None)


def test_best_json_on_the_ddpm_trained_here_against_the_original_method_there(repo, monkeypatch):
    """--ddpm: the original method (the selection study's hand-set runs of that U-Net) and best.json, both on
    the folder's latest checkpoint, trained when missing and compared seed by seed."""
    fabricate(repo)
    ddpm = repo / "runs" / "ddpm"
    ddpm.mkdir(parents=True)
    for step in (0, 800):
        (ddpm / f"model{step:06d}.pt").write_bytes(b"")
    commands = []

    def fake_run(cmd):  # the trained U-Net's runs: the original method 35 + 0.5 seed, best.json +1.5 on seed 0 ...
        commands.append(cmd)
        folder, seed = cmd[cmd.index("--exp_dir") + 1], int(cmd[cmd.index("--seed") + 1])
        write(repo / folder / "50_150_4", 35 + 0.5 * seed + (1.5 + 0.2 * seed if "trained_unet" in folder else 0))

    monkeypatch.setattr(best_recipe.variants, "run", fake_run)
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--docs", ".", "--ddpm", "runs/ddpm"]) == 0
    sets = {cmd[cmd.index("--exp_dir") + 1]: cmd[cmd.index("--exp_dir") + 2:] for cmd in commands}
    assert sets == {
        **{f"runs/selection/trained/hand/seed{s}": ["--seed", str(s), "--set", 'model_path="runs/ddpm/model000800.pt"']
           for s in SEEDS},
        **{f"runs/best_recipe/trained_unet/seed{s}": [
            "--seed", str(s), "--set", "noise_draws=4", "--set", 'voting="soft"', "--set", 'tta=["hflip"]',
            "--set", 'model_path="runs/ddpm/model000800.pt"'] for s in SEEDS}}
    text = (repo / "experiments.md").read_text()
    assert ("best.json on the DDPM trained here (`runs/ddpm/model000800.pt`, the same keys; the stack was judged "
            "on the reference checkpoint only): 37.20 ± 0.70 mIoU over 3 seeds vs the original method's 35.50 ± "
            "0.50: +1.70 points (per seed +1.50, +1.70, +1.90), which misses by 0.30 points the target of +2.") in text
    commands.clear()
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--docs", ".", "--ddpm", "runs/ddpm"]) == 0
    assert commands == []  # resumed: every run is there


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_each_stage_trains_the_recipe_so_far_plus_its_change_and_a_rerun_trains_nothing(repo, monkeypatch, jobs):
    """The commands are recorded instead of run (each would train an ensemble): a fake run writes the metrics
    the recipe's offset gives, so the decisions, and the keys of every later command, follow them."""
    fabricate(repo, {})
    offsets = {"draws4+soft_voting": 1.8, "draws4+soft_voting+etf": 2.9, "draws4+soft_voting+etf+mirror": 3.0,
               "draws4+soft_voting+etf+ddps": 3.5}
    commands = []

    def fake_run(cmd):
        commands.append(cmd)
        folder = cmd[cmd.index("--exp_dir") + 1]
        seed = int(cmd[cmd.index("--seed") + 1])
        write(repo / folder / "50_150_4", miou(offsets[folder.split("/")[2]], seed))

    monkeypatch.setattr(best_recipe.variants, "run", fake_run)
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--docs", ".", "--jobs", jobs]) == 0
    sets = {}
    for cmd in commands:
        assert cmd[1:4] == ["train_interpreter.py", "--exp", "experiments/celebamask64/ddpm.json"]
        folder = cmd[cmd.index("--exp_dir") + 1]
        keys = dict(s.split("=", 1) for s in cmd[cmd.index("--seed") + 2:][1::2])
        sets.setdefault(folder.rsplit("/", 1)[0], []).append((folder.rsplit("/", 1)[1], keys))
    etf = {"regularizer": '"etf"', "etf_alpha": "1.0", "etf_beta": "0.4"}
    want = {
        "runs/best_recipe/draws4+soft_voting": {"noise_draws": "4", "voting": '"soft"'},
        "runs/best_recipe/draws4+soft_voting+etf": {"noise_draws": "4", "voting": '"soft"', **etf},
        # the mirror (+0.10 over +ETF) is not kept: DDPS is tried on top of +ETF without it
        "runs/best_recipe/draws4+soft_voting+etf+mirror": {"noise_draws": "4", "voting": '"soft"', **etf,
                                                           "tta": '["hflip"]'},
        "runs/best_recipe/draws4+soft_voting+etf+ddps": {"noise_draws": "4", "voting": '"soft"', **etf,
                                                         "refine": '{"method": "ddps"}'},
    }
    assert {f: [k for _, k in runs] for f, runs in sets.items()} == {f: [k] * len(SEEDS) for f, k in want.items()}
    assert all(sorted(s for s, _ in runs) == [f"seed{i}" for i in SEEDS] for runs in sets.values())
    best = json.loads((repo / "experiments" / "celebamask64" / "best.json").read_text())
    assert best == {"base": "ddpm.json", "exp_dir": "pixel_classifiers/celebamask64/best", "noise_draws": 4,
                    "voting": "soft", **best_recipe.ETF, "refine": {"method": "ddps"}}
    commands.clear()
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--docs", ".", "--jobs", jobs]) == 0
    assert commands == []
    with pytest.raises(SystemExit):
        best_recipe.main(["--seeds", "0", "--docs", ".", "--jobs", "0"])
