"""scripts/selection_study.py: selection from the training images only, the runs each protocol trains, resume,
and the table's numbers."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest

from conftest import CELEBAMASK64, FACES_CKPT, REPO, require, run_repo_script

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbours, as when run
spec = importlib.util.spec_from_file_location("selection_study", REPO / "scripts" / "selection_study.py")
ss = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ss)
UNETS = ["reference", "untrained"]
SEEDS = ["0", "1"]


def run_script(tmp):
    return run_repo_script("scripts/selection_study.py", "--out", str(tmp / "sel"), "--seeds", *SEEDS, "--unets",
                           *UNETS, "--quick", "--docs", str(tmp))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    require(CELEBAMASK64), require(FACES_CKPT)
    tmp = tmp_path_factory.mktemp("sel")
    return tmp, run_script(tmp)


def kept_own(tmp, unet):
    return ss.kept_own(str(tmp / "sel" / unet / "selection"), "experiments/celebamask64/ddpm.json")


def run_config(tmp, unet, protocol, seed):
    """The config and metrics of a run; the selected protocol's are the hand-set run's when the selection
    kept the config's own (and then no selected run was trained)."""
    if protocol == "selected" and kept_own(tmp, unet):
        assert not (tmp / "sel" / unet / "selected").exists()
        protocol = "hand"
    folder = tmp / "sel" / unet / protocol / f"seed{seed}"
    (sub,) = [p for p in folder.iterdir() if (p / "metrics.json").exists()]
    return json.loads((sub / "config.json").read_text()), json.loads((sub / "metrics.json").read_text())


def test_selection_reads_training_images_and_each_protocol_trains_its_own(study):
    tmp, _ = study
    train = sorted(p.name for p in (CELEBAMASK64 / "real" / "train").glob("*.png"))
    for unet in UNETS:
        report = json.loads((tmp / "sel" / unet / "selection" / "selection.json").read_text())
        assert report["training_images"] == train[:ss.QUICK_SETS["training_number"]]  # never a test image
        # The quick grid, plus the config's own steps x blocks (the fallback).
        assert report["grid"] == {"steps": [50, 150, 250], "blocks": [4, 5, 6, 7, 8]}
        selected = json.loads((tmp / "sel" / unet / "selection" / "selected.json").read_text())
        for seed in SEEDS:
            hand, _ = run_config(tmp, unet, "hand", seed)
            chosen, _ = run_config(tmp, unet, "selected", seed)
            assert (hand["steps"], hand["blocks"]) == ([50, 150, 250], [4, 5, 6, 7, 8])
            assert (chosen["steps"], chosen["blocks"], chosen["dim"]) == (
                report["selected"]["steps"], report["selected"]["blocks"], selected["dim"])
            for cfg in (hand, chosen):
                assert cfg["seed"] == int(seed) and cfg["model_num"] == 2
                assert (cfg["random_weights"], cfg["model_path"]) == (
                    (True, "") if unet == "untrained" else (False, "../shared/checkpoints/faces64_ema.pt"))


def test_table_numbers_are_the_runs_mean_and_std(study):
    tmp, printed = study
    text = (tmp / "selection.md").read_text()
    body = text.removeprefix("<!-- selection:begin -->\n").removesuffix("<!-- selection:end -->\n")
    assert body.startswith("#### Steps and blocks") and body in printed  # the printed table is the block
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    for unet in UNETS:
        hand = [100 * run_config(tmp, unet, "hand", s)[1]["miou"] for s in SEEDS]
        chosen = [100 * run_config(tmp, unet, "selected", s)[1]["miou"] for s in SEEDS]
        diff = [c - h for c, h in zip(chosen, hand)]
        row = rows[ss.WHAT[unet]]
        assert row[1:4] == [f"{statistics.mean(hand):.2f} ± {statistics.stdev(hand):.2f}",
                            f"{statistics.mean(chosen):.2f} ± {statistics.stdev(chosen):.2f}",
                            f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f}"]
        report = json.loads((tmp / "sel" / unet / "selection" / "selection.json").read_text())["selected"]
        assert row[4].startswith(f"{report['steps']} × {report['blocks']}")
        assert row[5].startswith(f"{100 * report['miou']:.2f} ± {100 * report['miou_std']:.2f}")
        assert row[6] == "2 |"


def test_a_rerun_skips_every_finished_step(study):
    tmp, _ = study
    finished = sorted(str(p) for p in (tmp / "sel").rglob("*") if p.name in ("metrics.json", "selected.json"))
    assert len(finished) == sum(1 + len(SEEDS) * (1 if kept_own(tmp, unet) else 2) for unet in UNETS)
    mtimes = [os.stat(p).st_mtime_ns for p in finished]
    assert "+ " not in run_script(tmp)  # nothing was started
    assert [os.stat(p).st_mtime_ns for p in finished] == mtimes


def test_a_selection_unlike_the_config_trains_its_own_runs(study, tmp_path):
    """selected.json with other noise draws than ddpm.json's is not the hand-set config: its runs are trained
    from it, while those of a selection that kept the config's own are the hand-set runs."""
    tmp, _ = study
    out = tmp_path / "sel"
    (out / "reference").mkdir(parents=True)
    for part in ("selection", "hand"):
        subprocess.run(["cp", "-r", str(tmp / "sel" / "reference" / part), str(out / "reference")], check=True)
    selected = out / "reference" / "selection" / "selected.json"
    cfg = json.loads(selected.read_text())
    assert ss.kept_own(str(selected.parent), "experiments/celebamask64/ddpm.json") == (
        (cfg["steps"], cfg["blocks"], cfg.get("noise_draws", 1)) == ([50, 150, 250], [4, 5, 6, 7, 8], 1))
    selected.write_text(json.dumps({**cfg, "noise_draws": 2}))
    assert not ss.kept_own(str(selected.parent), "experiments/celebamask64/ddpm.json")
    ss.run_unet("celebamask64", str(out), "reference", None, [0], quick=True, budget_minutes=None)
    (run,) = [p for p in (out / "reference" / "selected" / "seed0").iterdir() if (p / "metrics.json").exists()]
    assert json.loads((run / "config.json").read_text())["noise_draws"] == 2
    assert ss.metrics(str(out), "reference", "selected", 0, "experiments/celebamask64/ddpm.json") == json.loads(
        (run / "metrics.json").read_text())


def test_trained_unet_is_the_latest_checkpoint_of_the_ddpm_folder(tmp_path):
    for step in (0, 40, 120):
        (tmp_path / f"model{step:06d}.pt").write_bytes(b"")
    assert ss.unet_sets("trained", str(tmp_path)) == {"model_path": os.path.relpath(tmp_path / "model000120.pt", REPO)}
    assert ss.unet_sets("untrained", None) == {"random_weights": True, "model_path": ""}
    (tmp_path / "model000040.pt").unlink(), (tmp_path / "model000120.pt").unlink()
    with pytest.raises(SystemExit, match="holds only its initialisation model000000.pt"):
        ss.unet_sets("trained", str(tmp_path))


def test_trained_unet_needs_a_ddpm_folder():
    r = subprocess.run([sys.executable, "scripts/selection_study.py", "--unets", "trained"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs --ddpm" in r.stderr.strip().splitlines()[-1]


def test_the_table_says_how_the_full_training_check_ended():
    """The chosen-protocol cell after step 5: a search result the check turned down names both gains; one it
    passed names its gain trained in full (values in points, from selection.json's fractions)."""
    own = {"steps": [50, 150], "blocks": [4, 5], "miou": 0.40, "miou_std": 0.02}
    end = {"steps": [50], "blocks": [4], "miou": 0.42, "miou_std": 0.03}

    def row(unet, chosen, fallback, gain, passed):
        report = {"selected": chosen, "config_protocol": own, "greedy_path": [end], "fallback": fallback,
                  "search_gain_over_config": {"mean": 0.0226, "standard_error": 0.01}, "complete": True,
                  "full_training_check": {"members": 10, "gain": gain, "passed": passed}}
        return {"unet": unet, "report": report, "hand": {0: 0.4, 1: 0.41}, "selected": {0: 0.4, 1: 0.41},
                "difference": [0.0, 0.0]}

    text = ss.table([row("reference", own, True, {"mean": -0.0575, "standard_error": 0.0111}, False),
                     row("trained", end, False, {"mean": 0.0149, "standard_error": 0.0083}, True)], "CMD")
    assert ("[50, 150] × [4, 5] (the config's own: the search's [50] × [4] beat it by +2.26 ± 1.00 in the probe's "
            "CV, and by -5.75 ± 1.11 trained in full, 10 members: not enough)") in text
    assert "[50] × [4] (checked trained in full, 10 members: +1.49 ± 0.83 over the config's own)" in text
