"""scripts/variants.py: the results table is computed from the runs' metrics.json files."""
import importlib.util
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbour readme_block, as when run
spec = importlib.util.spec_from_file_location("variants", REPO / "scripts" / "variants.py")
variants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variants)


def write_metrics(folder, miou_by_voting, train_s=100.0, evaluated=False):
    folder.mkdir(parents=True)
    m = {"miou": miou_by_voting["soft"], "voting": "soft", "device": "cpu",
         "by_voting": {k: {"miou": v} for k, v in miou_by_voting.items()},
         "timings_s": {"evaluation_s": 20.0}}
    if evaluated:
        m["training_timings_s"] = {"train_features_s": 5.0, "train_s": train_s}
    else:
        m["timings_s"].update(train_features_s=5.0, train_s=train_s)
    (folder / "metrics.json").write_text(json.dumps(m))


def test_table_reads_each_row_from_its_run_and_voting(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    votes = {"hard": 0.30, "soft": 0.32, "soft_prob": 0.31, "weighted": 0.31, "last_member": 0.25}
    for seed, shift in ((0, 0.0), (1, 0.02)):
        base = tmp_path / "runs" / f"seed{seed}"
        write_metrics(base / "ddpm" / "50_150", {k: v + shift for k, v in votes.items()}, train_s=100 + 10 * seed)
        write_metrics(base / "etf_tta", {k: v + shift + 0.05 for k, v in votes.items()}, train_s=200, evaluated=True)
    text = variants.table("celebamask64", "runs", [0, 1])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["DDPM"][1:4] == ["31.00 ± 1.41", "2", "110"]  # hard: 30, 32; 5 s features + 100/110 s training
    assert rows["DDPM_V"][1] == "33.00 ± 1.41"
    assert rows["DDPM (last member)"][1] == "26.00 ± 1.41"
    assert rows["DDPM_VE + TTA"][1:4] == ["38.00 ± 1.41", "2", "205"]  # training time of the trained run
    assert rows["DDPM_VE"][1:3] == ["–", "0"]  # no runs yet: nothing is made up
    assert "python scripts/variants.py --dataset celebamask64 --out runs --seeds 0 1" in text


def test_refined_run_gives_a_before_and_an_after_row(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    for seed, (before, after) in enumerate([(0.30, 0.29), (0.32, 0.33)]):
        folder = tmp_path / "runs" / f"seed{seed}" / "ddps" / "50_150"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "miou": after, "voting": "hard", "device": "cpu", "refine": {"miou_before": before, "miou_after": after, "miou_by_step": [after]},
            "timings_s": {"evaluation_s": 20.0, "train_features_s": 5.0, "train_s": 100.0}}))
    text = variants.table("celebamask64", "runs", [0, 1])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert variants.refinement_summary("runs", [0, 1]).startswith(
        "refinement changed test mIoU by -1.00 to +1.00 points across the 2 seeds, from 31.00 ± 1.41 to 31.00 ± 2.83")
    assert rows["DDPM, before DDPS refinement"][1:3] == ["31.00 ± 1.41", "2"]
    assert rows["DDPM + DDPS refinement"][1:3] == ["31.00 ± 2.83", "2"]
    assert "--set 'refine={\"method\": \"ddps\"}'" in text


def test_table_only_writes_the_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    (tmp_path / "experiments" / "celebamask64").mkdir(parents=True)
    (tmp_path / "experiments" / "celebamask64" / "etf.json").write_text("{}")
    assert variants.main(["--out", "runs", "--seeds", "0", "--docs", ".", "--table-only"]) == 0
    text = (tmp_path / "experiments.md").read_text()
    assert text == "<!-- variants:begin -->\n" + variants.table("celebamask64", "runs", [0]) + "<!-- variants:end -->\n"
    assert text.splitlines()[1] == "#### Results: method variants"


def test_table_only_keeps_the_other_scripts_blocks(tmp_path, monkeypatch):
    """docs/experiments.md is shared: variants.py replaces its own block and leaves the others as they are."""
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    (tmp_path / "experiments" / "celebamask64").mkdir(parents=True)
    (tmp_path / "experiments" / "celebamask64" / "etf.json").write_text("{}")
    others = ("<!-- best_recipe:begin -->\nbest recipe\n<!-- best_recipe:end -->\n\n"
              "<!-- min_region:begin -->\nmin region table\n<!-- min_region:end -->\n")
    (tmp_path / "experiments.md").write_text("<!-- variants:begin -->\nold variants table\n<!-- variants:end -->\n\n" + others)
    assert variants.main(["--out", "runs", "--seeds", "0", "--docs", ".", "--table-only"]) == 0
    text = (tmp_path / "experiments.md").read_text()
    assert text == ("<!-- variants:begin -->\n" + variants.table("celebamask64", "runs", [0]) + "<!-- variants:end -->\n\n"
                    + others)
    # A file without the block gets it appended after what it holds.
    (tmp_path / "experiments.md").write_text(others)
    assert variants.main(["--out", "runs", "--seeds", "0", "--docs", ".", "--table-only"]) == 0
    assert (tmp_path / "experiments.md").read_text().startswith(others + "\n<!-- variants:begin -->\n#### Results: method variants")


def test_dropout_rows_explain_themselves():
    """The dropout-placement rows are in the table, each with its one-line explanation, and read trained runs."""
    labels = {label: (name, what) for label, name, _, what in variants.ROWS}
    for label, name in (("DDPM + dropout 0.4 before BN", "ddpm_dropout"),
                        ("DDPM + dropout 0.4 after BN", "ddpm_dropout_after_bn"),
                        ("DDPM_VE + aug/AdamW/dropout after BN", "etf_reg_after_bn")):
        assert labels[label][0] == name and name in variants.TRAINED and "BatchNorm" in labels[label][1]


def test_unknown_dataset_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    with pytest.raises(SystemExit):
        variants.main(["--dataset", "nope", "--table-only"])
    assert "experiments/nope/etf.json does not exist" in capsys.readouterr().err


def test_backbone_table_reads_each_row_from_its_runs(tmp_path, monkeypatch):
    """scripts/backbones.py: one row per backbone from the runs' metrics.json and config.json."""
    monkeypatch.setitem(sys.modules, "variants", variants)
    spec_b = importlib.util.spec_from_file_location("backbones_script", REPO / "scripts" / "backbones.py")
    backbones = importlib.util.module_from_spec(spec_b)
    spec_b.loader.exec_module(backbones)
    monkeypatch.setattr(backbones, "REPO", str(tmp_path))
    monkeypatch.setattr(variants, "REPO", str(tmp_path))  # its run_dir and load, which backbones.py uses
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    runs = {"swav": ((0.12, 0.14), 6720), "diffusers": ((0.081, 0.085), 1920), "dinov2": ((0.10,), 1536)}
    for name, (mious, dim) in runs.items():
        for seed, miou in enumerate(mious):
            folder = tmp_path / "runs" / f"seed{seed}" / name / "run"  # the trainer writes one level down
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"miou": miou, "device": "cpu"}))
            (folder / "config.json").write_text(json.dumps({"dim": [64, 64, dim]}))
    text = backbones.table("celebamask64", "runs", [0, 1], backbones.SHORT_PROTOCOL)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    swav = rows["SwAV ResNet-50, every other bottleneck input"]
    assert swav[1:5] == ["random weights (seeded)", "6720", "13.00 ± 1.41", "2 |"]
    diffusers = rows["diffusers UNet2DModel in the google/ddpm-256 architecture, at 64 px: up_blocks 2-4 at "
                     "t = 50, 150, 250"]
    assert diffusers[1:5] == ["random weights (seeded)", "1920", "8.30 ± 0.28", "2 |"]
    dinov2 = rows["DINOv2 ViT-S/14, the 64 px image resized to 112: patch tokens of blocks 8-11"]
    assert dinov2[1:5] == ["random weights (seeded)", "1536", "10.00", "1 |"]  # seed 1 not run: one seed, no spread
    assert "--exp experiments/celebamask64/dinov2.json --seed S --set 'max_epochs=1'" in text
    assert rows["MAE ViT-L/8, last 12 blocks"][3:5] == ["not run", "0 |"]
    assert rows["DDPM U-Net (the config's checkpoint)"][1] == "`../shared/checkpoints/faces64_ema.pt`"
    assert "--exp experiments/celebamask64/swav.json --seed S --set 'max_epochs=1'" in text


def test_dropout_position_rows_read_their_own_runs(tmp_path, monkeypatch):
    """The dropout-placement rows: before BN alone, after BN alone, after BN with aug/AdamW (soft voting)."""
    monkeypatch.setattr(variants, "REPO", str(tmp_path))
    votes = {"hard": 0.20, "soft": 0.22, "soft_prob": 0.21, "weighted": 0.21, "last_member": 0.18}
    base = tmp_path / "runs" / "seed0"
    write_metrics(base / "ddpm_dropout" / "50_150", votes)
    write_metrics(base / "ddpm_dropout_after_bn" / "50_150", {k: v + 0.05 for k, v in votes.items()})
    write_metrics(base / "etf_reg_after_bn" / "50_150", {k: v + 0.1 for k, v in votes.items()})
    text = variants.table("celebamask64", "runs", [0])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["DDPM + dropout 0.4 before BN"][1:3] == ["20.00", "1"]
    assert rows["DDPM + dropout 0.4 after BN"][1:3] == ["25.00", "1"]
    assert rows["DDPM_VE + aug/AdamW/dropout after BN"][1:3] == ["32.00", "1"]  # soft voting
    assert "--exp_dir <out>/seed<N>/ddpm_dropout_after_bn --seed <N> --set 'dropout=0.4' " \
           "--set 'dropout_position=\"after_bn\"'" in text
    # Every run is made, once, the original method first and the augmented (five-fold costlier) ones last.
    assert sorted(variants.RUN_ORDER) == sorted([*variants.TRAINED, *variants.EVALUATED])
    assert variants.RUN_ORDER[0] == "ddpm" and variants.RUN_ORDER.index("etf_reg") > variants.RUN_ORDER.index("ddps")
