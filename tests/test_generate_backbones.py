"""DatasetDDPM from backbones other than guided-diffusion's U-Net: a diffusers DDPM draws its samples
with its own scheduler and labels them with the run's ensemble; a backbone without a sampler is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FAST_INTERPRETER, shapes64, write_tiny_ddpm_folder, write_tiny_sd_pipeline
from ddpmseg.classifier.interpreter import load_trained_run
from ddpmseg.classifier.predictor import Predictor
from ddpmseg.commands import generate as generate_dataset
from ddpmseg.commands import train as train_interpreter
from ddpmseg.common.report import to_uint8_images
from ddpmseg.common.seeding import stream_seed

diffusers = pytest.importorskip("diffusers")

# Four ancestral steps of the folder's scheduler: enough to exercise the loop, fast on a CPU.
STEPS = "4"


def train(tmp_path, keys: list[str]):
    """The folder of a finished `ddpmseg train` run on a few shapes64 images with config ``keys``."""
    data = shapes64() / "real"
    exp = tmp_path / "exp"
    sets = [a for k in ["max_epochs=1", *keys] for a in ("--set", k)]
    assert train_interpreter.main(["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(exp),
                                   "--training_path", str(data / "train"), "--testing_path", str(data / "test"),
                                   *FAST_INTERPRETER, *sets]) == 0
    (run,) = [p.parent for p in exp.glob("*/metrics.json")]
    return run


@pytest.fixture(scope="module")
def diffusers_run(tmp_path_factory):
    folder = write_tiny_ddpm_folder(tmp_path_factory.mktemp("ddpm_tiny"), sample_size=64)
    return train(tmp_path_factory.mktemp("diffusers_run"), ["model_type=diffusers", f"model_path={folder}",
                                                            "steps=[50]", "blocks=[0,1]", "dim=[64,64,24]"])


def test_a_diffusers_run_draws_with_its_scheduler_and_labels_with_its_ensemble(diffusers_run, tmp_path):
    out = tmp_path / "gen"
    assert generate_dataset.main(["--run", str(diffusers_run), "--out", str(out), "--num_samples", "2",
                                  "--batch_size", "1", "--timestep_respacing", STEPS, "--device", "cpu"]) == 0
    with np.load(out / "samples_64x64x3.npz") as f:
        images, masks, uncertainty = f["arr_0"], f["arr_1"], f["arr_2"]
    assert (out / "synthetic_grid.png").is_file()

    run = load_trained_run(str(diffusers_run), {"device": "cpu"}, lambda m: None)
    seed = json.loads((diffusers_run / "config.json").read_text())["seed"]
    # Batch k is the backbone's own sampling loop on a generator seeded from the (seed, k) stream.
    x = torch.cat([run.backbone.sample(1, torch.Generator().manual_seed(stream_seed("sample_batch", seed, k)),
                                       num_inference_steps=int(STEPS)) for k in range(2)])
    np.testing.assert_array_equal(images, to_uint8_images(x))
    assert not np.array_equal(images[0], images[1])  # two batches, two streams
    # The labels are the run's vote on those float samples (before uint8 rounding).
    predictor = Predictor.load(run.cfg, run.backbone, str(diffusers_run), run.device)
    for i in range(2):
        want = predictor.votes(x[i], i).mask(run.cfg["voting"]).reshape(run.hw).numpy()
        np.testing.assert_array_equal(masks[i], want)
    assert masks.dtype == np.uint8 and masks.max() < run.cfg["number_class"]
    assert uncertainty.shape == (2,) and np.isfinite(uncertainty).all()


def test_ddim_and_respacing_reach_the_scheduler(diffusers_run, tmp_path):
    out = tmp_path / "ddim"
    assert generate_dataset.main(["--run", str(diffusers_run), "--out", str(out), "--num_samples", "1",
                                  "--batch_size", "1", "--use_ddim", "True", "--timestep_respacing", "ddim3",
                                  "--device", "cpu"]) == 0
    with np.load(out / "samples_64x64x3.npz") as f:
        images = f["arr_0"]
    run = load_trained_run(str(diffusers_run), {"device": "cpu"}, lambda m: None)
    seed = json.loads((diffusers_run / "config.json").read_text())["seed"]
    unet, scheduler = run.backbone.unet, diffusers.DDIMScheduler.from_config(run.backbone.scheduler.config)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=1, generator=torch.Generator().manual_seed(stream_seed("sample_batch", seed, 0)),
                  num_inference_steps=3, eta=0.0, output_type="np").images  # [1, H, W, 3] in [0, 1]
    # The pipeline's own float32 loop, in [0, 1]; ours is it truncated to k / 255, so it lies within one
    # step below (1e-6: the float32 rounding of x / 2 + 0.5 and of k / 255).
    gap = theirs - images.astype(np.float64) / 255
    assert gap.min() >= -1e-6 and gap.max() < 1 / 255 + 1e-6


def test_a_per_section_spacing_is_refused_before_loading(diffusers_run, tmp_path, capsys):
    code = generate_dataset.main(["--run", str(diffusers_run), "--out", str(tmp_path / "g"), "--num_samples", "1",
                                  "--timestep_respacing", "2,2", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one number of steps" in err[0]
    assert not (tmp_path / "g").exists()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_tiny_sd_pipeline(tmp_path_factory.mktemp("sd_tiny"))


@pytest.mark.parametrize("kind", ["stable_diffusion", "dinov2"])
def test_a_backbone_without_a_sampler_is_one_error_line(kind, sd_folder, tmp_path, capsys):
    keys = {"stable_diffusion": ["model_type=stable_diffusion", f"model_path={sd_folder}", "steps=[261]",
                                 "blocks=[1]", "dim=[64,64,8]"],
            "dinov2": ["model_type=dinov2", "model_path=", "random_weights=true", "dinov2_arch=vits14",
                       "input_size=70", "steps=[]", "blocks=[11]", "dim=[64,64,384]"]}[kind]
    run = train(tmp_path, keys)
    capsys.readouterr()
    code = generate_dataset.main(["--run", str(run), "--out", str(tmp_path / "g"), "--num_samples", "2",
                                  "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error:") and f"model_type '{kind}' run, which has no sampler" in err[0]
    assert "'ddpm' or 'diffusers'" in err[0]
    assert not (tmp_path / "g").exists()
