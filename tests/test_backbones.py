"""The MAE and SwAV comparison backbones: checkpoint layouts, features, checkpoint errors."""
import argparse
import fractions
import json

import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, load_fixture, rule_weights
from ddpmseg.common.config import ConfigError
from ddpmseg.features.backbones import (IMAGENET_MEAN, IMAGENET_STD, SWAV_HOOKED_BLOCKS, MaskedAutoencoderViT,
                                        load_mae_checkpoint, load_swav_checkpoint, mae_vit_large_patch8,
                                        sincos_pos_embed_2d, swav_block_inputs, swav_resnet50)
from ddpmseg.features.mae import FeatureExtractorMAE
from ddpmseg.features.registry import backbone_class
from ddpmseg.features.swav import FeatureExtractorSwAV
from guided_diffusion.checkpoint import CheckpointError


def baseline(name: str) -> dict:
    with open(FIXTURES / "baseline_manifests.json") as f:
        return json.load(f)[name]


def layout(model: nn.Module) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def mae_tiny() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**baseline("mae_tiny")["ctor"])


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    return swav_resnet50(1).eval()


@pytest.fixture(scope="module")
def rn50w2():
    torch.manual_seed(0)
    return swav_resnet50(2).eval()


# --- architectures ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,build", [
    ("mae_vitl8_256", lambda: mae_vit_large_patch8(256)),
    ("mae_tiny", mae_tiny),
    ("swav_rn50", lambda: swav_resnet50(1)),
    ("swav_rn50w2", lambda: swav_resnet50(2)),
])
def test_state_dict_layout_equals_published_checkpoint(name, build):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build()
    assert layout(model) == baseline(name)["keys"]


def test_mae_settings_without_parameters_match_manifest():
    """Heads and LayerNorm eps leave no trace in the key shapes; check them directly."""
    for name, build in (("mae_vitl8_256", lambda: mae_vit_large_patch8(256)), ("mae_tiny", mae_tiny)):
        ctor = baseline(name)["ctor"]
        with torch.device("meta"):
            model = build()
        assert model.blocks[0].attn.num_heads == ctor["num_heads"]
        assert model.decoder_blocks[0].attn.num_heads == ctor["decoder_num_heads"]
        assert model.norm.eps == model.blocks[0].norm1.eps == ctor["layernorm_eps"]
        assert model.img_size == ctor["img_size"] and model.norm_pix_loss == ctor["norm_pix_loss"]


# --- MAE features ----------------------------------------------------------------------------

def test_sincos_init_equals_reference_pos_embeds():
    fx = load_fixture("mae_tiny_features.pt")
    model = mae_tiny()
    assert (model.pos_embed - fx["pos_embed"]).abs().max() <= 1e-6
    assert (model.decoder_pos_embed - fx["decoder_pos_embed"]).abs().max() <= 1e-6
    assert (sincos_pos_embed_2d(64, 4)[None] - fx["pos_embed"]).abs().max() <= 1e-6


def rule_mae_tiny(fx: dict) -> MaskedAutoencoderViT:
    sd = rule_weights(baseline("mae_tiny")["keys"])
    sd["pos_embed"], sd["decoder_pos_embed"] = fx["pos_embed"], fx["decoder_pos_embed"]
    model = mae_tiny()
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_mae_features_match_original():
    """The fixture's ``x`` is the model input (already normalised): compare block outputs first,
    then the extractor on the [-1, 1] image that normalises to ``x``."""
    fx = load_fixture("mae_tiny_features.pt")
    model = rule_mae_tiny(fx)
    with torch.no_grad():
        feats = model.block_outputs(fx["x"], fx["num_blocks"])
    assert len(feats) == len(fx["features"]) == 2
    for a, ref in zip(feats, fx["features"]):
        assert a.shape == ref.shape == (2, 64, 4, 4)
        assert (a - ref).abs().max() <= 1e-4

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    img = (fx["x"] * std + mean) * 2 - 1
    acts = FeatureExtractorMAE(model, num_blocks=fx["num_blocks"])(img, noise=torch.randn_like(img))
    for a, ref in zip(acts, fx["features"]):
        assert a.dtype == torch.float32 and (a - ref).abs().max() <= 1e-4


def test_mae_extractor_rejects_other_image_sizes():
    extractor = FeatureExtractorMAE(mae_tiny(), num_blocks=2)
    with pytest.raises(ValueError, match="32x32"):
        extractor(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="num_blocks"):
        FeatureExtractorMAE(mae_tiny(), num_blocks=5)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        MaskedAutoencoderViT(**dict(baseline("mae_tiny")["ctor"], img_size=36))


# --- SwAV features ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_name,size", [("rn50", 64), ("rn50w2", 32)])
def test_swav_hooked_channels_and_sizes(model_name, size, request):
    model = request.getfixturevalue(model_name)
    manifest = baseline(f"swav_{model_name}")
    acts = FeatureExtractorSwAV(model)(torch.rand(2, 3, size, size) * 2 - 1)
    assert list(SWAV_HOOKED_BLOCKS) == [name for name, _ in manifest["hooked_block_inputs"]]
    assert [a.shape[1] for a in acts] == [c for _, c in manifest["hooked_block_inputs"]]
    # The published feature width, which the class's layer catalogue states without running the model.
    assert sum(a.shape[1] for a in acts) == manifest["feature_dim"] == sum(
        layer.channels for layer in FeatureExtractorSwAV(model).layers())
    # At 256 px: 64,64 | 64,32 | 32,16,16 | 16,8, i.e. size / 4, 4 | 4, 8 | 8, 16, 16 | 16, 32.
    assert [a.shape[-1] for a in acts] == [size // d for d in (4, 4, 4, 8, 8, 16, 16, 16, 32)]
    assert all(a.shape[0] == 2 and a.shape[-2] == a.shape[-1] and a.dtype == torch.float32 for a in acts)


def walk_block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The hooked inputs by stepping through the layers by hand (no hooks, no early exit)."""
    x = getattr(model, "padding", nn.Identity())(x)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    inputs = []
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, layer)):
            if f"{layer}.{i}" in SWAV_HOOKED_BLOCKS:
                inputs.append(x)
            x = block(x)
    return inputs


@pytest.mark.parametrize("model_name,size", [("rn50", 64), ("rn50w2", 32)])
def test_swav_extractor_normalises_and_uses_running_stats(model_name, size, request):
    model = request.getfixturevalue(model_name)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial statistics, so batch statistics would differ from them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.1 * torch.rand(m.running_var.shape, generator=g))
    img = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    ran = []  # the forward stops at layer4.2's input: the block itself never runs
    handle = model.layer4[2].register_forward_hook(lambda *args: ran.append(True))
    try:
        acts = FeatureExtractorSwAV(model)(img)
    finally:
        handle.remove()
    assert not ran
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((img + 1) / 2 - mean) / std
    with torch.no_grad():
        hooked = swav_block_inputs(model, x)
        walked = walk_block_inputs(model, x)
    for a, h, w in zip(acts, hooked, walked, strict=True):
        assert torch.equal(a, h)
        assert (a - w).abs().max() <= 1e-5 * a.abs().max()  # maps reach ~50: relative tolerance
    # Eval-mode BatchNorm: one image gives the same features alone as within a batch
    # (batch statistics would change them by O(1)).
    for a, single in zip(acts, FeatureExtractorSwAV(model)(img[1:])):
        assert (a[1:] - single).abs().max() <= 1e-5 * a.abs().max()


# --- checkpoints -----------------------------------------------------------------------------

def stub_state_dict(keys: dict) -> dict:
    """Tensors of the manifest's shapes as stride-0 views: torch.save keeps their 1-element
    storage, so a full ResNet-50-w2 checkpoint takes a few kB (enough for shape checks)."""
    return {k: torch.zeros(()).expand(shape) for k, shape in keys.items()}


@pytest.fixture(scope="module")
def swav_checkpoint(rn50, tmp_path_factory):
    sd = {"module." + k: v for k, v in rn50.state_dict().items()}
    sd["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    sd["module.prototypes.weight"] = torch.zeros(3000, 128)
    path = tmp_path_factory.mktemp("swav") / "lsun_bedroom.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return path


def test_swav_checkpoint_loads_and_reports_ignored_keys(swav_checkpoint, rn50):
    torch.manual_seed(5)
    target = swav_resnet50(1)
    assert load_swav_checkpoint(target, str(swav_checkpoint)) == ["projection_head.0.weight", "prototypes.weight"]
    for k, v in rn50.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_swav_checkpoint_missing_key_or_wrong_width_raises(tmp_path):
    sd = {"module." + k: v for k, v in stub_state_dict(baseline("swav_rn50")["keys"]).items()}
    del sd["module.layer3.4.bn2.weight"]
    torch.save({"state_dict": sd}, tmp_path / "missing.pth")
    with torch.device("meta"):
        rn50, rn50w2 = swav_resnet50(1), swav_resnet50(2)
    with pytest.raises(CheckpointError, match=r"missing from checkpoint \(1\): layer3\.4\.bn2\.weight"):
        load_swav_checkpoint(rn50, str(tmp_path / "missing.pth"))

    w2 = {"module." + k: v for k, v in stub_state_dict(baseline("swav_rn50w2")["keys"]).items()}
    torch.save({"state_dict": w2}, tmp_path / "w2.pth")
    with pytest.raises(CheckpointError, match="SwAV-w2 checkpoint needs model_type swav_w2") as err:
        load_swav_checkpoint(rn50, str(tmp_path / "w2.pth"))
    assert "conv1.weight: checkpoint [128, 3, 7, 7] vs model [64, 3, 7, 7]" in str(err.value)
    with pytest.raises(CheckpointError, match="needs model_type swav$"):
        load_swav_checkpoint(rn50w2, str(tmp_path / "missing.pth"))


def test_swav_checkpoint_without_state_dict_entry(tmp_path):
    torch.save({"model": {}, "epoch": 1}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"no 'state_dict' entry.*\['epoch', 'model'\]"):
        load_swav_checkpoint(swav_resnet50(1), str(tmp_path / "x.pth"))


def mae_checkpoint(path, sd) -> str:
    torch.save({"model": sd, "args": argparse.Namespace(lr=1), "epoch": 3}, path)
    return str(path)


def test_mae_checkpoint_loads_strictly(tmp_path):
    fx = load_fixture("mae_tiny_features.pt")
    source = rule_mae_tiny(fx)
    target = mae_tiny()
    load_mae_checkpoint(target, mae_checkpoint(tmp_path / "mae.pth", source.state_dict()))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_mae_checkpoint_mismatches_raise(tmp_path):
    sd = mae_tiny().state_dict()
    extra = mae_checkpoint(tmp_path / "extra.pth", {**sd, "head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected in checkpoint \(1\): head\.weight"):
        load_mae_checkpoint(mae_tiny(), extra)
    encoder_only = mae_checkpoint(tmp_path / "enc.pth", {k: v for k, v in sd.items() if k != "mask_token"})
    with pytest.raises(CheckpointError, match=r"missing from checkpoint \(1\): mask_token(.|\n)*encoder-only"):
        load_mae_checkpoint(mae_tiny(), encoder_only)
    ctor = dict(baseline("mae_tiny")["ctor"], img_size=64)
    bigger = mae_checkpoint(tmp_path / "64.pth", MaskedAutoencoderViT(**ctor).state_dict())
    with pytest.raises(CheckpointError, match=r"trained at image size 64 .*dim must be that size"):
        load_mae_checkpoint(mae_tiny(), bigger)


def test_unreadable_checkpoints_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch checkpoint"):
        load_mae_checkpoint(mae_tiny(), str(garbage))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="0 bytes"):
        load_swav_checkpoint(swav_resnet50(1), str(tmp_path / "empty.pth"))
    # Fraction is not on torch's weights_only allowlist: an arbitrary pickled object.
    torch.save({"model": mae_tiny().state_dict(), "extra": fractions.Fraction(1, 3)}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match="fractions.Fraction.*load safely.*torch.save"):
        load_mae_checkpoint(mae_tiny(), str(tmp_path / "obj.pth"))


@pytest.mark.parametrize("model_type", ["mae", "swav", "swav_w2"])
def test_missing_checkpoint_names_its_download_script(model_type, tmp_path):
    path = str(tmp_path / "ffhq.pth")
    script = f"bash checkpoints/{model_type}/download_checkpoint.sh ffhq"
    # The factory checks the file before building the model (seconds for ViT-L).
    with pytest.raises(CheckpointError, match=script):
        backbone_class(model_type).build(path, 256, "cpu")
    if model_type == "mae":
        with pytest.raises(CheckpointError, match=script):
            load_mae_checkpoint(mae_tiny(), path)
    else:
        with torch.device("meta"):
            model = swav_resnet50(2 if model_type == "swav_w2" else 1)
        with pytest.raises(CheckpointError, match=script):
            load_swav_checkpoint(model, path)


# --- factory ---------------------------------------------------------------------------------

def test_factory_random_weights_are_seeded_and_leave_global_rng_alone():
    img = torch.linspace(-1, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)
    state = torch.get_rng_state()
    logs = []
    a = FeatureExtractorSwAV.build(None, 32, "cpu", seed=0, log=logs.append)(img)
    b = FeatureExtractorSwAV.build(None, 32, "cpu", seed=0, log=logs.append)(img)
    c = FeatureExtractorSwAV.build(None, 32, "cpu", seed=1, log=logs.append)(img)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[-1], c[-1])
    assert logs[0] == "swav: random weights (seed 0), no checkpoint"


def test_factory_loads_checkpoint_and_logs_ignored_keys(swav_checkpoint, rn50):
    logs = []
    extractor = FeatureExtractorSwAV.build(str(swav_checkpoint), 32, "cpu", log=logs.append)
    assert isinstance(extractor, FeatureExtractorSwAV)
    assert torch.equal(extractor.model.conv1.weight, rn50.conv1.weight)
    assert len(logs) == 1 and "ignored 2 checkpoint keys" in logs[0]
    assert logs[0].endswith("(projection_head, prototypes)")
    with pytest.raises(ConfigError, match=r"'model_type' must be one of \['ddpm', 'mae', 'swav', 'swav_w2', 'rgb_xy'"):
        backbone_class("vit")
