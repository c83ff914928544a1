"""scripts/ddpm: the model flags build the released checkpoints' layout; train_etf.sh runs on CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import CELEBAMASK64, FACES_CKPT, REPO, checkout_env, manifest, recomputed_iou, require, shapes64
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults, str2bool

SCRIPTS = REPO / "scripts" / "ddpm"
SCRIPT = SCRIPTS / "train_interpreter.sh"


def script_model_flags(dataset: str = "bedroom_28") -> dict:
    r = subprocess.run(["bash", "-c", f'source "{SCRIPTS / "model_flags.sh"}" && model_flags {dataset}'],
                       capture_output=True, text=True, check=True)
    text = r.stdout.split()
    defaults = model_and_diffusion_defaults()
    flags = {}
    for key, value in zip(text[::2], text[1::2]):
        key = key.removeprefix("--")
        kind = str2bool if isinstance(defaults[key], bool) else type(defaults[key])
        flags[key] = kind(value)
    return flags


def test_model_flags_match_the_lsun_ffhq_checkpoints():
    flags = script_model_flags()
    m = manifest("lsun_256")
    # use_fp16 is how the script runs the model, not part of the (float32) checkpoint.
    assert {k: v for k, v in flags.items() if k != "use_fp16"} == {k: m["flags"][k] for k in flags if k != "use_fp16"}
    with torch.device("meta"):
        model, _ = create_model_and_diffusion(**flags)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == m["keys"]


def test_celebamask64_takes_its_flags_from_its_config():
    assert script_model_flags("celebamask64") == {}


@pytest.mark.parametrize("script", ["train_interpreter.sh", "train_etf.sh"])
def test_unknown_dataset_prints_usage(script):
    r = subprocess.run(["bash", str(SCRIPTS / script), "nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr and "bedroom_28" in r.stderr


@pytest.mark.parametrize("args", [["celebamask64"], ["celebamask64", "out"], ["celebamask64", "out", "gpu0"]])
def test_train_etf_needs_a_result_dir_and_a_gpu_number(args):
    r = subprocess.run(["bash", str(SCRIPTS / "train_etf.sh"), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "<result dir> <GPU num>" in r.stderr


def test_train_etf_runs_celebamask64_on_cpu(tmp_path):
    """The ETF experiment's command, shortened with extra options: ETF + soft voting, outputs in the result dir."""
    require(CELEBAMASK64), require(FACES_CKPT)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    quick = ["--set", "model_num=2", "--set", "max_epochs=1", "--set", "training_number=2",
             "--set", "testing_number=1"]
    r = subprocess.run(["bash", str(SCRIPTS / "train_etf.sh"), "celebamask64", "result", "0", *quick],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "result" / "50_150_250_4_5_6_7_8"
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["regularizer"], cfg["voting"], cfg["device"]) == ("etf", "soft", "auto")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["voting"] == "soft" and metrics["device"] == "cpu"
    assert metrics["by_voting"]["soft"]["miou"] == metrics["miou"]
    assert (out / "etf_matrix.pt").exists() and (out / "model_1.pth").exists()


def test_train_ddpm_sh_trains_with_the_given_flags(tmp_path):
    """The released architecture is the default; a --model_flags file replaces it."""
    data = shapes64() / "unlabeled"
    env = checkout_env(PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    flags = tmp_path / "tiny.json"
    flags.write_text(json.dumps({"image_size": 32, "channel_mult": "1,2", "num_channels": 32, "num_res_blocks": 1,
                                 "attention_resolutions": "8"}))
    r = subprocess.run(["bash", str(SCRIPTS / "train_ddpm.sh"), str(data), str(tmp_path / "run"), "1",
                        "--model_flags", str(flags), "--batch_size", "2", "--max_steps", "1", "--grid_size", "1",
                        "--sample_respacing", "ddim2"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads((tmp_path / "run" / "ema_0.9999_000001.json").read_text())
    assert side["flags"]["image_size"] == 32 and side["lr"] == 1e-4  # image_train.py's lr from the script


def test_datasetddpm_scripts_print_usage():
    r = subprocess.run(["bash", str(REPO / "scripts/datasetDDPM/generate_dataset.sh"), "nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(["bash", str(SCRIPTS / "train_ddpm.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "<image folder> <log dir>" in r.stderr


@pytest.mark.parametrize("kind", ["mae", "swav", "swav_w2"])
def test_baseline_scripts_print_usage(kind):
    r = subprocess.run(["bash", str(REPO / "scripts" / kind / "train_interpreter.sh"), "nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"scripts/{kind}/train_interpreter.sh <dataset>" in r.stderr
    assert "celebamask64" in r.stderr


def test_swav_runs_end_to_end_with_random_weights(tmp_path):
    """SwAV end to end: the original CLI (scripts/swav/train_interpreter.sh) on shapes64 images, an
    untrained ResNet-50, the same store and ensemble as the DDPM path."""
    data = shapes64() / "real"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    quick = ["--exp_dir", str(tmp_path / "swav"), "--set", f"training_path={data / 'train'}",
             "--set", f"testing_path={data / 'test'}", "--set", "model_num=2", "--set", "max_epochs=1",
             "--set", "training_number=3", "--set", "testing_number=2"]
    r = subprocess.run(["bash", str(REPO / "scripts/swav/train_interpreter.sh"), "celebamask64", *quick],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "swav"  # no steps, so no <steps>_<blocks> subfolder (as published)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["random_weights"], cfg["model_flags"]) == ("swav", True, {})
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 < metrics["miou"] <= 1.0
    assert metrics["miou"] == pytest.approx(recomputed_iou(out)["miou"], abs=1e-12)
    log = (out / "log.txt").read_text()
    assert "swav: random weights (seed 0)" in log and "9 activation maps, 6720 features per pixel" in log
    assert len(list((out / "predictions").glob("*.npy"))) == 2
