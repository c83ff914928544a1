"""model_type "diffusers": a tiny random UNet2DModel + DDPMScheduler written with save_pretrained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import (TINY_DIFFUSERS_UNET, backbone_config, run_backbone_end_to_end, shapes64,
                      write_tiny_ddpm_folder)
from ddpmseg.common.config import ConfigError
from ddpmseg.features.ddpm import shared_noise
from ddpmseg.features.diffusers_ddpm import DiffusersDDPM
from ddpmseg.features.registry import REGISTRY
from ddpmseg.features.unet_hooks import hookable_layers
from guided_diffusion.gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, \
    get_named_beta_schedule

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_ddpm_folder(tmp_path_factory.mktemp("ddpm_tiny"), sample_size=16)


def build(folder, **keys):
    cfg = backbone_config(model_type="diffusers", model_path=str(folder), **keys)
    DiffusersDDPM.check_config(cfg, "config")
    return DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)


def manual_maps(unet, x_t, t):
    """UNet2DModel.forward written out with the library's own modules, keeping every up-block layer."""
    emb = unet.time_embedding(unet.time_proj(t).to(x_t.dtype))
    h = unet.conv_in(x_t)
    skips = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb)
    maps = {}
    for k, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h, skips[-1]], dim=1), emb)
            skips = skips[:-1]
            maps[f"up_blocks.{k}.resnets.{j}"] = h
            if getattr(block, "attentions", None):
                h = block.attentions[j](h)
                maps[f"up_blocks.{k}.attentions.{j}"] = h
        if block.upsamplers is not None:
            for up in block.upsamplers:
                h = up(h)
        maps[f"up_blocks.{k}"] = h
    return maps


def test_registered():
    assert REGISTRY["diffusers"] is DiffusersDDPM and DiffusersDDPM.can_sample and DiffusersDDPM.uses_timesteps
    assert DiffusersDDPM.samples_with_own_scheduler


def test_hooked_maps_equal_a_manual_forward_in_float64(folder):
    names = ["up_blocks.0.resnets.1", "up_blocks.0.attentions.0", "up_blocks.1.resnets.0"]
    bb = build(folder, steps=[10, 600], blocks=[1, 0], hook_layers=names)
    bb.unet.double()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    got = bb(x0, noise)

    abar = torch.as_tensor(bb.scheduler.alphas_cumprod, dtype=torch.float64)
    want = []
    for t in (10, 600):
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise
        maps = manual_maps(bb.unet, x_t, torch.full((2,), t))
        want += [maps[n] for n in ("up_blocks.0.attentions.0", "up_blocks.0.resnets.1", "up_blocks.0",
                                   "up_blocks.1.resnets.0", "up_blocks.1")]
    names_out = [layer.name for layer in bb.layers()]
    assert names_out[:5] == ["step 10, up_blocks.0.attentions.0", "step 10, up_blocks.0.resnets.1",
                             "step 10, up_blocks.0", "step 10, up_blocks.1.resnets.0", "step 10, up_blocks.1"]
    assert len(got) == len(want) == len(names_out) == 10
    for layer, a, b in zip(bb.layers(), got, want):
        # Same modules, same float64 operations in the same order: equal up to summation order.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=layer.name)
        assert a.shape[1] == layer.channels and 16 // a.shape[-1] == layer.stride


def test_add_noise_is_q_sample_of_the_linear_schedule_to_float32_rounding(folder):
    scheduler = build(folder, steps=[1], blocks=[0]).scheduler
    ours = GaussianDiffusion(betas=get_named_beta_schedule("linear", 1000), model_mean_type=ModelMeanType.EPSILON,
                             model_var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 250, 500, 900, 999])
    diff = (scheduler.add_noise(x0, eps, t) - ours.q_sample(x0, t, noise=eps)).abs()
    # diffusers builds betas and their cumulative product in float32 (1000 roundings of 2^-24
    # relative each, worst case), guided-diffusion in float64: the coefficients differ by at most
    # 1000 * 2^-24 relative, so x_t by that times |x0| + |eps|.
    bound = 1000 * 2.0 ** -24 * (x0.abs() + eps.abs())
    assert (diff <= bound).all(), float((diff / bound).max())
    assert diff.max() > 0  # the two really are computed apart (float32 vs float64)


def test_layer_catalogue_and_candidate_grid(folder):
    bb = build(folder, steps=[50], blocks=[0, 1])
    assert [(l.name, l.channels, l.stride) for l in bb.layers()] == [("step 50, up_blocks.0", 16, 1),
                                                                    ("step 50, up_blocks.1", 8, 1)]
    assert [n for n, _, _ in hookable_layers(bb.unet)][:3] == ["up_blocks.0.resnets.0", "up_blocks.0.attentions.0",
                                                                "up_blocks.0.resnets.1"]
    cfg = backbone_config(model_type="diffusers", model_path=str(folder))
    steps, blocks = DiffusersDDPM.candidate_grid(cfg, {})
    assert blocks == [0, 1] and len(steps) >= 5 and max(steps) < 1000
    assert DiffusersDDPM.candidate_grid(cfg, {}, [300, 20], [1]) == ([20, 300], [1])
    with pytest.raises(ConfigError, match="up_blocks 0..1"):
        DiffusersDDPM.candidate_grid(cfg, {}, None, [2])
    with pytest.raises(ConfigError, match="0..999"):
        DiffusersDDPM.candidate_grid(cfg, {}, [1000], None)
    with pytest.raises(ConfigError, match="drop \"hook_layers\""):
        DiffusersDDPM.candidate_grid({**cfg, "hook_layers": ["up_blocks.0.resnets.0"]}, {})


def test_noise_is_the_seeds_shared_noise_or_fresh_from_the_feature_noise_stream(folder):
    img = torch.zeros(2, 3, 16, 16)
    shared = build(folder, steps=[300], blocks=[1], seed=4)(img)[0]
    assert torch.equal(shared, build(folder, steps=[300], blocks=[1])(img, shared_noise(4, 16))[0])
    assert torch.equal(shared[0], shared[1])  # the same image under the same noise
    fresh = build(folder, steps=[300], blocks=[1], share_noise=False)
    first = fresh(img)[0]
    assert not torch.equal(first[0], first[1])  # each image its own draw
    assert torch.equal(first, build(folder, steps=[300], blocks=[1], share_noise=False)(img)[0])  # seeded
    assert not torch.equal(first, fresh(img)[0])  # and fresh on every call


@pytest.mark.parametrize("keys, message", [
    (dict(blocks=[2]), "no layer up_blocks.2"),
    (dict(blocks=[], hook_layers=["up_blocks.1.attentions.0"]), "no layer up_blocks.1.attentions.0"),
    (dict(blocks=[0, 0]), "listed twice"),
    (dict(blocks=[0], dim=[15, 15, 0]), "multiple of 2"),
    (dict(blocks=[0], steps=[]), "needs timesteps"),
    (dict(blocks=[0], steps=[1000]), "within 0..999"),
    (dict(blocks=[0], input_size=70), "'diffusers' does not read 'input_size': drop it"),
])
def test_bad_layer_or_size_is_one_clear_error(folder, keys, message):
    cfg = backbone_config(model_type="diffusers", model_path=str(folder), **{"steps": [5], **keys})
    with pytest.raises(ConfigError, match=message):
        DiffusersDDPM.check_config(cfg, "config")


def test_hub_id_offline_fails_at_once_saying_how_to_get_the_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = backbone_config(model_type="diffusers", model_path="google/ddpm-ema-cat-256", blocks=[0], steps=[5])
    DiffusersDDPM.check_config(cfg, "config")  # validation never downloads: a config may name a folder to fetch
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE.*checkpoints/diffusers/download_checkpoint.sh"):
        DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
    cfg["model_path"] = "no/such/folder"
    with pytest.raises(ConfigError, match="not a diffusers UNet2DModel folder"):
        DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)


def test_train_interpreter_offline_is_one_error_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    import train_interpreter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = shapes64() / "real"
    code = train_interpreter.main(["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(tmp_path / "exp"),
                                   "--training_path", str(data / "train"), "--testing_path", str(data / "test"),
                                   "--set", "model_type=diffusers", "--set", "model_path=google/ddpm-ema-celebahq-256",
                                   "--set", "blocks=[1]", "--set", "dim=[64,64,512]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "bash checkpoints/diffusers/download_checkpoint.sh" in err[0]
    assert not (tmp_path / "exp").exists()


def test_sample_is_diffusers_ddpm_pipeline_with_the_same_generator(folder):
    bb = build(folder, steps=[5], blocks=[0])
    ours = bb.sample(2, torch.Generator().manual_seed(3), num_inference_steps=4)
    pipe = diffusers.DDPMPipeline(unet=bb.unet, scheduler=bb.scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4,
                  output_type="np").images  # [N, H, W, 3] in [0, 1]
    # The same float32 operations; the pipeline maps [-1, 1] to [0, 1] (x / 2 + 0.5), exact in binary.
    np.testing.assert_allclose((ours.permute(0, 2, 3, 1).numpy() + 1) / 2, theirs, rtol=0, atol=1e-6)
    assert ours.shape == (2, 3, 16, 16) and ours.abs().max() <= 1


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    cfg = backbone_config(model_type="diffusers", random_weights=True, model_flags=dict(TINY_DIFFUSERS_UNET),
                          blocks=[0], steps=[5])
    state = torch.random.get_rng_state()
    a = DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = DiffusersDDPM.from_config({**cfg, "seed": 1}, {}, torch.device("cpu"), log=lambda s: None)
    wa, wb = a.unet.conv_in.weight, b.unet.conv_in.weight
    assert not torch.equal(wa, wb)
    assert torch.equal(wa, DiffusersDDPM.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None).unet.conv_in.weight)


def test_train_segment_and_select_end_to_end(folder, tmp_path):
    run = run_backbone_end_to_end(tmp_path, ["model_type=diffusers", f"model_path={folder}", "steps=[50]",
                                             "blocks=[0,1]", "dim=[64,64,24]"],
                                  ["--steps", "50", "250", "--blocks", "0", "1"])
    assert json.loads((run / "config.json").read_text())["model_type"] == "diffusers"
