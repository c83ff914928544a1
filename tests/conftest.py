"""Shared test plumbing: the reference fixtures and their weight rule, the labelled shapes data the
end-to-end tests make, and where ../shared lives.

The reference fixtures (numbers the original code produced) are committed under tests/fixtures, so
the parity tests run on a fresh clone. End-to-end tests that need labelled images but not faces run
on the procedural shapes dataset (``shapes64``). Only what is about celebamask64 itself or the faces
checkpoint needs ../shared: such tests skip with a reason when it is absent (the summary line counts
them), except when DDPMSEG_REQUIRE_SHARED=1 (set by .ci/run): then a missing ../shared is a failure,
so CI can never pass by skipping.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
import torch

# One thread unless OMP_NUM_THREADS says otherwise: on a loaded 2-core machine, two OpenMP
# threads per test process oversubscribe the cores and spin, making torch-heavy tests 20-40x
# slower; one thread is steady. OMP_NUM_THREADS=2 runs the suite with two, to check that no
# tolerance holds for one thread count only.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("DDPMSEG_SHARED", REPO.parent / "shared"))
CELEBAMASK64 = SHARED / "data" / "celebamask64"
FACES_CKPT = SHARED / "checkpoints" / "faces64_ema.pt"


# The start of every skip reason ``require`` gives; the summary hook counts the skips by it.
SHARED_MISSING = "../shared missing: "


def require(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip (locally) or fail (in CI)."""
    if path.exists():
        return path
    where = os.path.relpath(path, SHARED) if path.is_relative_to(SHARED) else str(path)
    msg = f"{SHARED_MISSING}{where} (the ../shared folder beside the checkout provides it; looked in {path})"
    if os.environ.get("DDPMSEG_REQUIRE_SHARED") == "1":
        pytest.fail(msg + "; DDPMSEG_REQUIRE_SHARED=1 forbids skipping")
    pytest.skip(msg)


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests skipped for lack of ../shared, and what each group lacked."""
    missing: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if SHARED_MISSING in reason:
            what = reason.split(SHARED_MISSING, 1)[1].split(" (", 1)[0]
            missing[what] = missing.get(what, 0) + 1
    if missing:
        groups = ", ".join(f"{what}: {n}" for what, n in sorted(missing.items()))
        terminalreporter.write_line(f"{sum(missing.values())} tests skipped: ../shared missing ({groups})")


# The shapes stand-in has celebamask64's split sizes, so a test slicing the first N images of a
# split gets as many as it would there.
SHAPES64_SIZES = {"train": 20, "test": 50, "unlabeled": 150}


@functools.cache
def shapes64() -> Path:
    """A labelled 64 px dataset in celebamask64's layout (real/train and real/test with .png + .npy,
    unlabeled/, classes.json), written once per session by the procedural generator
    (ddpmseg.data.procedural): for the tests that need labelled 64 px images but not faces. Its six
    class ids are valid labels of the 19-class celebamask64 configs the tests run."""
    from ddpmseg.data.procedural import write_dataset

    root = Path(tempfile.mkdtemp(prefix="ddpmseg-tests-"))
    atexit.register(shutil.rmtree, root, True)
    write_dataset(str(root / "shapes64"), **SHAPES64_SIZES)
    return root / "shapes64"


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess run from the checkout: the package's src/ and the repository
    root on PYTHONPATH, so ``python -m ddpmseg`` and the scripts import this tree with or without
    ``pip install -e .``."""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


def ddpmseg_command(*args: str) -> list[str]:
    """The argv of ``python -m ddpmseg <args>``, to run with ``cwd=REPO, env=checkout_env()``."""
    return [sys.executable, "-m", "ddpmseg", *args]


def run_repo_script(script: str, *args: str) -> str:
    """Run ``python <script> <args>`` from the repository root as a user would; its stdout (it must succeed)."""
    r = subprocess.run([sys.executable, script, *args], cwd=REPO, env=checkout_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def rule_weights(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Regenerate a tiny model's weights from its key/shape list (fixtures/README.md)."""
    sd = {}
    for k, shape in keys.items():
        g = torch.Generator().manual_seed(zlib.crc32(k.encode()))
        v = torch.randn(shape, generator=g)
        sd[k] = 1 + 0.1 * v if (len(shape) == 1 and k.endswith("weight")) else 0.05 * v
    return sd


def manifest(name: str) -> dict:
    """One entry of fixtures/guided_unet_manifests.json ("flags", "keys", ...)."""
    with open(FIXTURES / "guided_unet_manifests.json") as f:
        return json.load(f)[name]


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def parity_pixels(size: int) -> torch.Tensor:
    """The rows (or columns) of a map of side ``size`` kept in the shrunk fixtures (fixtures/README.md):
    12 spread evenly from the first to the last, or all of them when there are fewer."""
    return torch.linspace(0, size - 1, min(size, 12)).round().long()


def on_parity_grid(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` (..., H, W) at the parity grid's pixels: (..., 12, 12) for maps of 12 px or more."""
    return maps.index_select(-2, parity_pixels(maps.shape[-2])).index_select(-1, parity_pixels(maps.shape[-1]))


@pytest.fixture
def tiny_model_and_diffusion():
    """Factory: build one manifest's model (rule weights, eval mode) and its diffusion."""
    from guided_diffusion.script_util import create_model_and_diffusion

    def build(name: str, **flag_overrides):
        m = manifest(name)
        flags = dict(m["flags"], **flag_overrides)
        model, diffusion = create_model_and_diffusion(**flags)
        model.load_state_dict(rule_weights(m["keys"]), strict=True)
        return model.eval(), diffusion

    return build


@pytest.fixture(scope="session")
def tiny64_checkpoint(tmp_path_factory):
    """A guided-diffusion checkpoint of 64 px flags (random weights) with its flags beside it."""
    m = manifest("tiny64")
    d = tmp_path_factory.mktemp("ckpt")
    torch.save(rule_weights(m["keys"]), d / "tiny64.pt")
    (d / "tiny64.json").write_text(json.dumps({"flags": m["flags"]}))
    return d / "tiny64.pt"


# A small but complete interpreter run: 3 train / 2 test images, 2 members, short epochs.
FAST_INTERPRETER = ["--set", "model_num=2", "--set", "max_epochs=2", "--set", "early_stop_after_epoch=0",
                    "--set", "early_stop_patience=3", "--set", "steps=[50]", "--set", "dim=[64,64,384]",
                    "--set", "training_number=3", "--set", "testing_number=2"]


@pytest.fixture(scope="session")
def tiny_interpreter_run(tmp_path_factory, tiny64_checkpoint):
    """The folder of a finished train_interpreter.py run on the shapes data with the tiny U-Net."""
    from ddpmseg.commands import train as train_interpreter

    data = shapes64() / "real"
    exp = tmp_path_factory.mktemp("interpreter") / "exp"
    argv = ["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(exp), "--training_path",
            str(data / "train"), "--testing_path", str(data / "test"), "--model_path", str(tiny64_checkpoint),
            *FAST_INTERPRETER]
    assert train_interpreter.main(argv) == 0
    return exp / "50_4_5_6_7_8"


def recomputed_iou(run_dir: Path) -> dict:
    """A finished run's IoU by the definition, from its predictions/*.npy and the test labels its
    config.json names (intersections and unions summed over images; absent classes count 0):
    float64 with the same divisions as ddpmseg.common.metrics, so equal to its numbers to 1e-12."""
    import numpy as np

    cfg = json.loads((run_dir / "config.json").read_text())
    names = sorted(p for p in os.listdir(cfg["testing_path"]) if p.endswith(".npy"))[:cfg["testing_number"]]
    assert sorted(os.listdir(run_dir / "predictions")) == names
    K = cfg["number_class"]
    inter, union = np.zeros(K), np.zeros(K)
    for name in names:
        pred, gt = np.load(run_dir / "predictions" / name), np.load(os.path.join(cfg["testing_path"], name))
        assert pred.shape == gt.shape
        for c in range(K):
            inter[c] += np.sum((pred == c) & (gt == c))
            union[c] += np.sum((pred == c) | (gt == c))
    iou = inter / (1e-8 + union)
    scored = [c for c in range(K) if c != cfg["ignore_label"]]
    return {"miou": iou[scored].mean(), "miou_present": iou[[c for c in scored if union[c] > 0]].mean(),
            "per_class_iou": [iou[c] for c in scored], "class_names": [cfg["class_names"][c] for c in scored]}


def strict_json(text: str):
    """json.loads that rejects Infinity, -Infinity and NaN, as strict JSON parsers (jq, browsers) do."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def backbone_config(**keys) -> dict:
    """A complete config dict (every DEFAULTS key) for building a backbone class directly, without
    the file-level validation: ``keys`` set model_type, model_path, dim, steps, blocks, ..."""
    from ddpmseg.common.config import DEFAULTS, REQUIRED

    cfg = {k: json.loads(json.dumps(v)) for k, (_, v) in DEFAULTS.items() if v is not REQUIRED}
    cfg.update(exp_dir="", model_path="", dim=[16, 16, 0])
    cfg.update(keys)
    return cfg


def run_backbone_end_to_end(tmp_path: Path, keys: list[str], grid: list[str]) -> Path:
    """train_interpreter.py -> segment.py (on the test images) -> select_features.py (over ``grid``, its
    --steps / --blocks arguments, --blocks last) on a few shapes64 images with the config keys ``keys``
    ("KEY=VALUE", after the fast settings); asserts what every backbone must give and returns the run
    folder."""
    import numpy as np
    from PIL import Image

    from ddpmseg.commands import segment
    from ddpmseg.commands import select as select_features
    import train_interpreter

    data = shapes64() / "real"
    sets = [a for k in keys for a in ("--set", k)]
    paths = ["--set", f"training_path={data / 'train'}", "--set", f"testing_path={data / 'test'}"]
    exp = tmp_path / "exp"
    assert train_interpreter.main(["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(exp), *paths,
                                   *FAST_INTERPRETER, *sets]) == 0
    (run,) = [p.parent for p in exp.glob("*/metrics.json")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(recomputed_iou(run)["miou"], abs=1e-12)
    # segment.py on the run's own test images gives the run's own predictions (same features, same vote).
    cfg = json.loads((run / "config.json").read_text())
    stems = sorted(p.stem for p in (data / "test").glob("*.png"))[:cfg["testing_number"]]
    shots = tmp_path / "shots"
    shots.mkdir()
    for stem in stems:
        Image.open(data / "test" / f"{stem}.png").save(shots / f"{stem}.png")
    assert segment.main(["--run", str(run), "--images", str(shots), "--out", str(tmp_path / "segmented")]) == 0
    for stem in stems:
        mask = np.asarray(Image.open(tmp_path / "segmented" / f"{stem}.png"))
        np.testing.assert_array_equal(mask, np.load(run / "predictions" / f"{stem}.npy"))
    out = tmp_path / "selection"
    assert select_features.main(["--exp", "experiments/celebamask64/ddpm.json", "--out", str(out), *paths,
                                 "--set", "training_number=6", "--set", f"exp_dir={exp}", *sets, *grid,
                                 "--folds", "3", "--iterations", "30"]) == 0
    selection = json.loads((out / "selection.json").read_text())
    # The grid asked for, plus the run config's own steps x blocks (select's fallback).
    blocks = sorted({int(b) for b in grid[grid.index("--blocks") + 1:]} | set(cfg["blocks"]))
    steps = sorted({int(t) for t in grid[grid.index("--steps") + 1:grid.index("--blocks")]} | set(cfg["steps"])) \
        if "--steps" in grid else []
    assert selection["grid"] == {"steps": steps, "blocks": blocks}
    # one single-layer cell per (step, block); a backbone without timesteps has one row of blocks
    assert sorted((c["steps"], c["blocks"]) for c in selection["cells"]) == sorted(
        ([t] if steps else [], [b]) for t in (steps or [None]) for b in blocks)
    return run


# A tiny diffusers UNet2DModel: two resolutions, an attention up block and a plain one (every kind of
# hookable layer); up_blocks.0 gives 16 channels, up_blocks.1 gives 8, both at full resolution.
TINY_DIFFUSERS_UNET = dict(in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)


def write_tiny_ddpm_folder(out: Path, sample_size: int) -> Path:
    """The google/ddpm-* layout: the tiny U-Net (seed 0) and a linear 1000-step DDPMScheduler at the top
    of one folder."""
    import diffusers
    import torch

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=sample_size, **TINY_DIFFUSERS_UNET).save_pretrained(out)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(out)
    return out


def write_clip_tokenizer(out: Path) -> int:
    """A CLIP BPE tokenizer over single letters: vocab.json and an empty merges.txt, as CLIP writes them,
    saved with save_pretrained; returns the vocabulary size."""
    import transformers

    out.mkdir(parents=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab[token] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77).save_pretrained(out)
    return len(vocab)


# The tiny Stable Diffusion's text width = its U-Net's cross_attention_dim.
TINY_SD_TEXT_WIDTH = 16


def write_tiny_sd_pipeline(out: Path) -> Path:
    """A random Stable Diffusion pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) of
    tiny components, written with save_pretrained; the VAE has SD's 8 x 8 pixels per latent."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    vocab = write_clip_tokenizer(out / "tokenizer")
    diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_SD_TEXT_WIDTH, norm_num_groups=4, attention_head_dim=4).save_pretrained(out / "unet")
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                            latent_channels=4, norm_num_groups=4, layers_per_block=1).save_pretrained(out / "vae")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=TINY_SD_TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)).save_pretrained(out / "text_encoder")
    # Stable Diffusion's training schedule.
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        out / "scheduler")
    return out
