"""DDPM training from scratch on shapes64 images with a tiny 32 px U-Net."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmseg.commands import train_ddpm
from conftest import shapes64
from guided_diffusion.checkpoint import load_model_and_diffusion, sidecar_flags
from ddpmseg.ddpm.train import center_crop_arr, global_batch, latest_checkpoint, random_crop_arr
from ddpmseg.features.ddpm import FeatureExtractorDDPM

TINY = ["--image_size", "32", "--channel_mult", "1,2", "--num_channels", "32", "--num_res_blocks", "1",
        "--attention_resolutions", "8", "--learn_sigma", "True", "--dropout", "0.1",
        "--batch_size", "4", "--grid_size", "4", "--sample_respacing", "ddim3", "--ema_rate", "0.9,0.99"]


def train(log_dir, *extra, data=None):
    data = data or str(shapes64() / "unlabeled")
    return train_ddpm.main(["--data_dir", data, "--log_dir", str(log_dir), *TINY, *extra])


def weights(path):
    return torch.load(path, weights_only=True)


def test_checkpoints_in_the_original_naming_load_in_the_pipeline(tmp_path):
    assert train(tmp_path, "--max_steps", "3", "--save_interval", "2", "--log_interval", "1") == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    for step in (0, 2, 3):  # the initialisation, every save_interval, the end
        for kind in (f"model{step:06d}", f"ema_0.9_{step:06d}", f"ema_0.99_{step:06d}"):
            assert f"{kind}.pt" in names and f"{kind}.json" in names
        assert f"opt{step:06d}.pt" in names
    assert "samples_000003.png" in names and Image.open(tmp_path / "samples_000003.png").size[0] > 32
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    # A checkpoint is a plain float32 state dict whose flags sit beside it: the pipeline's
    # loader takes it with no other input, and features come out.
    ckpt = tmp_path / "ema_0.99_000003.pt"
    flags = sidecar_flags(str(ckpt))
    assert flags["image_size"] == 32 and flags["num_channels"] == 32
    assert all(v.dtype == torch.float32 for v in weights(ckpt).values())
    model, diffusion = load_model_and_diffusion(str(ckpt), flags)
    acts = FeatureExtractorDDPM(steps=[50], blocks=[1, 2], model=model, diffusion=diffusion)(torch.zeros(1, 3, 32, 32))
    assert [tuple(a.shape) for a in acts] == [(1, 64, 32, 32), (1, 32, 32, 32)]
    # EMA really averages: the slow EMA stays closest to the initialisation.
    init, raw = weights(tmp_path / "model000000.pt"), weights(tmp_path / "model000003.pt")
    fast, slow = weights(tmp_path / "ema_0.9_000003.pt"), weights(tmp_path / "ema_0.99_000003.pt")
    dist = lambda a: sum((a[k] - init[k]).norm() ** 2 for k in init) ** 0.5  # noqa: E731
    assert 0 < dist(slow) < dist(fast) < dist(raw)


def test_resume_continues_exactly(tmp_path):
    assert train(tmp_path / "straight", "--max_steps", "4", "--save_interval", "2") == 0
    assert train(tmp_path / "resumed", "--max_steps", "2", "--save_interval", "2") == 0
    assert train(tmp_path / "resumed", "--max_steps", "4", "--save_interval", "2") == 0
    for name in ("model000004.pt", "ema_0.99_000004.pt"):
        a, b = weights(tmp_path / "straight" / name), weights(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "resumed from" in (tmp_path / "resumed" / "log.txt").read_text()
    # A finished run is not trained further.
    assert train(tmp_path / "resumed", "--max_steps", "4") == 0
    assert latest_checkpoint(str(tmp_path / "resumed"), [0.9, 0.99]) == 4


def test_an_incomplete_checkpoint_set_is_skipped(tmp_path):
    assert train(tmp_path, "--max_steps", "2", "--save_interval", "1") == 0
    (tmp_path / "opt000002.pt").unlink()  # as if the run died while saving step 2
    assert latest_checkpoint(str(tmp_path), [0.9, 0.99]) == 1


@pytest.mark.parametrize("extra, message", [
    (["--num_channels", "16"], "divisible"),
    (["--batch_size", "0"], "batch_size must be positive"),
    (["--precision", "bf16"], "needs a CUDA device"),
    (["--ema_rate", "1.5"], "ema_rate"),
    (["--schedule_sampler", "loss"], "not one of uniform, loss-second-moment"),
])
def test_bad_options_fail_with_one_message_and_write_nothing(tmp_path, capsys, extra, message):
    assert train(tmp_path / "run", "--max_steps", "1", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_data_fails_clearly(tmp_path, capsys):
    assert train(tmp_path / "run", "--max_steps", "1", data=str(tmp_path / "nowhere")) == 2
    assert "image folder not found" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    Image.new("RGB", (40, 40)).save(few / "a.png")
    assert train(tmp_path / "run", "--max_steps", "1", data=str(few)) == 2
    assert "1 images" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_resuming_with_other_flags_is_refused(tmp_path, capsys):
    assert train(tmp_path, "--max_steps", "1") == 0
    assert train(tmp_path, "--max_steps", "2", "--dropout", "0.0") == 2
    assert "model_flags.dropout: 0.1 -> 0.0" in capsys.readouterr().err


def test_global_batches_are_epochs_without_replacement():
    seen = torch.cat([global_batch(s, 12, 4, seed=0)[0] for s in range(3)])
    assert sorted(seen.tolist()) == list(range(12))  # one epoch = every image once
    assert torch.equal(global_batch(5, 12, 4, 0)[0], global_batch(5, 12, 4, 0)[0])
    assert not torch.equal(global_batch(3, 12, 4, 0)[0], global_batch(0, 12, 4, 0)[0])  # a new permutation


def test_center_crop_is_guided_diffusions():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (150, 260, 3), dtype=np.uint8))
    out = center_crop_arr(img, 64)
    # 150 >= 2*64: one BOX halving to 130x75, BICUBIC to short side 64, centre crop.
    half = img.resize((130, 75), resample=Image.BOX)
    scaled = np.asarray(half.resize((round(130 * 64 / 75), 64), resample=Image.BICUBIC))
    left = (scaled.shape[1] - 64) // 2
    assert out.shape == (64, 64, 3) and np.array_equal(out, scaled[:, left:left + 64])


def test_sidecar_lists_the_training_run(tmp_path):
    assert train(tmp_path, "--max_steps", "1") == 0
    side = json.loads((tmp_path / "model000001.json").read_text())
    assert side["step"] == 1 and side["batch_size"] == 4 and side["weights"] == "raw weights"


def test_loss_aware_timesteps_resume_with_their_history(tmp_path):
    args = ("--schedule_sampler", "loss-second-moment", "--save_interval", "1")
    assert train(tmp_path / "straight", "--max_steps", "2", *args) == 0
    assert train(tmp_path / "resumed", "--max_steps", "1", *args) == 0
    assert (tmp_path / "resumed" / "train_state000001.pt").is_file()  # the sampler's loss history
    assert train(tmp_path / "resumed", "--max_steps", "2", *args) == 0
    a, b = weights(tmp_path / "straight" / "model000002.pt"), weights(tmp_path / "resumed" / "model000002.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_files_hold_the_exponential_average_of_the_raw_weights(tmp_path):
    """ema_r_t = r * ema_r_(t-1) + (1 - r) * model_t, from ema_r_0 = model_0, for each rate and step:
    recomputed in float64 from the saved float32 files. The trainer's float32 lerp rounds a few
    times, each within 2^-24 of the operands' magnitude, hence the bound 2^-21 * (|ema| + |model|)."""
    assert train(tmp_path, "--max_steps", "2", "--save_interval", "1") == 0
    for rate in (0.9, 0.99):
        prev = {k: v.double() for k, v in weights(tmp_path / "model000000.pt").items()}
        assert all(torch.equal(v.double(), prev[k]) for k, v in weights(tmp_path / f"ema_{rate}_000000.pt").items())
        for step in (1, 2):
            raw = {k: v.double() for k, v in weights(tmp_path / f"model{step:06d}.pt").items()}
            ema = {k: v.double() for k, v in weights(tmp_path / f"ema_{rate}_{step:06d}.pt").items()}
            assert ema.keys() == raw.keys()
            for k in raw:
                want = rate * prev[k] + (1 - rate) * raw[k]
                assert ((ema[k] - want).abs() <= 2**-21 * (prev[k].abs() + raw[k].abs())).all(), (rate, step, k)
            moved = sum(int(not torch.equal(raw[k], prev[k])) for k in raw)
            assert moved > 0  # the raw weights did change, so the average was tested on real updates
            prev = ema


def test_lr_anneals_linearly_to_zero_and_training_stops_there(tmp_path):
    """With --lr_anneal_steps 3, update s (0, 1, 2) uses lr * (1 - s / 3), as the original; the
    optimizer file of step s + 1 records the rate of the update that made it (exact floats)."""
    assert train(tmp_path, "--lr", "0.001", "--lr_anneal_steps", "3", "--save_interval", "1") == 0
    for s in range(3):
        lr = torch.load(tmp_path / f"opt{s + 1:06d}.pt", weights_only=True)["param_groups"][0]["lr"]
        assert lr == 0.001 * (1 - s / 3)
    assert latest_checkpoint(str(tmp_path), [0.9, 0.99]) == 3  # no update at lr 0


def test_random_crop_is_a_window_of_a_randomly_resized_image(tmp_path):
    """guided-diffusion's random crop: the short side resized to a length in [size, ceil(size / 0.8)],
    then a size x size window. Each crop is found by exhaustive search among all those windows
    (BICUBIC resizes made here), and different seeds use several lengths and positions."""
    from ddpmseg.ddpm.train import UnlabelledImages

    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))  # 40 x 30 (W x H)
    size = 16
    candidates = {}
    for short in range(size, -(-size * 10 // 8) + 1):
        big = np.asarray(src.resize((round(40 * short / 30), short), resample=Image.BICUBIC))
        for top in range(big.shape[0] - size + 1):
            for left in range(big.shape[1] - size + 1):
                candidates.setdefault(big[top:top + size, left:left + size].tobytes(), (short, top, left))
    found = set()
    for seed in range(40):
        crop = random_crop_arr(src, size, np.random.default_rng(seed))
        assert crop.shape == (size, size, 3) and crop.tobytes() in candidates, seed
        found.add(candidates[crop.tobytes()])
    assert len({short for short, _, _ in found}) >= 3 and len(found) >= 20
    # The training set applies it per (image, crop seed), and mirrors after cropping.
    src.save(tmp_path / "a.png")
    data = UnlabelledImages([str(tmp_path)], size, random_crop=True)
    want = random_crop_arr(src, size, np.random.default_rng(7))
    assert np.array_equal(data[(0, 7, False)].permute(1, 2, 0).numpy(), want)
    assert np.array_equal(data[(0, 7, True)].permute(1, 2, 0).numpy(), want[:, ::-1])


def progress_rows(log_dir):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in csv.DictReader(open(log_dir / "progress.csv"))]


def test_a_run_killed_between_its_log_and_its_checkpoint_resumes_without_duplicate_rows(tmp_path):
    args = ["--save_interval", "2", "--log_interval", "1"]
    assert train(tmp_path / "straight", "--max_steps", "4", *args) == 0
    # As kill -9 leaves it after update 3 was logged, before its model file: the set for 3 is incomplete.
    assert train(tmp_path / "killed", "--max_steps", "3", *args) == 0
    (tmp_path / "killed" / "model000003.pt").unlink()
    (tmp_path / "killed" / "samples_000003.png").unlink()
    assert train(tmp_path / "killed", "--max_steps", "4", *args) == 0
    assert [r["step"] for r in progress_rows(tmp_path / "killed")] == ["1", "2", "3", "4"]
    assert progress_rows(tmp_path / "killed") == progress_rows(tmp_path / "straight")


def test_a_run_killed_before_its_final_grid_draws_it_on_rerun(tmp_path):
    assert train(tmp_path, "--max_steps", "2", "--save_interval", "2") == 0
    grid = (tmp_path / "samples_000002.png").read_bytes()
    (tmp_path / "samples_000002.png").unlink()
    assert train(tmp_path, "--max_steps", "2", "--save_interval", "2") == 0
    assert (tmp_path / "samples_000002.png").read_bytes() == grid
