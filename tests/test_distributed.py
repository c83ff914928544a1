"""torchrun with 2 gloo processes on CPU computes what one process computes.

Generation: the union of both ranks' batches is every batch once, identical to a single
process (features and labelling included). DDPM training: the global batch split over two
processes gives the single-process gradient, so the weights agree to float rounding.

Why the comparisons hold on any machine and thread count:
- generation: each batch is drawn and labelled by the same ops on the same shapes, seeded by
  its index alone, and every process (the test's and torchrun's) runs the same thread count
  (conftest; OMP_NUM_THREADS below) on the same CPU kernels: the same arithmetic, so bit-identical;
- DDPM training: the all-reduce sums the halves' gradients in another order than the single
  batch does, so the gradients differ by rounding. The runs are made in float64 (--precision
  fp64): |dg| <~ 1e-15, and AdamW (lr 1e-4, eps 1e-8) moves a weight by at most lr/eps per unit
  of gradient, so 3 updates differ by <= 3e-11 before the checkpoints' float32 rounding, which
  adds at most one float32 ulp (<= 2.4e-7 for weights below 2): FLOAT32_ULP_ATOL. In float32 the
  same bound would be ~1e-4, as large as the updates themselves.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpmseg.commands import generate as generate_dataset
from ddpmseg.commands import train_ddpm
from conftest import REPO, checkout_env, shapes64

FLOAT32_ULP_ATOL = 2.4e-7  # see the module docstring

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(command: str, *args: str) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m ddpmseg <command> <args>``."""
    env = checkout_env(OMP_NUM_THREADS=str(torch.get_num_threads()))  # the test process's arithmetic
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpmseg",
           command, *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_generation_on_two_processes_equals_one(tmp_path, tiny_interpreter_run):
    # --run_dir, the name of --run that torchrun leaves alone (it takes --run for its --run_path).
    args = ["--run_dir", str(tiny_interpreter_run), "--num_samples", "3", "--batch_size", "1",
            "--use_ddim", "True", "--timestep_respacing", "ddim2"]
    assert generate_dataset.main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun("generate", *args, "--out", str(tmp_path / "two"))
    assert sorted(os.listdir(tmp_path / "two" / "shards")) == [
        "batch_000000.npz", "batch_000001.npz", "batch_000002.npz", "generation.json"]  # no gaps
    with np.load(tmp_path / "one" / "samples_64x64x3.npz") as a, np.load(tmp_path / "two" / "samples_64x64x3.npz") as b:
        assert a.files == b.files
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
        images = b["arr_0"].reshape(3, -1)
    assert len({row.tobytes() for row in images}) == 3  # no duplicates


def test_ddpm_training_on_two_processes_equals_one(tmp_path):
    data = str(shapes64() / "unlabeled")
    # dropout 0: dropout masks are per process, the one thing a split batch cannot reproduce.
    args = ["--data_dir", data, "--image_size", "32", "--channel_mult", "1,2", "--num_channels", "32",
            "--num_res_blocks", "1", "--attention_resolutions", "8", "--learn_sigma", "True", "--dropout", "0.0",
            "--batch_size", "4", "--max_steps", "3", "--grid_size", "2", "--sample_respacing", "ddim2",
            "--precision", "fp64"]
    assert train_ddpm.main([*args, "--log_dir", str(tmp_path / "one")]) == 0
    torchrun("train-ddpm", *args, "--log_dir", str(tmp_path / "two"))
    for name in ("model000003.pt", "ema_0.9999_000003.pt"):
        a = torch.load(tmp_path / "one" / name, weights_only=True)
        b = torch.load(tmp_path / "two" / name, weights_only=True)
        assert all(a[k].dtype == torch.float32 for k in a)  # the official checkpoint format
        assert max(a[k].abs().max().item() for k in a) < 2  # the ulp bound's premise
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= FLOAT32_ULP_ATOL, (name, worst)
    init = torch.load(tmp_path / "one" / "model000000.pt", weights_only=True)
    trained = torch.load(tmp_path / "two" / "model000003.pt", weights_only=True)
    assert max((trained[k] - init[k]).abs().max().item() for k in init) > 1e-4  # it did train


def test_the_interpreter_refuses_torchrun(monkeypatch, tmp_path, capsys, tiny64_checkpoint):
    from ddpmseg.commands import train as train_interpreter

    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(tmp_path / "exp"),
            "--model_path", str(tiny64_checkpoint)]
    assert train_interpreter.main(argv) == 2
    assert "launch it with python, not torchrun" in capsys.readouterr().err and not (tmp_path / "exp").exists()
