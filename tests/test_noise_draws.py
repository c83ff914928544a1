"""noise_draws: each step's activations averaged over K noise draws inside the extractor.

K draws equal the mean of K single-draw extractions (float64, tiny U-Nets), draw 0 is exactly the
noise the backbones always used (K = 1 equals the published computation bit for bit), and the
backbones that add no noise refuse K > 1."""
from __future__ import annotations

import pytest
import torch

from conftest import backbone_config, write_tiny_ddpm_folder, write_tiny_sd_pipeline
from ddpmseg.common.config import ConfigError, load_config
from ddpmseg.common.model_flags import resolve_model_flags
from ddpmseg.common.seeding import stream_generator
from ddpmseg.features.ddpm import FeatureExtractorDDPM, shared_noise
from ddpmseg.features.noise_draws import NoiseDraw, extra_draws

CONFIG = "experiments/celebamask64/ddpm.json"
SEED, K, STEPS, BLOCKS = 3, 3, [50, 400], [4, 6]
# Float64 maps summed in the same order on both sides; the tolerance only allows for a different
# summation order (float64 rounding, ~1e-16 relative per operation), far below any real difference
# between draws (the draws' maps differ by O(1) relative, checked below).
RTOL = 1e-12


def ddpm(checkpoint, **keys) -> FeatureExtractorDDPM:
    cfg = load_config(CONFIG, {"model_path": str(checkpoint), "steps": STEPS, "blocks": BLOCKS, "seed": SEED,
                               "dim": [64, 64, 1], **keys})
    ext = FeatureExtractorDDPM.from_config(cfg, resolve_model_flags(cfg), torch.device("cpu"), lambda m: None)
    ext.model.double()  # the torso follows its convolutions' dtype; the timestep embedding is cast to it
    return ext


def image(size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1


def assert_mean_of(got: list[torch.Tensor], singles: list[list[torch.Tensor]]) -> None:
    assert len(got) == len(singles[0]) and all(len(s) == len(got) for s in singles)
    for j, a in enumerate(got):
        maps = [s[j] for s in singles]
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, sum(maps) / len(maps), rtol=RTOL, atol=RTOL * float(a.abs().max()))
        # the draws really differ, so the mean is no single draw
        assert (maps[0] - maps[1]).abs().max() > 1e-3 * maps[0].abs().max()


@pytest.mark.parametrize("share_noise", [True, False])
def test_ddpm_k_draws_are_the_mean_of_k_single_draw_extractions(tiny64_checkpoint, share_noise):
    x = image(64)
    got = ddpm(tiny64_checkpoint, noise_draws=K, share_noise=share_noise)(x)
    one = ddpm(tiny64_checkpoint, share_noise=share_noise)
    if share_noise:  # draw 0: the seed's shared noise; draw k: the noise_draw stream's tensor k
        draws = [shared_noise(SEED, 64)] + [d.shared for d in extra_draws(SEED, K, (1, 3, 64, 64))]
        singles = [one(x, noise=n) for n in draws]
    else:  # draw 0: the feature_noise stream's first call; draw k: noise_draw stream k's first call
        generators = [stream_generator("feature_noise", SEED)] + [stream_generator("noise_draw", SEED, k)
                                                                   for k in range(1, K)]
        singles = [FeatureExtractorDDPM(steps=STEPS, blocks=BLOCKS, model=one.model, diffusion=one.diffusion,
                                        generator=g)(x) for g in generators]
    assert_mean_of(got, singles)


def test_ddpm_one_draw_is_the_published_computation_bit_for_bit(tiny64_checkpoint):
    """K = 1 (the default) against the original's computation written out: q_sample with the seed's
    shared noise, one forward, the hooked decoder blocks' outputs; the same float32 operations, so equal."""
    ext = ddpm(tiny64_checkpoint)
    assert ext.extra_draws == []
    ext.model.float()
    x = image(64).float()
    got = ext(x)
    model, diffusion = ext.model, ext.diffusion
    acts = []
    hooks = [model.output_blocks[b].register_forward_hook(lambda m, i, o: acts.append(o)) for b in BLOCKS]
    ext._active = False  # the extractor's hooks stay idle; ours record the full forward
    S, n = len(STEPS), len(x)
    tt = torch.tensor(STEPS).repeat_interleave(n)
    noise = shared_noise(SEED, 64).expand_as(x).repeat(S, 1, 1, 1)
    with torch.no_grad():
        model(diffusion.q_sample(x.repeat(S, 1, 1, 1), tt, noise=noise), diffusion._scale_timesteps(tt))
    for h in hooks:
        h.remove()
    want = [a[s * n:(s + 1) * n] for s in range(S) for a in acts]
    assert len(got) == len(want) == S * len(BLOCKS)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_diffusers_k_draws_are_the_mean_of_k_single_draw_extractions(tmp_path):
    pytest.importorskip("diffusers")
    from ddpmseg.features.diffusers_ddpm import DiffusersDDPM

    folder = write_tiny_ddpm_folder(tmp_path / "ddpm", sample_size=16)

    def build(**keys):
        cfg = backbone_config(model_type="diffusers", model_path=str(folder), steps=[100, 600], blocks=[0, 1],
                              seed=SEED, **keys)
        DiffusersDDPM.check_config(cfg, "config")
        bb = DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
        bb.unet.double()
        return bb

    x = image(16)
    got = build(noise_draws=K)(x)
    one = build()
    draws = [shared_noise(SEED, 16)] + [d.shared for d in extra_draws(SEED, K, (1, 3, 16, 16))]
    assert_mean_of(got, [one(x, n) for n in draws])
    assert all(torch.equal(a, b) for a, b in zip(one(x), one(x, shared_noise(SEED, 16))))  # draw 0 as before


def test_stable_diffusion_k_draws_are_the_mean_of_k_single_draw_extractions(tmp_path):
    pytest.importorskip("diffusers")
    from ddpmseg.features.stable_diffusion import StableDiffusion

    folder = write_tiny_sd_pipeline(tmp_path / "sd")

    def build(**keys):
        cfg = backbone_config(model_type="stable_diffusion", model_path=str(folder), exp_dir=str(tmp_path),
                              dim=[32, 32, 0], steps=[261], blocks=[0, 1], seed=SEED, **keys)
        StableDiffusion.check_config(cfg, "config")
        bb = StableDiffusion.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
        bb.unet.double(), bb.vae.double()
        return bb

    x = image(32)
    got = build(noise_draws=K)(x)
    one = build()
    latent = tuple(one.shared_noise.shape)
    singles = []
    for noise in [one.shared_noise] + [d.shared for d in extra_draws(SEED, K, latent)]:
        one.shared_noise = noise  # the latent noise every call of this backbone uses
        singles.append(one(x))
    assert_mean_of(got, singles)


def test_draws_come_from_the_noise_draw_stream():
    """Draw k >= 1 is stream noise_draw's k-th generator: its tensor under share_noise, else its generator."""
    shared, fresh = extra_draws(SEED, 3, (1, 3, 4, 4)), extra_draws(SEED, 3, None)
    assert len(shared) == len(fresh) == 2 and extra_draws(SEED, 1, (1, 3, 4, 4)) == []
    for k, (s, f) in enumerate(zip(shared, fresh), start=1):
        want = torch.randn(1, 3, 4, 4, generator=stream_generator("noise_draw", SEED, k))
        assert torch.equal(s.shared, want) and f.shared is None
        assert torch.equal(torch.randn(1, 3, 4, 4, generator=f.generator), want)
    assert not torch.equal(shared[0].shared, shared[1].shared)
    assert isinstance(shared[0], NoiseDraw)


@pytest.mark.parametrize("model_type", ["rgb_xy", "mae", "swav", "dinov2"])
def test_backbones_without_noise_refuse_more_than_one_draw(model_type):
    keys = {"model_type": model_type, "model_path": "", "random_weights": model_type != "rgb_xy", "steps": [],
            "blocks": [11] if model_type == "dinov2" else [], "input_activations": model_type == "swav"}
    assert load_config(CONFIG, {**keys, "noise_draws": 1})["noise_draws"] == 1
    with pytest.raises(ConfigError, match=f"model_type '{model_type}' adds no noise, so there are no noise draws "
                                          "to average: set \"noise_draws\": 1 \\(got 2\\)"):
        load_config(CONFIG, {**keys, "noise_draws": 2})


def test_a_run_saved_before_the_keys_existed_resumes_and_another_count_is_refused(tmp_path):
    import json

    from ddpmseg.classifier.interpreter import refuse_changed_config

    cfg = load_config(CONFIG)
    old = {k: v for k, v in cfg.items() if k not in ("noise_draws", "class_weighting")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    refuse_changed_config(str(tmp_path), cfg)  # the defaults are what that run used
    (tmp_path / "config.json").write_text(json.dumps({**old, "noise_draws": 2}))
    with pytest.raises(ConfigError, match="noise_draws differ \\(saved -> now: noise_draws: 2 -> 1\\)"):
        refuse_changed_config(str(tmp_path), cfg)
