"""Every benchmark's ``--quick`` mode runs the real code on tiny shapes and prints JSON lines,
so a bench that breaks (a renamed function, a new required config key) fails CI.

The values are timings on whatever machine runs the test, so only their presence and sanity
are checked here; the benches themselves compare against baselines in the same run.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

BENCHES = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name != "workloads.py")


def run_quick(name: str, *extra: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / name), "--quick", *extra], capture_output=True,
                       text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines and all("bench" in x for x in lines), r.stdout[-3000:]
    return lines


def test_every_bench_is_covered():
    assert {"ensemble_throughput.py", "memory.py", "extraction.py", "gpu_suite.py"} <= set(BENCHES)


@pytest.mark.parametrize("name", [b for b in BENCHES if b != "gpu_suite.py"])
def test_quick_mode_runs(name):
    for line in run_quick(name):
        for key, value in line.items():
            if key.endswith(("_per_s", "_gib", "speedup")):
                assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_lsun_flags_build_the_released_checkpoint_layout():
    sys.path.insert(0, str(REPO / "bench"))
    from workloads import LSUN_FLAGS
    from conftest import manifest
    from guided_diffusion.script_util import model_and_diffusion_defaults

    m = manifest("lsun_256")
    flags = {**model_and_diffusion_defaults(), **LSUN_FLAGS}
    assert {k: flags[k] for k in m["flags"]} == m["flags"]
