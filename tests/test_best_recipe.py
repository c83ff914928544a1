"""scripts/best_recipe.py: which changes enter best.json, and the sentence's numbers, on fabricated metrics."""
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


def write(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"device": "cpu", **metrics}))


def votes(hard, soft):
    return {"miou": hard / 100, "voting": "hard", "by_voting": {"hard": {"miou": hard / 100}, "soft": {"miou": soft / 100}}}


def fabricate(root):
    """Three seeds (seed spread 0.50 everywhere but the selected runs, 1.00): soft voting +2.00, DDPS +1.00,
    the selected features +3.50 help; ETF +0.20, the mirror +0.40 and dropout after BN -8.00 do not; the
    regularised run after BN has no runs and is not judged."""
    variants, selection = root / "runs" / "variants", root / "runs" / "selection" / "reference"
    for s in SEEDS:
        base = 28 + 0.5 * s
        write(variants / f"seed{s}" / "ddpm" / "50_150", votes(base, base + 2))
        write(variants / f"seed{s}" / "etf" / "50_150", votes(base + 0.2, base + 2))
        write(variants / f"seed{s}" / "etf_tta_flip", votes(base, base + 2.4))
        write(variants / f"seed{s}" / "ddps" / "50_150", {"miou": (base + 1) / 100, "voting": "hard",
                                                          "refine": {"miou_before": base / 100}})
        write(variants / f"seed{s}" / "ddpm_dropout_after_bn" / "50_150", votes(base - 8, base - 7))
        write(selection / "hand" / f"seed{s}" / "50_150", {"miou": base / 100})
        write(selection / "selected" / f"seed{s}" / "250_5", {"miou": (31 + s) / 100})
        write(root / "runs" / "best_recipe" / f"seed{s}" / "250_5", {"miou": (base + 3) / 100})
    (selection / "selection").mkdir(parents=True)
    (selection / "selection" / "selected.json").write_text(json.dumps({"steps": [250], "blocks": [5], "dim": [64, 64, 96]}))
    (root / "experiments" / "celebamask64").mkdir(parents=True)
    (root / "experiments" / "celebamask64" / "ddpm.json").write_text("{}")
    (root / "runs" / "active_learning").mkdir()
    (root / "runs" / "active_learning" / "best_strategy.json").write_text(json.dumps(
        {"best": "random", "text": "no strategy beats random by more than the seed spread (best: random)"}))


def test_best_json_takes_what_beats_the_seed_spread_and_the_sentence_compares_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(best_recipe, "REPO", str(tmp_path))
    monkeypatch.setattr(best_recipe.variants, "REPO", str(tmp_path))
    fabricate(tmp_path)
    assert best_recipe.main(["--seeds", *map(str, SEEDS), "--decide-only", "--docs", "."]) == 0
    best = json.loads((tmp_path / "experiments" / "celebamask64" / "best.json").read_text())
    assert best == {"base": "ddpm.json", "exp_dir": "pixel_classifiers/celebamask64/best", "steps": [250],
                    "blocks": [5], "dim": [64, 64, 96], "voting": "soft", "refine": {"method": "ddps"}}
    text = (tmp_path / "experiments.md").read_text()
    assert "takes selected steps x blocks, soft voting, DDPS refinement;" in text
    assert "- selected steps x blocks: +3.50 points vs a seed spread of 1.00 over 3 seeds (helps)" in text
    assert "- soft voting: +2.00 points vs a seed spread of 0.50 over 3 seeds (helps)" in text
    assert "- ETF regularizer: +0.20 points vs a seed spread of 0.50 over 3 seeds\n" in text
    assert "- test-time mirror: +0.40 points vs a seed spread of 0.50 over 3 seeds\n" in text
    assert "- dropout 0.4 after BN: -8.00 points vs a seed spread of 0.50 over 3 seeds\n" in text
    assert "- aug/AdamW/dropout after BN: 0 seeds, fewer than 2: no seed spread, not judged\n" in text
    assert ("best.json: 31.50 ± 0.50 mIoU over 3 seeds vs the original method's 28.50 ± 0.50 (variants table, "
            "DDPM row): +3.00 points, which reaches the target of +2.") in text
    assert "Active learning (`scripts/active_learning.py`): no strategy beats random" in text
    body = text.removeprefix("<!-- best_recipe:begin -->\n").removesuffix("<!-- best_recipe:end -->\n")
    assert body.startswith("#### Best recipe\n\n`experiments/<dataset>/best.json` takes") and body in capsys.readouterr().out


def test_a_missed_target_says_by_how_much(tmp_path, monkeypatch):
    monkeypatch.setattr(best_recipe, "REPO", str(tmp_path))
    monkeypatch.setattr(best_recipe.variants, "REPO", str(tmp_path))
    fabricate(tmp_path)
    for s in SEEDS:
        (tmp_path / "runs" / "best_recipe" / f"seed{s}" / "250_5" / "metrics.json").write_text(
            json.dumps({"miou": (29.25 + 0.5 * s) / 100}))
    text = best_recipe.sentence("runs/best_recipe", "runs/variants", SEEDS, [], None)
    assert "+1.25 points, which misses by 0.75 points the target of +2." in text
    assert "is not decided yet (no change has runs of 2 seeds)" in text
    judged = [best_recipe.judge("soft voting", {0: 30.0, 1: 30.5}, {0: 30.0, 1: 30.6})]
    assert "takes nothing (best.json is ddpm.json)" in best_recipe.sentence("runs/best_recipe", "runs/variants",
                                                                           SEEDS, judged, None)


def test_runs_of_another_recipe_are_refused(tmp_path, monkeypatch):
    """A changed decision must not mix its runs with the old recipe's: the run folder records its recipe."""
    monkeypatch.setattr(best_recipe, "REPO", str(tmp_path))
    monkeypatch.setattr(best_recipe.variants, "REPO", str(tmp_path))
    fabricate(tmp_path)
    (tmp_path / "runs" / "best_recipe" / "recipe.json").write_text(json.dumps({"base": "ddpm.json"}))
    with pytest.raises(SystemExit, match="were trained with another best.json"):
        best_recipe.main(["--seeds", *map(str, SEEDS), "--docs", "."])
