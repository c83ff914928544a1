"""bench/faults.py: its comparison notices what a resume can get wrong, and the quick version (2 kills of
train_interpreter.py on a tiny config) survives."""
import json
import shutil
import subprocess
import sys

import torch

from conftest import CELEBAMASK64, REPO, require

sys.path.insert(0, str(REPO / "bench"))
from faults import compare  # noqa: E402


def make_run(folder):
    (folder / "predictions").mkdir(parents=True)
    torch.save({"model_state_dict": {"w": torch.arange(4.0)}, "stats": {"iterations": 7}}, folder / "model_0.pth")
    (folder / "metrics.json").write_text(json.dumps({"miou": 0.5, "timings_s": {"total_s": 3.0}}))
    (folder / "log.txt").write_text("first run\n")


def test_compare_ignores_history_but_not_results(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    make_run(ref)
    make_run(run)
    (run / "metrics.json").write_text(json.dumps({"miou": 0.5, "timings_s": {"total_s": 9.0}}))
    (run / "log.txt").write_text("killed\nresumed\n")
    assert not any(compare(str(run), str(ref)).values())

    torch.save({"model_state_dict": {"w": torch.arange(4.0) + 1e-7}, "stats": {"iterations": 7}}, run / "model_0.pth")
    (run / "predictions" / ".x.npy.ab12cd34.tmp").write_bytes(b"half")
    (run / "metrics.json").write_text(json.dumps({"miou": 0.51, "timings_s": {}}))
    diff = compare(str(run), str(ref))
    assert diff["differing"] == ["metrics.json", "model_0.pth"]
    assert diff["leftover"] == ["predictions/.x.npy.ab12cd34.tmp"]
    shutil.rmtree(run / "predictions")
    assert compare(str(run), str(ref))["missing"] == []  # an empty folder holds no file to miss


def test_quick_two_kills_of_train_interpreter_are_survived(tmp_path):
    require(CELEBAMASK64)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "faults.py"), "--quick", "--work", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    (tool,) = result["tools"]
    assert tool["tool"] == "train_interpreter" and tool["kills"] == 2, result
    assert tool["kills_survived"] == 2 and r.returncode == 0, json.dumps(tool["details"], indent=1)
