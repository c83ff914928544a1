"""train_deeplab.py end to end on CPU: a synthetic .npz built from shapes64 images."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ddpmseg.commands import deeplab as train_deeplab
from conftest import REPO, recomputed_iou, shapes64
from ddpmseg.common.config import CHOICES, ConfigError, validate
from ddpmseg.datasetddpm.deeplab import BACKBONES, build_deeplab

FOLDER = "deeplab_class_19_checkpoint_10_filter_out_0.200000"  # --max_data 10 --uncertainty_portion 0.2
# Tiny but complete: 10 samples of which 8 are kept = 2 batches per epoch, 2 validation and 2 test images.
SMALL = ["--deeplab_batch_size", "4", "--workers", "0", "--set", "deeplab_backbone=mobilenet_v3_large",
         "--set", "deeplab_pretrained_backbone=false", "--set", "deeplab_res=64", "--set", "training_number=2",
         "--set", "testing_number=2"]
FAST = ["--max_data", "10", "--uncertainty_portion", "0.2", *SMALL]


def real_arrays(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    pngs = sorted((shapes64() / "real" / "train").glob("*.png"))[:n]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    return images, np.stack([np.load(p.with_suffix(".npy")) for p in pngs])


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> str:
    """A DatasetDDPM-format file: the real training images as "synthetic" samples."""
    images, masks = real_arrays()
    path = str(tmp_path_factory.mktemp("synthetic") / "samples_64x64x3.npz")
    np.savez(path, images, masks, np.random.default_rng(0).random(len(images)))
    return path


def run(exp_dir, data_path, *extra) -> int:
    real = shapes64() / "real"
    return train_deeplab.main(["--exp", str(REPO / "experiments/celebamask64/ddpm.json"), "--data_path", str(data_path),
                               "--set", f"exp_dir={exp_dir}", "--set", f"training_path={real / 'train'}",
                               "--set", f"testing_path={real / 'test'}", *FAST, *extra])


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, npz):
    """Two epochs, then a rerun with --num_epoch 3; the metrics of both and the folder."""
    exp = tmp_path_factory.mktemp("run")
    folder = exp / "50_150_250_4_5_6_7_8" / FOLDER
    assert run(exp, npz, "--num_epoch", "2") == 0
    first = json.loads((folder / "metrics.json").read_text())
    mtimes = [os.stat(folder / f"deeplab_epoch_{e}.pth").st_mtime_ns for e in (0, 1)]
    assert run(exp, npz, "--num_epoch", "3") == 0
    second = json.loads((folder / "metrics.json").read_text())
    return folder, first, second, mtimes


def test_run_writes_every_output(resumed):
    folder, metrics, _, _ = resumed
    assert np.isfinite(metrics["miou"]) and 0 <= metrics["miou"] <= metrics["miou_present"] <= 1
    # The folder's predictions are those of the rerun (resumed[2]): its metrics are their IoU.
    assert resumed[2]["miou"] == pytest.approx(recomputed_iou(folder)["miou"], abs=1e-12)
    assert list(metrics["per_class_iou"])[:2] == ["background", "skin"] and metrics["num_images"] == 2
    assert set(metrics["validation_miou"]) == {"0", "1"} and metrics["best_epoch"] in (0, 1)
    assert metrics["best_validation_miou"] == max(metrics["validation_miou"].values())
    assert metrics["synthetic"]["used"] == 10 and metrics["synthetic"]["kept"] == 8
    assert metrics["trained_epochs"] == [0, 1] and metrics["deeplab_res"] == 64
    assert {"train_s", "validation_s", "test_s", "total_s"} <= set(metrics["timings_s"])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["deeplab_backbone"] == "mobilenet_v3_large" and cfg["training_number"] == 2
    stems = sorted(p.stem for p in (shapes64() / "real" / "test").glob("*.png"))[:2]
    for stem in stems:
        width, height = Image.open(folder / "visualizations" / f"{stem}_compare.png").size
        assert width == 3 * 64 + 4 and height > 64 + 14  # panels, a title line above, a class legend below
        pred = np.load(folder / "predictions" / f"{stem}.npy")
        assert pred.shape == (64, 64) and pred.max() < 19
    assert "| **mIoU** (19 classes)" in (folder / "per_class_iou.md").read_text()
    assert set(json.loads((folder / "test_val_miou.json").read_text())) == {"Validation", "Testing"}
    assert not list(folder.glob("**/*.tmp")) and not list(folder.glob("**/.*"))


def test_rerun_trains_only_the_missing_epoch(resumed):
    folder, _, metrics, mtimes = resumed
    assert metrics["trained_epochs"] == [2] and set(metrics["validation_miou"]) == {"0", "1", "2"}
    assert [os.stat(folder / f"deeplab_epoch_{e}.pth").st_mtime_ns for e in (0, 1)] == mtimes
    assert "resuming after epoch 1: training epochs [2]" in (folder / "log.txt").read_text()
    ckpt = torch.load(folder / "deeplab_epoch_2.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["optimizer_state_dict"]["state"][0]["step"] == 6  # 3 epochs x 2 batches


def test_resumed_training_equals_an_uninterrupted_run(resumed, tmp_path, npz):
    folder = resumed[0]
    assert run(tmp_path, npz, "--num_epoch", "3") == 0
    fresh = weights(tmp_path / "50_150_250_4_5_6_7_8" / FOLDER / "deeplab_epoch_2.pth")
    again = weights(folder / "deeplab_epoch_2.pth")
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)


def test_rerun_after_the_last_epoch_only_evaluates(resumed, npz):
    folder, _, before, _ = resumed
    exp = folder.parents[1]
    # The synthetic file is not even opened: a wrong path is fine once every epoch exists.
    assert run(exp, npz + ".missing", "--num_epoch", "3") == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["trained_epochs"] == [] and metrics["miou"] == before["miou"]
    assert metrics["synthetic"]["kept"] == 8  # remembered by the checkpoints


def test_changed_training_settings_are_refused(resumed, npz, capsys):
    exp = resumed[0].parents[1]
    assert run(exp, npz, "--num_epoch", "4", "--deeplab_lr", "0.01") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "learning_rate 0.001 (now 0.01)" in err


def error_of(capsys, exp_dir, data_path, *extra) -> str:
    """Run expecting a validation error; check it is one line and nothing was written."""
    assert run(exp_dir, data_path, "--num_epoch", "1", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not os.path.exists(exp_dir)
    return err


def test_input_errors_exit_2_and_write_nothing(tmp_path, npz, capsys):
    exp = tmp_path / "exp"
    assert "synthetic dataset not found" in error_of(capsys, exp, tmp_path / "none.npz")
    images, masks = real_arrays(12)
    np.savez(tmp_path / "bad.npz", images, np.where(masks == 2, 25, masks), np.zeros(12))
    assert "mask values [25]" in error_of(capsys, exp, tmp_path / "bad.npz")
    np.savez(tmp_path / "two.npz", images, masks)
    assert "holds 2 arrays" in error_of(capsys, exp, tmp_path / "two.npz")
    assert "needs int(N * portion) > 30" in error_of(capsys, exp, npz, "--set", "uncertainty_filter=published")
    assert "fewer than --deeplab_batch_size 9" in error_of(capsys, exp, npz, "--deeplab_batch_size", "9")
    assert "'deeplab_backbone' must be one of" in error_of(capsys, exp, npz, "--set", "deeplab_backbone=vgg16")
    assert "'deeplab_res' must be >= 32" in error_of(capsys, exp, npz, "--set", "deeplab_res=16")
    assert "checkpoint not found" in error_of(capsys, exp, npz, "--resume", str(tmp_path / "deeplab_epoch_0.pth"))
    assert "--uncertainty_portion must be in [0, 1)" in error_of(capsys, exp, npz, "--uncertainty_portion", "1")


def test_unloadable_imagenet_weights_name_the_fix(tmp_path, npz, capsys, monkeypatch):
    """A damaged file in the torch hub cache stands in for a failed download (no network needed)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v3_large-8738ca79.pth").write_bytes(b"truncated")
    err = error_of(capsys, tmp_path / "exp", npz, "--set", "deeplab_pretrained_backbone=true")
    assert "deeplab_pretrained_backbone=false" in err and str(cache) in err


def test_pretrained_backbone_comes_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    imagenet = torchvision.models.mobilenet_v3_large().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet, tmp_path / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth")
    model = build_deeplab("mobilenet_v3_large", 19, pretrained_backbone=True)
    assert torch.equal(model.state_dict()["backbone.0.0.weight"], imagenet["features.0.0.weight"])
    assert torch.equal(model.state_dict()["backbone.16.0.weight"], imagenet["features.16.0.weight"])


def test_published_architecture_and_config_defaults():
    cfg = validate(json.loads((REPO / "experiments/celebamask64/ddpm.json").read_text()))
    assert (cfg["deeplab_res"], cfg["deeplab_backbone"], cfg["deeplab_pretrained_backbone"],
            cfg["uncertainty_filter"]) == (None, "resnet101", True, "most_uncertain")
    assert set(BACKBONES) == set(CHOICES["deeplab_backbone"])
    with pytest.raises(ConfigError, match="'uncertainty_filter' must be one of"):
        validate({**cfg, "uncertainty_filter": "nope"})
    model = build_deeplab("resnet101", 29, pretrained_backbone=False)  # the published network
    assert model.aux_classifier is None and model.classifier[-1].out_channels == 29
    # torchvision's dilation [False, True, True]: layers 3 and 4 keep stride 8 (output stride 8).
    assert model.backbone.layer3[0].conv2.stride == model.backbone.layer4[0].conv2.stride == (1, 1)
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 29, 64, 64)


def test_shell_script(tmp_path, npz):
    script = REPO / "scripts" / "datasetDDPM" / "train_deeplab.sh"
    r = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr and "bedroom_28" in r.stderr
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("SYNTHETIC_NPZ", None)
    real = shapes64() / "real"
    paths = ["--set", f"training_path={real / 'train'}", "--set", f"testing_path={real / 'test'}"]
    r = subprocess.run(["bash", str(script), "celebamask64", "--set", f"exp_dir={tmp_path}", *paths],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "synthetic_datasets/ddpm/celebamask64/samples_64x64x3.npz" in r.stderr
    # The published --max_data 50000 and portion 0.1 name the folder; the epoch count is overridden.
    r = subprocess.run(["bash", str(script), "celebamask64", "--set", f"exp_dir={tmp_path}", *SMALL, *paths,
                        "--num_epoch", "1", "--deeplab_batch_size", "8"],
                       capture_output=True, text=True, timeout=300, env={**env, "SYNTHETIC_NPZ": npz})
    assert r.returncode == 0, r.stderr[-2000:]
    # 50000 asked, 20 generated: all 20 are used, and the run says so.
    assert f"warning: --max_data 50000, but {npz} holds only 20 samples: training on all 20" in r.stdout + r.stderr
    metrics = json.loads((tmp_path / "50_150_250_4_5_6_7_8" / "deeplab_class_19_checkpoint_50000_filter_out_0.100000"
                          / "metrics.json").read_text())
    assert metrics["synthetic"]["kept"] == 18 and metrics["settings"]["data_path"] == npz


def _deeplab_run(exp_dir, npz, *extra):
    """The DeepLabRun that ``run(exp_dir, npz, *extra)`` would build, for method-level checks."""
    from ddpmseg.common.config import load_config, parse_override
    from ddpmseg.datasetddpm.deeplab import DeepLabRun, DeepLabSettings

    args = train_deeplab.build_parser().parse_args(["--exp", str(REPO / "experiments/celebamask64/ddpm.json"), "--data_path", npz,
                                     *FAST, *extra])
    real = shapes64() / "real"
    overrides = dict(parse_override(s) for s in args.set)
    cfg = load_config(args.exp, {**overrides, "exp_dir": str(exp_dir), "training_path": str(real / "train"),
                                 "testing_path": str(real / "test")})
    settings = DeepLabSettings(**{k: getattr(args, k) for k in DeepLabSettings.__dataclass_fields__})
    return DeepLabRun(cfg, settings, log=lambda m: None)


def test_the_filter_keeps_the_least_uncertain_of_the_first_max_data_samples(tmp_path, npz):
    """--max_data 10 --uncertainty_portion 0.2: the 8 least uncertain of the first 10 samples train."""
    dl = _deeplab_run(tmp_path, npz)
    kept = dl.load_synthetic()
    with np.load(npz) as f:
        uncertainty = f["arr_2"][:10]
    assert sorted(kept.indices.tolist()) == sorted(np.argsort(uncertainty)[:8].tolist())
    assert uncertainty[kept.indices].max() <= np.sort(uncertainty)[7]


def test_masks_and_predictions_change_resolution_as_published(tmp_path, npz):
    """deeplab_res 128 with 64 px data: inputs are resized to 128, masks nearest-resized to 128
    (exactly mask[i // 2, j // 2] for this 2x ratio); predictions come back to 64 px by bilinear
    upsampling of the logits (align_corners=False) before the argmax, checked against a hand
    interpolation of a 2 x 2 logit map."""
    from ddpmseg.datasetddpm.deeplab import predict

    dl = _deeplab_run(tmp_path, npz, "--set", "deeplab_res=128")
    data = dl.load_synthetic()
    with np.load(npz) as f:
        mask = f["arr_1"][data.indices[0]]
    image, label = data[0]
    assert image.shape == (3, 128, 128)
    assert np.array_equal(label.numpy(), mask[np.arange(128)[:, None] // 2, np.arange(128)[None, :] // 2])
    assert dl.res == 128 and dl.size == 64

    logits = torch.tensor([[[0.0, 2.0], [0.0, 0.0]], [[0.4, 0.4], [0.4, 0.4]]])[None]  # [1, K=2, 2, 2]

    def lerp_axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    lo, hi, w = lerp_axis(4, 2)
    z = logits[0].double().numpy()
    rows = z[:, lo, :] * (1 - w)[None, :, None] + z[:, hi, :] * w[None, :, None]
    up = rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]
    got = predict(lambda x: {"out": logits}, torch.zeros(1, 3, 2, 2), 4)
    assert np.array_equal(got[0].numpy(), up.argmax(0))
    nearest_then_argmax = z.argmax(0)[np.arange(4)[:, None] // 2, np.arange(4)[None, :] // 2]
    assert not np.array_equal(up.argmax(0), nearest_then_argmax)  # the two paths differ here


def test_the_earliest_best_epoch_is_tested(resumed, tmp_path, npz):
    """Epoch 1 gets epoch 0's weights (a validation tie) and epoch 2 a head that scores 0:
    the earliest of the tied best, epoch 0, is selected, as the original, and the test mIoU is that
    of epoch 0's weights, recomputed here (DeepLab forward, argmax, IoU summed over the test images;
    same float32 forward on the same machine, so the same masks)."""
    from ddpmseg.datasetddpm.deeplab import build_deeplab, input_transform
    from ddpmseg.common.metrics import IoUAccumulator

    exp = tmp_path / "exp"
    shutil.copytree(resumed[0].parents[1], exp)
    folder = exp / "50_150_250_4_5_6_7_8" / FOLDER
    first = torch.load(folder / "deeplab_epoch_0.pth", weights_only=True)
    torch.save({**first, "epoch": 1}, folder / "deeplab_epoch_1.pth")
    # Epoch 2's head says class 10 (past shapes64's 6 classes, so in no image) everywhere: IoU 0 on every class.
    worse = {k: v.clone() for k, v in first["model_state_dict"].items()}
    worse["classifier.4.weight"].zero_()
    worse["classifier.4.bias"].fill_(-10.0)[10] = 10.0
    torch.save({**first, "epoch": 2, "model_state_dict": worse}, folder / "deeplab_epoch_2.pth")
    assert run(exp, npz, "--num_epoch", "3") == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    val = metrics["validation_miou"]
    assert metrics["trained_epochs"] == [] and val["0"] == val["1"] > val["2"] and metrics["best_epoch"] == 0

    def test_miou(state: dict) -> float:
        model = build_deeplab("mobilenet_v3_large", 19, pretrained_backbone=False)
        model.load_state_dict(state)
        model.eval()
        iou = IoUAccumulator(19, None)
        for png in sorted((shapes64() / "real" / "test").glob("*.png"))[:2]:
            with torch.no_grad():
                logits = model(input_transform(64)(Image.open(png).convert("RGB"))[None])["out"]
            iou.update(logits.argmax(1)[0], np.load(png.with_suffix(".npy")))
        return iou.result()["miou"]

    assert metrics["miou"] == pytest.approx(test_miou(first["model_state_dict"]), abs=1e-12)
    assert test_miou(worse) == 0 < metrics["miou"]  # so testing another epoch would show
