"""model_type "dinov2": both checkpoint layouts load strictly, and the maps are timm's own blocks."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import backbone_config, run_backbone_end_to_end
from ddpmseg.common.config import ConfigError
from ddpmseg.features.dinov2 import ARCHS, DINOv2, build_dinov2, official_to_timm
from ddpmseg.features.registry import REGISTRY
from guided_diffusion.checkpoint import CheckpointError

GRID = 4  # a 4 x 4 position grid keeps the files small; the blocks are ViT-S/14's own


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_dinov2("vits14", GRID).state_dict()


def hub_layout(sd):
    """timm's state dict written back as torch.hub's file holds it (mask_token added)."""
    return {**sd, "mask_token": torch.randn(1, sd["cls_token"].shape[-1])}


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("dinov2")
    torch.save(hub_layout(weights), out / "dinov2_vits14_pretrain.pth")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    return out


def build(path, **keys):
    cfg = backbone_config(model_type="dinov2", model_path=str(path), **{"steps": [], "blocks": [11, 2],
                                                                      "dim": [32, 32, 0], **keys})
    DINOv2.check_config(cfg, "config")
    return DINOv2.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)


def test_registered():
    assert REGISTRY["dinov2"] is DINOv2 and not DINOv2.uses_timesteps and not DINOv2.can_sample


def test_both_layouts_load_strictly_with_the_same_weights(files, weights):
    for name in ("dinov2_vits14_pretrain.pth", "model.safetensors"):
        sd = build(files / name).model.state_dict()
        assert sd.keys() == weights.keys()
        assert all(torch.equal(sd[k], weights[k]) for k in weights), name


@pytest.mark.parametrize("layout", ["hub", "timm"])
def test_a_wrong_key_is_named(tmp_path, weights, layout):
    sd = dict(weights)
    sd["blocks.3.attn.qkv_w"] = sd.pop("blocks.3.attn.qkv.weight")
    path = tmp_path / "bad.pth"
    torch.save(hub_layout(sd) if layout == "hub" else sd, path)
    with pytest.raises(CheckpointError) as e:
        build(path)
    msg = str(e.value)
    assert "missing from checkpoint (1): blocks.3.attn.qkv.weight" in msg
    assert "unexpected in checkpoint (1): blocks.3.attn.qkv_w" in msg
    assert ("torch.hub layout" if layout == "hub" else "timm layout") in msg


def test_a_checkpoint_of_another_width_says_which_arch(tmp_path, weights):
    path = tmp_path / "small.pth"
    torch.save(hub_layout(weights), path)
    with pytest.raises(CheckpointError, match='set "dinov2_arch": "vits14"'):
        build(path, dinov2_arch="vitb14", blocks=[0])


def test_giant_hub_keys_become_timm_keys():
    # The giant's SwiGLU is w12 / w3 in the torch.hub file and fc1 / fc2 in timm: the key layouts
    # only, on a weightless (meta) model.
    with torch.device("meta"):
        timm_keys = list(build_dinov2("vitg14").state_dict())
    hub = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): None for k in timm_keys}
    hub["mask_token"] = None
    assert "blocks.39.mlp.w12.weight" in hub
    assert list(official_to_timm(hub)) == timm_keys


def test_maps_equal_a_manual_forward_through_timm_in_float64(files):
    bb = build(files / "model.safetensors", input_size=42)
    bb.model.double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    got = bb(x)

    m = bb.model
    y = F.interpolate((x + 1) / 2, size=(42, 42), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    tokens = m.norm_pre(m._pos_embed(m.patch_embed((y - mean) / std)))
    want = []
    for i, block in enumerate(m.blocks):
        tokens = block(tokens)
        if i in (2, 11):
            want.append(m.norm(tokens)[:, 1:].reshape(2, 3, 3, -1).permute(0, 3, 1, 2))
    assert [l.name for l in bb.layers()] == ["blocks.2", "blocks.11"]
    for layer, a, b in zip(bb.layers(), got, want):
        # The same float64 operations in the same order (the resize is linear, so it commutes
        # with the [-1, 1] -> [0, 1] map up to rounding).
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=layer.name)
        assert a.shape == (2, 384, 3, 3) and layer.channels == 384 and layer.stride == round(32 * 14 / 42)


def test_default_input_size_rounds_the_resolution_up_to_the_patch(files):
    bb = build(files / "model.safetensors")
    assert bb.side == 42 and bb(torch.zeros(1, 3, 32, 32))[0].shape == (1, 384, 3, 3)


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    cfg = backbone_config(model_type="dinov2", random_weights=True, steps=[], blocks=[0], dim=[28, 28, 0])
    state = torch.random.get_rng_state()
    a = DINOv2.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = DINOv2.from_config({**cfg, "seed": 1}, {}, torch.device("cpu"), log=lambda s: None)
    again = DINOv2.from_config(cfg, {}, torch.device("cpu"), log=lambda s: None)
    w = "blocks.0.attn.qkv.weight"
    assert torch.equal(a.model.state_dict()[w], again.model.state_dict()[w])
    assert not torch.equal(a.model.state_dict()[w], b.model.state_dict()[w])


@pytest.mark.parametrize("keys, message", [
    (dict(steps=[50]), "adds no noise"),
    (dict(blocks=[12]), "blocks 0..11"),
    (dict(blocks=[]), "blocks 0..11"),
    (dict(input_size=50), "multiple of DINOv2's patch 14"),
    (dict(dinov2_arch="vit_small"), "'dinov2_arch' must be one of"),
    (dict(hook_layers=["blocks.0"], prompt="a face"), "'dinov2' does not read 'hook_layers', 'prompt': drop them"),
])
def test_bad_config_is_one_clear_error(keys, message):
    cfg = backbone_config(model_type="dinov2", random_weights=True, **{"steps": [], "blocks": [0], **keys})
    with pytest.raises(ConfigError, match=message):
        DINOv2.check_config(cfg, "config")


def test_missing_checkpoint_says_how_to_download(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoints/dinov2/download_checkpoint.sh"):
        build(tmp_path / "dinov2_vits14_pretrain.pth")


def test_candidate_grid_is_every_block_or_the_given_ones():
    cfg = backbone_config(model_type="dinov2", random_weights=True, steps=[], blocks=[0], dinov2_arch="vitl14")
    assert DINOv2.candidate_grid(cfg, {}) == ([], list(range(24)))
    assert DINOv2.candidate_grid(cfg, {}, None, [23, 5]) == ([], [5, 23])
    with pytest.raises(ConfigError, match="blocks 0..23"):
        DINOv2.candidate_grid(cfg, {}, None, [24])
    with pytest.raises(ConfigError, match="no steps to select"):
        DINOv2.candidate_grid(cfg, {}, [50], None)


def test_every_arch_has_its_depth_and_width():
    for arch, (_, depth, width) in ARCHS.items():
        with torch.device("meta"):
            m = build_dinov2(arch)
        assert (len(m.blocks), m.embed_dim) == (depth, width), arch


def test_train_segment_and_select_end_to_end(files, tmp_path):
    run = run_backbone_end_to_end(tmp_path, ["model_type=dinov2", f"model_path={files / 'model.safetensors'}",
                                             "steps=[]", "blocks=[10,11]", "dim=[64,64,768]"],
                                  ["--blocks", "10", "11"])
    assert run.name == "10_11" and json.loads((run / "config.json").read_text())["model_type"] == "dinov2"
