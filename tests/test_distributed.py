"""torchrun with 2 gloo processes on CPU computes what one process computes.

Generation: the union of both ranks' batches is every batch once, identical to a single
process (features and labelling included). DDPM and DeepLab training: the global batch split over
two processes gives the single-process gradient, so the weights agree to float rounding. segment
and suggest: the ranks' shares of the images give the single process's files.

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
- DeepLab training: the same argument in float64 (--precision fp64, checkpoints kept in float64),
  with BatchNorm over the global batch (GlobalBatchNorm2d: torch's SyncBatchNorm refuses CPU
  tensors) and the ASPP dropout off (--aspp_dropout 0: masks are per process). The halves' sums
  (gradients, BatchNorm statistics, the loss over labelled pixels) round differently from the
  whole batch's, |dg| <~ 1e-14; Adam (lr 1e-3, eps 1e-8) moves a weight by at most lr/eps = 1e5
  per unit of gradient, so 4 updates differ by <= 4e-9: DEEPLAB_FLOAT64_ATOL = 1e-8.
- segment and suggest: each image is segmented alone, by the same ops whichever rank has it, so the
  outputs are byte-identical (with share_noise true, the configs' setting: with fresh noise per
  image, an image's noise would depend on the images its process segmented before it).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import deeplab as train_deeplab
from ddpmseg.commands import generate as generate_dataset
from ddpmseg.commands import train_ddpm
from conftest import REPO, checkout_env, shapes64

FLOAT32_ULP_ATOL = 2.4e-7  # see the module docstring
DEEPLAB_FLOAT64_ATOL = 1e-8  # see the module docstring

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(command: str, *args: str) -> str:
    """``torchrun --standalone --nproc_per_node=2 -m ddpmseg <command> <args>``; returns its stdout."""
    env = checkout_env(OMP_NUM_THREADS=str(torch.get_num_threads()))  # the test process's arithmetic
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpmseg",
           command, *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


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


# -- the tools that take a run folder, and DeepLab -------------------------------------------------
# Every tool that runs under torchrun, each launched below with its real command line.
TORCHRUN_TOOLS = ("train-ddpm", "sample", "generate", "deeplab", "segment", "suggest")


def test_every_option_of_a_torchrun_tool_gets_past_torchruns_parser():
    """torchrun's parser takes abbreviations of its own options anywhere on its command line and
    refuses an ambiguous one (--run: --run-path or --run_path?), so every option needs a name it
    passes through untouched; --run's is --run_dir."""
    from torch.distributed.run import parse_args

    from test_cli import module

    refused = set()
    for name in TORCHRUN_TOOLS:
        for action in module(name).build_parser()._actions:
            passes = []
            for option in (o for o in action.option_strings if o not in ("-h", "--help")):
                try:
                    got = parse_args(["--standalone", "--nproc_per_node=2", "-m", "ddpmseg", name, option, "x"])
                    passes.append(got.training_script_args == [name, option, "x"])
                except SystemExit:
                    refused.add(option)
                    passes.append(False)
            assert not passes or any(passes), (name, action.option_strings)
    assert refused == {"--run"}


def test_segment_on_two_processes_equals_one_and_skips_finished_images(tmp_path, tiny_interpreter_run):
    from ddpmseg.commands import segment

    face = Image.open(sorted((shapes64() / "real" / "test").glob("*.png"))[0]).convert("RGB")
    folder = tmp_path / "in"
    folder.mkdir()
    for name, size in {"a.png": (64, 64), "tall.jpg": (48, 100), "wide.png": (130, 64), "big.webp": (96, 96)}.items():
        face.resize(size).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")  # one rank meets it
    one, two = tmp_path / "one", tmp_path / "two"
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(folder), "--out", str(one)]) == 0
    # "a" finished before: the torchrun job must skip it and share the other three (uneven shards).
    assert segment.main(["--run", str(tiny_interpreter_run), "--images", str(folder / "a.png"), "--out",
                         str(two)]) == 0
    finished = (two / "a.png").stat().st_mtime_ns
    out = torchrun("segment", "--run_dir", str(tiny_interpreter_run), "--images", str(folder), "--out", str(two))
    assert "segmented 3, already done 1, unreadable 1" in out
    assert (two / "a.png").stat().st_mtime_ns == finished
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for path in one.iterdir():  # segments.csv and every PNG, byte for byte
        if path.name != "report.html":
            assert path.read_bytes() == (two / path.name).read_bytes(), path.name
    # The gallery names its folder, else the same.
    assert (one / "report.html").read_text().replace(str(one), "") == (two / "report.html").read_text().replace(
        str(two), "")


def test_suggest_on_two_processes_equals_one(tmp_path, tiny_interpreter_run):
    from ddpmseg.commands import suggest

    pool = tmp_path / "pool"
    pool.mkdir()
    for path in sorted((shapes64() / "real" / "train").glob("*.png"))[:5]:  # 3 + 2 per rank
        shutil.copy(path, pool / path.name)
    args = ["--pool", str(pool), "--k", "3", "--strategy", "diverse"]  # uses every score and descriptor
    assert suggest.main(["--run", str(tiny_interpreter_run), *args, "--out", str(tmp_path / "one")]) == 0
    torchrun("suggest", "--run_dir", str(tiny_interpreter_run), *args, "--out", str(tmp_path / "two"))
    assert sorted(os.listdir(tmp_path / "two")) == ["suggestions.csv", "suggestions.png"]
    for name in ("suggestions.csv", "suggestions.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_deeplab_on_two_processes_equals_one_and_resumes(tmp_path):
    from test_deeplab import FAST, FOLDER, real_arrays

    images, masks = real_arrays(10)
    # Ignored pixels in differing numbers per sample: the halves of a batch count different numbers of
    # labelled pixels, so the loss must be normalised by the global batch's count, not each rank's.
    masks = masks.copy()
    for i in range(len(masks)):
        masks[i, :3 * i] = 255
    npz = tmp_path / "samples_64x64x3.npz"
    np.savez(npz, images, masks, np.random.default_rng(0).random(len(images)))
    real = shapes64() / "real"

    def args(exp, epochs):  # 8 kept samples: 2 global batches of 4 per epoch, 2 per rank
        return ["--exp", str(REPO / "experiments/celebamask64/ddpm.json"), "--data_path", str(npz),
                "--set", f"exp_dir={exp}", "--set", f"training_path={real / 'train'}",
                "--set", f"testing_path={real / 'test'}", "--set", "ignore_label=255", *FAST,
                "--precision", "fp64", "--aspp_dropout", "0", "--num_epoch", str(epochs)]

    assert train_deeplab.main(args(tmp_path / "one", 2)) == 0
    torchrun("deeplab", *args(tmp_path / "two", 1))
    torchrun("deeplab", *args(tmp_path / "two", 2))  # resumes after epoch 0
    one, two = (tmp_path / name / "50_150_250_4_5_6_7_8" / FOLDER for name in ("one", "two"))
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))  # rank 0 wrote them, once
    for epoch in (0, 1):
        a = torch.load(one / f"deeplab_epoch_{epoch}.pth", weights_only=True)
        b = torch.load(two / f"deeplab_epoch_{epoch}.pth", weights_only=True)
        wa, wb = a["model_state_dict"], b["model_state_dict"]
        assert wa.keys() == wb.keys() and all(v.dtype in (torch.float64, torch.int64) for v in wa.values())
        worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
        assert worst <= DEEPLAB_FLOAT64_ATOL, (epoch, worst)  # weights and BatchNorm running statistics
        assert abs(a["mean_loss"] - b["mean_loss"]) <= DEEPLAB_FLOAT64_ATOL
        assert b["optimizer_state_dict"]["state"][0]["step"] == 2 * (epoch + 1)
    first = torch.load(one / "deeplab_epoch_0.pth", weights_only=True)["model_state_dict"]
    last = torch.load(two / "deeplab_epoch_1.pth", weights_only=True)["model_state_dict"]
    assert max((last[k].double() - first[k].double()).abs().max().item() for k in first) > 1e-4  # it trained
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert mb["trained_epochs"] == [1] and "resuming after epoch 0" in (two / "log.txt").read_text()
    assert mb["best_epoch"] == ma["best_epoch"] == 1  # validation mIoU 3.07 then 5.65: far from a tie
