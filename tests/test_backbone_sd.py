"""model_type "stable_diffusion": a tiny random pipeline folder (U-Net, VAE, CLIP text encoder and a
tokenizer whose vocabulary the test writes) built with save_pretrained."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import backbone_config, run_backbone_end_to_end, write_tiny_sd_pipeline
from ddpmseg.common.config import ConfigError
from ddpmseg.features.registry import REGISTRY
from ddpmseg.features.stable_diffusion import StableDiffusion, embedding_path

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a photo of a face"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_sd_pipeline(tmp_path_factory.mktemp("sd_tiny"))


def config(folder, exp_dir, **keys):
    return backbone_config(model_type="stable_diffusion", model_path=str(folder), exp_dir=str(exp_dir),
                           **{"dim": [32, 32, 0], "steps": [261], "blocks": [0, 1], "prompt": PROMPT, **keys})


def build(cfg):
    StableDiffusion.check_config(cfg, "config")
    return StableDiffusion.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)


def manual_maps(unet, z_t, t, context):
    """UNet2DConditionModel.forward written out with the library's own modules, keeping every up-block layer."""
    emb = unet.time_embedding(unet.time_proj(t).to(z_t.dtype))
    h = unet.conv_in(z_t)
    skips = (h,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    maps = {}
    for k, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h, skips[-1]], dim=1), emb)
            skips = skips[:-1]
            maps[f"up_blocks.{k}.resnets.{j}"] = h
            if getattr(block, "attentions", None):
                h = block.attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
                maps[f"up_blocks.{k}.attentions.{j}"] = h
        for up in block.upsamplers or []:
            h = up(h)
        maps[f"up_blocks.{k}"] = h
    return maps


def test_registered():
    assert REGISTRY["stable_diffusion"] is StableDiffusion and StableDiffusion.uses_timesteps


def test_hooked_maps_equal_a_manual_forward_in_float64(folder, tmp_path):
    cfg = config(folder, tmp_path, steps=[10, 261], hook_layers=["up_blocks.1.resnets.0", "up_blocks.1.attentions.1"])
    bb = build(cfg)
    bb.unet.double(), bb.vae.double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    got = bb(x)

    # The prompt through the library's tokenizer and text encoder, as the pipeline does it.
    tok = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0] == 0 and ids[0, 1] == tok.convert_tokens_to_ids("a</w>")
    encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").double()
    context = encoder(ids)[0].expand(4, -1, -1)
    torch.testing.assert_close(bb.embedding.double(), encoder(ids)[0], rtol=0, atol=1e-6)  # saved in float32

    vae = bb.vae
    moments = vae.quant_conv(vae.encoder(x))
    z0 = moments[:, :4] * vae.config.scaling_factor  # the posterior's mean (the first half of its moments)
    abar = bb.scheduler.alphas_cumprod.double()
    eps = bb.shared_noise.double()
    t = torch.tensor([10, 10, 261, 261])
    z_t = abar[t].sqrt().view(-1, 1, 1, 1) * z0.repeat(2, 1, 1, 1) + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
    maps = manual_maps(bb.unet, z_t, t, bb.embedding.double().expand(4, -1, -1))
    order = ["up_blocks.0", "up_blocks.1.resnets.0", "up_blocks.1.attentions.1", "up_blocks.1"]
    want = [maps[n][s * 2:(s + 1) * 2] for s in range(2) for n in order]
    assert [l.name for l in bb.layers()][:4] == [f"step 10, {n}" for n in order]
    for layer, a, b in zip(bb.layers(), got, want):
        # The same float64 operations in the same order (the embedding is the saved float32 one on both sides).
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=layer.name)
        assert a.shape[1] == layer.channels and 32 // a.shape[-1] == layer.stride
    # and with the float64 text encoder's own context, to the float32 rounding of the saved embedding
    torch.testing.assert_close(manual_maps(bb.unet, z_t, t, context)["up_blocks.1"], maps["up_blocks.1"],
                               rtol=0, atol=1e-4)


def test_prompt_embedding_is_saved_once_and_read_without_the_text_encoder(folder, tmp_path):
    cfg = config(folder, tmp_path / "exp")
    (tmp_path / "exp").mkdir()
    first = build(cfg)
    path = embedding_path(cfg, str(folder))
    assert path.startswith(str(tmp_path / "exp")) and not hasattr(first, "text_encoder")
    x = torch.zeros(1, 3, 32, 32)
    # A copy of the pipeline without its text encoder and tokenizer still builds from the saved file.
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    again = build({**cfg, "model_path": str(bare), "prompt_embedding": path})
    for a, b in zip(first(x), again(x)):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="holds the embedding of the prompt 'a photo of a face'"):
        build({**cfg, "model_path": str(bare), "prompt_embedding": path, "prompt": "a horse"})
    with pytest.raises(ConfigError, match="no saved prompt embedding"):
        StableDiffusion.check_config({**cfg, "model_path": str(bare), "prompt": "a horse"}, "config")


def test_the_prompt_changes_the_features(folder, tmp_path):
    x = torch.zeros(1, 3, 32, 32)
    a = build(config(folder, tmp_path))(x)[-1]
    b = build(config(folder, tmp_path, prompt="a cat"))(x)[-1]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("keys, message", [
    (dict(dim=[36, 36, 0]), "multiple of 8"),
    (dict(steps=[]), "needs timesteps"),
    (dict(steps=[1000]), "0..999"),
    (dict(blocks=[2]), "no layer up_blocks.2"),
    (dict(random_weights=True), "no random-weights build"),
    (dict(dinov2_arch="vitb14"), "'stable_diffusion' does not read 'dinov2_arch': drop it"),
    (dict(prompt_embedding="/no/such/file.safetensors"), "prompt_embedding /no/such/file.safetensors not found"),
])
def test_bad_config_is_one_clear_error(folder, tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message):
        StableDiffusion.check_config(config(folder, tmp_path, **keys), "config")


def test_a_folder_without_the_pipeline_parts_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ConfigError, match="lacks vae/, scheduler/.*download_checkpoint.sh"):
        StableDiffusion.check_config(config(tmp_path, tmp_path), "config")
    missing = config(tmp_path / "sd15", tmp_path)
    StableDiffusion.check_config(missing, "config")  # a folder still to download validates (no download there)
    with pytest.raises(ConfigError, match="not a Stable Diffusion pipeline folder.*download_checkpoint.sh"):
        StableDiffusion.from_config(missing, {}, torch.device("cpu"), log=lambda s: None)


def test_train_segment_and_select_end_to_end(folder, tmp_path):
    run = run_backbone_end_to_end(tmp_path, ["model_type=stable_diffusion", f"model_path={folder}", "steps=[261]",
                                             "blocks=[0,1]", "dim=[64,64,24]", f"prompt={PROMPT}"],
                                  ["--steps", "50", "261", "--blocks", "0", "1"])
    # the embedding was computed once, by the training run, and read back by segment.py and the selection
    assert len(list((tmp_path / "exp").glob("prompt_embedding_*.safetensors"))) == 1
    assert json.loads((run / "config.json").read_text())["prompt"] == PROMPT
