"""bench/segment.py --quick: both inference paths run on one trained run and the JSON adds up."""
import json
import os
import subprocess
import sys

from conftest import CELEBAMASK64, FACES_CKPT, REPO, require


def test_bench_segment_quick_prints_one_json_line():
    require(CELEBAMASK64)
    require(FACES_CKPT)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "segment.py"), "--quick"], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["bench"] == "segment" and result["images"] == 3 and result["members"] == 2
    for key in ("evaluation_images_per_s", "segment_images_per_s", "segment_2to1_images_per_s"):
        assert result[key] > 0
    ratio = result["evaluation_images_per_s"] and result["segment_images_per_s"] / result["evaluation_images_per_s"]
    assert abs(result["segment_over_evaluation"] - ratio) <= 0.02 * ratio + 0.01  # both rounded to 2 decimals
