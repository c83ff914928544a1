"""Parity of our U-Net with the official one: outputs and hooked decoder activations."""
import pytest
import torch

from conftest import load_fixture, manifest, on_parity_grid
from guided_diffusion.script_util import create_model, create_model_and_diffusion
from guided_diffusion.unet import AttentionBlock, QKVAttention, QKVAttentionLegacy

TOL = 1e-4


@pytest.mark.parametrize("name", ["tiny256", "tiny64", "tiny64_heads"])
def test_forward_and_hooked_activations_match_official(name, tiny_model_and_diffusion):
    fx = load_fixture(f"{name}_forward.pt")
    model, _ = tiny_model_and_diffusion(name)
    acts = {}
    for i in fx["hooked_blocks"]:
        model.output_blocks[i].register_forward_hook(
            lambda mod, inp, out, i=i: acts.__setitem__(i, out.detach().float()))
    with torch.no_grad():
        out = model(fx["x"], fx["t"])
    assert out.shape == fx["out"].shape
    assert (out - fx["out"]).abs().max() <= TOL
    for i in fx["hooked_blocks"]:
        # the fixture keeps every channel of each map at the parity grid's pixels (fixtures/README.md)
        assert list(acts[i].shape) == fx["activation_shapes"][i], f"block {i}"
        assert (on_parity_grid(acts[i]) - fx["activations"][i]).abs().max() <= TOL, f"block {i}"


@pytest.mark.parametrize("name", ["lsun_256", "ffhq_256", "tiny256", "tiny64", "tiny64_heads"])
def test_state_dict_layout_matches_official_without_allocating(name):
    """Key names, order and shapes of the real 256 px checkpoints (2.2 GB), built on meta."""
    m = manifest(name)
    with torch.device("meta"):
        model, _ = create_model_and_diffusion(**m["flags"])
    sd = model.state_dict()
    assert list(sd) == list(m["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == m["keys"]
    if "n_params" in m:
        assert sum(v.numel() for v in sd.values()) == m["n_params"] == 552_814_086
        assert len(sd) == 566
    # Strict loading of a checkpoint with exactly this layout works (no data is allocated).
    model.load_state_dict({k: torch.empty(s, device="meta") for k, s in m["keys"].items()},
                          strict=True, assign=True)


def test_lsun_block_channels_and_resolutions():
    m = manifest("lsun_256")
    with torch.device("meta"):
        model, _ = create_model_and_diffusion(**m["flags"])
    chans = [blk[0].out_channels for blk in model.output_blocks]
    assert chans == m["output_block_channels"]
    assert sum(chans[i] for i in (5, 6, 7, 8, 12)) == m["feature_dim_blocks_5_6_7_8_12"] == 2816


def test_legacy_and_new_attention_packings_differ():
    """Loading legacy weights with the new packing would silently give wrong outputs."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 64, 10)
    legacy, new = QKVAttentionLegacy(4)(qkv), QKVAttention(4)(qkv)
    assert legacy.shape == new.shape == (2, 64, 10)
    assert (legacy - new).abs().max() > 0.1
    # With one head the head-major and q|k|v-major layouts coincide.
    assert torch.allclose(QKVAttentionLegacy(1)(qkv), QKVAttention(1)(qkv), atol=1e-6)


def test_attention_heads_from_head_channels():
    assert AttentionBlock(512, num_heads=4, num_head_channels=64).num_heads == 8
    assert AttentionBlock(64, num_heads=2).num_heads == 2


def test_fp16_conversion_casts_torso_convs_only(tiny_model_and_diffusion):
    model, _ = tiny_model_and_diffusion("tiny64")
    model.convert_to_fp16()
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert dtypes["input_blocks.0.0.weight"] == torch.float16
    assert dtypes["output_blocks.0.1.qkv.weight"] == torch.float16
    assert dtypes["input_blocks.1.0.in_layers.0.weight"] == torch.float32  # GroupNorm
    assert dtypes["input_blocks.1.0.emb_layers.1.weight"] == torch.float32  # emb Linear
    assert dtypes["time_embed.0.weight"] == torch.float32
    assert dtypes["out.2.weight"] == torch.float32
    model.convert_to_fp32()
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_fp16_conversion_alone_makes_a_runnable_model(tiny_model_and_diffusion):
    """convert_to_fp16 on a model built without use_fp16 (what a benchmark or a user does) also
    switches the torso's input dtype; the output stays float32 and near the float32 model's."""
    model, _ = tiny_model_and_diffusion("tiny64")
    x, t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.tensor([50])
    with torch.no_grad():
        ref = model(x, t)
        model.convert_to_fp16()
        out = model(x, t)
    assert model.dtype == torch.float16 and out.dtype == torch.float32
    # float16 keeps 11 significant bits: relative error well under 1% through the tiny U-Net.
    assert (out - ref).abs().max() <= 1e-2 * ref.abs().max()
    model.convert_to_fp32()
    assert model.dtype == torch.float32


def test_class_conditional_requires_labels():
    model = create_model(32, 32, 1, channel_mult="1,2", class_cond=True, attention_resolutions="16")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    assert model(x, t, y=torch.tensor([7])).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)


def test_gradient_checkpointing_does_not_change_forward(tiny_model_and_diffusion):
    model, _ = tiny_model_and_diffusion("tiny64", use_checkpoint=True, dropout=0.0)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([10])
    with torch.no_grad():
        ref = model(x, t)
    model.train()
    out = model(x, t)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert model.input_blocks[1][0].in_layers[2].weight.grad is not None
