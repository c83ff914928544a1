"""scripts/ddpm/train_interpreter.sh: its MODEL_FLAGS build the released checkpoints' layout."""
import re
import subprocess

import torch

from conftest import REPO, manifest
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults, str2bool

SCRIPT = REPO / "scripts" / "ddpm" / "train_interpreter.sh"


def script_model_flags() -> dict:
    text = re.search(r'MODEL_FLAGS="(--[^"]+)"', SCRIPT.read_text(), re.S).group(1).split()
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


def test_unknown_dataset_prints_usage():
    r = subprocess.run(["bash", str(SCRIPT), "nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr and "bedroom_28" in r.stderr
