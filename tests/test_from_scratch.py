"""scripts/from_scratch.py: which checkpoints make the rows, and the table and reading from metrics files."""
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbours, as when run
import from_scratch  # noqa: E402


def test_rows_are_the_latest_and_first_checkpoint_by_update_number(tmp_path):
    for step in (0, 200, 1000, 800):  # 1000 sorts before 200 as text, not as a number
        (tmp_path / f"model{step:06d}.pt").write_bytes(b"")
    found = from_scratch.checkpoints(str(tmp_path))
    assert found["trained"].endswith("model001000.pt") and found["untrained"].endswith("model000000.pt")
    with pytest.raises(SystemExit, match="no model<step>.pt"):
        from_scratch.checkpoints(str(tmp_path / "empty"))


def test_table_and_reading_come_from_the_metrics_files(tmp_path):
    mious = {"trained": [0.30, 0.32], "untrained": [0.10, 0.12], "reference": [0.29, 0.33]}
    for row, values in mious.items():
        for seed, miou in enumerate(values):
            run = tmp_path / row / f"seed{seed}" / "50_150_250_4_5_6_7_8"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"miou": miou}))
    ckpts = {"trained": "t.pt", "untrained": "u.pt", "reference": "r.pt"}
    text = from_scratch.table(ckpts, str(tmp_path), [0, 1, 2])  # seed 2 has no runs: 2 seeds per row
    assert "| 31.00 ± 1.41 | 2 | `t.pt` |" in text and "| 11.00 ± 1.41 | 2 | `u.pt` |" in text
    # 11 / 31 = 35 %; trained - reference per seed: +1, -1 -> mean 0, sample std sqrt(2)
    assert ("Reading: the untrained U-Net reaches 35 % of the trained one's mean mIoU; trained here minus "
            "reference, per seed: +0.00 ± 1.41 points over 2 seeds.") in text
    assert from_scratch.reading(str(tmp_path / "none"), [0]) == "Reading: not enough runs yet."
