"""Sampling and DatasetDDPM generation: ddpmseg sample and generate_dataset.py, with resume."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import generate as generate_dataset
from ddpmseg.commands import sample
from guided_diffusion.checkpoint import load_model_and_diffusion, sidecar_flags
from ddpmseg.ddpm.sampling import sample_batch, sampling_diffusion

FAST_SAMPLING = ["--use_ddim", "True", "--timestep_respacing", "ddim2"]


def draw(ckpt, out, *extra):
    return sample.main(["--model_path", str(ckpt), "--out", str(out), "--num_samples", "3", "--batch_size", "2",
                        *FAST_SAMPLING, *extra])


def test_a_batch_depends_only_on_seed_and_index(tiny64_checkpoint):
    flags = sidecar_flags(str(tiny64_checkpoint))
    model, _ = load_model_and_diffusion(str(tiny64_checkpoint), flags)
    diffusion = sampling_diffusion(flags, "ddim2")
    a = sample_batch(model, diffusion, 2, 64, seed=0, batch_index=1, use_ddim=True)
    torch.randn(5)  # the caller's RNG state must not matter, nor be consumed
    state = torch.get_rng_state()
    b = sample_batch(model, diffusion, 2, 64, seed=0, batch_index=1, use_ddim=True)
    assert torch.equal(state, torch.get_rng_state())
    c = sample_batch(model, diffusion, 2, 64, seed=0, batch_index=0, use_ddim=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 3, 64, 64) and a.min() >= -1 and a.max() <= 1


def test_sample_writes_pngs_npz_and_grid_and_resumes(tmp_path, tiny64_checkpoint):
    out = tmp_path / "s"
    assert draw(tiny64_checkpoint, out) == 0
    npz = out / "samples_3x64x64x3.npz"
    with np.load(npz) as f:
        first = f["arr_0"]
    assert first.shape == (3, 64, 64, 3) and first.dtype == np.uint8  # 2 batches of 2, truncated to 3
    assert sorted(os.listdir(out / "images")) == ["000000.png", "000001.png", "000002.png"]
    assert np.array_equal(np.asarray(Image.open(out / "images" / "000002.png")), first[2])
    assert (out / "grid.png").is_file()
    # A crash after batch 0: only batch 1 is drawn again, and the result is the same.
    kept = os.path.getmtime(out / "shards" / "batch_000000.npz")
    os.remove(out / "shards" / "batch_000001.npz")
    os.remove(npz)
    assert draw(tiny64_checkpoint, out) == 0
    assert os.path.getmtime(out / "shards" / "batch_000000.npz") == kept
    with np.load(npz) as f:
        assert np.array_equal(f["arr_0"], first)


def test_resuming_with_other_settings_is_refused(tmp_path, tiny64_checkpoint, capsys):
    assert draw(tiny64_checkpoint, tmp_path) == 0
    assert draw(tiny64_checkpoint, tmp_path, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "other settings" in err and "'seed': (0, 1)" in err


@pytest.mark.parametrize("extra, message", [
    (["--timestep_respacing", "ddim5", "--use_ddim", "False"], "add --use_ddim True"),
    (["--num_samples", "0"], "num_samples must be positive"),
])
def test_bad_sampling_options(tmp_path, tiny64_checkpoint, capsys, extra, message):
    assert sample.main(["--model_path", str(tiny64_checkpoint), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_generate_dataset_labels_samples_in_the_original_format(tmp_path, tiny_interpreter_run):
    out = tmp_path / "synthetic"
    argv = ["--run_dir", str(tiny_interpreter_run), "--out", str(out), "--num_samples", "3", "--batch_size", "2",
            *FAST_SAMPLING]
    assert generate_dataset.main(argv) == 0
    with np.load(out / "samples_64x64x3.npz") as f:
        assert f.files == ["arr_0", "arr_1", "arr_2"]
        images, masks, uncertainty = f["arr_0"], f["arr_1"], f["arr_2"]
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (3, 64, 64) and masks.dtype == np.uint8 and masks.max() < 19
    assert uncertainty.shape == (3,) and np.isfinite(uncertainty).all() and (uncertainty >= 0).all()
    assert (out / "synthetic_grid.png").is_file()


def test_generate_dataset_needs_a_finished_run(tmp_path, capsys):
    assert generate_dataset.main(["--run_dir", str(tmp_path), "--num_samples", "1", "--batch_size", "1"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_generate_filter_deeplab_end_to_end(tmp_path, tiny_interpreter_run):
    """DatasetDDPM at toy size: 4 labelled samples -> drop the most uncertain quarter -> DeepLab -> real test mIoU."""
    import json

    from ddpmseg.commands import deeplab as train_deeplab
    from conftest import REPO, shapes64

    out = tmp_path / "synthetic"
    assert generate_dataset.main(["--run_dir", str(tiny_interpreter_run), "--out", str(out), "--num_samples", "4",
                                  "--batch_size", "2", *FAST_SAMPLING]) == 0
    real = shapes64() / "real"
    argv = ["--exp", str(REPO / "experiments/celebamask64/ddpm.json"), "--data_path", str(out / "samples_64x64x3.npz"),
            "--uncertainty_portion", "0.25", "--num_epoch", "1", "--deeplab_batch_size", "2", "--workers", "0",
            "--set", f"exp_dir={tmp_path / 'deeplab'}", "--set", f"training_path={real / 'train'}",
            "--set", f"testing_path={real / 'test'}", "--set", "training_number=2", "--set", "testing_number=2",
            "--set", "deeplab_backbone=mobilenet_v3_large", "--set", "deeplab_pretrained_backbone=false",
            "--set", "deeplab_res=64"]
    assert train_deeplab.main(argv) == 0
    (metrics_path,) = (tmp_path / "deeplab").glob("*/deeplab_class_19_*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["synthetic"]["used"] == 4 and metrics["synthetic"]["kept"] == 3
    assert 0 <= metrics["miou"] <= 1 and metrics["num_images"] == 2


def test_datasetddpm_masks_and_uncertainty_are_what_the_run_predicts(tmp_path, tiny_interpreter_run):
    """Each saved sample (3, drawn in batches of 2) is labelled from its own float sample: recomputed
    here from the same batch seeds, with the run's U-Net features upsampled (bilinear) to full size,
    each member's logits in float64, the hard vote (ties to the lowest id) and the mean of the top
    10% of per-pixel mutual information. The run computes in float32 with the upsampling after the
    first layer (ddpmseg.classifier.predict), so a pixel may differ only where two members' classes are within
    1e-3 in logit (an exact tie in float64 is impossible to reproduce across orders); uncertainty
    agrees to 1e-4 relative."""
    import torch.nn.functional as F

    from ddpmseg.classifier.interpreter import load_trained_run
    from ddpmseg.common.report import to_uint8_images
    from ddpmseg.classifier.train import load_ensemble

    out = tmp_path / "gen"
    assert generate_dataset.main(["--run_dir", str(tiny_interpreter_run), "--out", str(out), "--num_samples", "3",
                                  "--batch_size", "2", *FAST_SAMPLING, "--device", "cpu"]) == 0
    with np.load(out / "samples_64x64x3.npz") as f:
        images, masks, uncertainty = f["arr_0"], f["arr_1"], f["arr_2"]
    assert images.shape == (3, 64, 64, 3) and masks.shape == (3, 64, 64) and uncertainty.shape == (3,)

    run = load_trained_run(str(tiny_interpreter_run), {"device": "cpu"}, lambda m: None)
    c = run.cfg
    diffusion = sampling_diffusion(run.flags, "ddim2")
    x = torch.cat([sample_batch(run.backbone.sampling_network(), diffusion, 2, 64, c["seed"], k, use_ddim=True)
                   for k in range(2)])[:3]
    assert np.array_equal(images, to_uint8_images(x))
    ens = load_ensemble(str(tiny_interpreter_run), c["model_num"], c["dim"][2], c["number_class"]).double()
    for i in range(3):
        layers = run.predictor.features(x[i], f"sample {i}")
        feats = torch.cat([F.interpolate(a.half().double(), size=(64, 64), mode="bilinear", align_corners=False)
                           for a in layers], dim=1)[0].reshape(c["dim"][2], -1).T
        with torch.no_grad():
            logits = ens(feats)  # [M, P, K]
        labels = logits.argmax(-1)
        counts = torch.zeros(labels.shape[1], c["number_class"], dtype=torch.long)
        counts.scatter_add_(1, labels.T, torch.ones_like(labels.T))
        want = counts.argmax(1).reshape(64, 64).numpy()
        top2 = logits.topk(2, dim=-1).values
        near_tie = ((top2[..., 0] - top2[..., 1]) < 1e-3).any(0).reshape(64, 64).numpy()
        assert np.array_equal(masks[i][~near_tie], want[~near_tie]) and near_tie.mean() < 0.01
        p = logits.softmax(-1)
        mean_p = p.mean(0)
        mi = -(mean_p * mean_p.log()).sum(-1) + (p * p.log()).sum(-1).mean(0)
        top = mi.topk(int(mi.numel() * c["uncertainty_top_fraction"])).values.mean().item()
        assert uncertainty[i] == pytest.approx(top, rel=1e-4)
    assert len(set(uncertainty.tolist())) == 3 and len(np.unique(masks)) > 2  # not a constant labelling
