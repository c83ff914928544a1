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

from conftest import CELEBAMASK64, FACES_CKPT, REPO, require

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
    assert {"ensemble_throughput.py", "memory.py", "extraction.py", "gpu_suite.py", "segment.py",
            "faults.py", "scaling.py", "end_to_end.py"} <= set(BENCHES)


def check_segment(line: dict) -> None:
    """bench/segment.py: both inference paths ran on the quick run, and the ratio is theirs."""
    assert line["images"] == 3 and line["members"] == 2
    ratio = line["segment_images_per_s"] / line["evaluation_images_per_s"]
    assert abs(line["segment_over_evaluation"] - ratio) <= 0.02 * ratio + 0.01  # both rounded to 2 decimals


def check_end_to_end(line: dict) -> None:
    """bench/end_to_end.py: both pipelines trained on the same pixels, and the speed-up is their times' ratio."""
    # One epoch over the 2 quick training images: every 64 x 64 pixel is trained on (celebamask64 has no
    # ignore label and min_region_pixels is 0), 2 * 4096 / 64 = 128 batches for each member of both.
    assert line["ours_iterations_per_member"] == line["original_iterations_per_member"] == [128, 128]
    assert 0 <= line["ours_miou"] <= 100 and 0 <= line["original_miou"] <= 100
    # speedup is the unrounded times' ratio rounded to 0.01; the line's times are rounded to 0.01 s, so the
    # unrounded ones lie within 0.005 s of them and their ratio within these bounds.
    o, u = line["original_s"], line["ours_s"]
    assert (o - 0.005) / (u + 0.005) - 0.005 <= line["speedup"] <= (o + 0.005) / (u - 0.005) + 0.005


EXTRA_CHECKS = {"segment.py": check_segment, "end_to_end.py": check_end_to_end}
# bench/segment.py and bench/end_to_end.py time runs on celebamask64 with the faces checkpoint, --quick too.
NEEDS = {name: [CELEBAMASK64, FACES_CKPT] for name in ("segment.py", "end_to_end.py")}


# gpu_suite.py: tested below; faults.py: tests/test_faults.py runs its --quick (and checks that its
# comparison notices wrong resumes), and scripts/faults_table.py writes its README table.
@pytest.mark.parametrize("name", [b for b in BENCHES if b not in ("gpu_suite.py", "faults.py")])
def test_quick_mode_runs_and_feeds_the_readme_table(name):
    for path in NEEDS.get(name, []):
        require(path)
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_table

    for line in run_quick(name):
        for key, value in line.items():
            if key.endswith(("_per_s", "_gib", "speedup")):
                assert isinstance(value, (int, float)) and value > 0, (key, value)
        # scripts/bench_table.py understands the line and names the command that produced it.
        assert f"`python bench/{name} --quick`" in bench_table.row(line)
        EXTRA_CHECKS.get(name, lambda _: None)(line)


def test_lsun_flags_build_the_released_checkpoint_layout():
    sys.path.insert(0, str(REPO / "bench"))
    from workloads import LSUN_FLAGS
    from conftest import manifest
    from guided_diffusion.script_util import merged_flags

    m = manifest("lsun_256")
    flags = merged_flags(LSUN_FLAGS)
    assert {k: flags[k] for k in m["flags"]} == m["flags"]


def test_gpu_suite_quick_runs_every_section_on_the_cpu():
    lines = run_quick("gpu_suite.py", "--device", "cpu")
    checks = {(x["section"], x.get("check") or x.get("variant")) for x in lines}
    for want in [("parity", "unet_fp32"), ("parity", "unet_bf16_autocast"), ("parity", "unet_use_fp16_torso"),
                 ("parity", "hooked_activations_fp32"), ("parity", "ensemble_step"),
                 ("parity", "trained_ensemble_predictions"), ("ensemble", "batched"), ("ensemble", "per_member"),
                 ("ensemble", "original_loop"), ("ensemble", "step_chosen"), ("ddpm", "train_fp32"),
                 ("ddpm", "sample_ddim10_fp32")]:
        assert want in checks, want
    assert any(x["section"] == "extraction" and x["ours_images_per_s"] > 0 for x in lines)
    assert not [x for x in lines if x.get("passed") is False or "error" in x]
    assert lines[-1]["section"] == "summary" and lines[-1]["passed"]


def test_auto_step_verdict_holds_at_its_bounds_and_fails_just_below():
    """The throughput row's verdict on the trainer's auto step: at least 0.95x the fastest candidate of
    the run and at least 1.0x the original loop, both bounds inclusive."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_table

    at_bounds = {"auto_over_fastest_candidate": 0.95, "speedup": 1.0}
    assert bench_table.auto_met(at_bounds)
    assert not bench_table.auto_met({**at_bounds, "auto_over_fastest_candidate": 0.94})
    assert not bench_table.auto_met({**at_bounds, "speedup": 0.99})
