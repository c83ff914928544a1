"""The backbone registry: model_type is decided there and in the family modules only; an unknown
model_type names the registered ones; every backbone's layer catalogue states the maps it returns."""
from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_DIFFUSERS_UNET, shapes64, write_tiny_sd_pipeline
from ddpmseg.classifier.feature_selection import ProbeSettings, Selection
from ddpmseg.common.config import ConfigError, load_config, validate
from ddpmseg.common.model_flags import resolve_model_flags
from ddpmseg.features import REGISTRY, Backbone, Layer, backbone_class
from ddpmseg.features.backbones import MaskedAutoencoderViT, swav_resnet50
from ddpmseg.features.mae import FeatureExtractorMAE
from ddpmseg.features.rgb_xy import RGBPositionFeatures
from ddpmseg.features.swav import FeatureExtractorSwAV, FeatureExtractorSwAVW2

PACKAGE = REPO / "src" / "ddpmseg"
CONFIG = "experiments/celebamask64/ddpm.json"


# --- model_type is branched on in the registry and the family modules only ---------------------

def mentions_model_type(node: ast.AST) -> bool:
    """Whether an expression reads a model_type: a "model_type" key or a name / attribute model_type."""
    return any(isinstance(n, ast.Constant) and n.value == "model_type"
               or isinstance(n, ast.Name) and n.id == "model_type"
               or isinstance(n, ast.Attribute) and n.attr == "model_type" for n in ast.walk(node))


def model_type_branches(tree: ast.AST) -> list[int]:
    """Lines that compare a model_type (==, !=, in, is) or match on one."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(map(mentions_model_type, [node.left, *node.comparators])):
            lines.append(node.lineno)
        elif isinstance(node, ast.Match) and mentions_model_type(node.subject):
            lines.append(node.lineno)
    return lines


def is_family_module(tree: ast.AST) -> bool:
    """A module that defines a backbone class with ``@register``."""
    return any(isinstance(n, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "register"
                                                   for d in n.decorator_list) for n in ast.walk(tree))


def test_model_type_is_branched_on_only_in_the_registry_and_the_families():
    offenders, families = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if path == PACKAGE / "features" / "registry.py" or is_family_module(tree):
            families.append(path.relative_to(PACKAGE).as_posix())
            continue
        offenders += [f"{path.relative_to(PACKAGE)}:{line}" for line in model_type_branches(tree)]
    assert not offenders, "model_type branched on outside ddpmseg.features' registry and families: " + \
        ", ".join(offenders)
    assert {"features/ddpm.py", "features/mae.py", "features/swav.py", "features/rgb_xy.py"} <= set(families)


def test_the_walker_sees_each_kind_of_branch():
    code = '''
if cfg["model_type"] != "ddpm": pass
if kind.model_type in ("mae", "swav"): pass
x = 1 if model_type == "rgb_xy" else 2
match cfg.get("model_type"):
    case "ddpm": pass
y = REGISTRY[cfg["model_type"]].can_sample
'''
    assert sorted(model_type_branches(ast.parse(code))) == [2, 3, 4, 5]  # a lookup (line 7) is no branch


# --- unknown names --------------------------------------------------------------------------

def test_an_unknown_model_type_lists_the_registered_ones():
    names = list(REGISTRY)
    assert names[:5] == ["ddpm", "mae", "swav", "swav_w2", "rgb_xy"]
    with pytest.raises(ConfigError) as err:
        backbone_class("vit")
    assert str(err.value) == f"'model_type' must be one of {names}, got 'vit'"
    cfg = load_config(CONFIG)
    with pytest.raises(ConfigError) as err:
        validate({**cfg, "model_type": "vit"}, where="x.json")
    assert str(err.value) == f"x.json: 'model_type' must be one of {names}, got 'vit'"


def test_each_backbone_checks_its_own_keys():
    cfg = load_config(CONFIG)
    fixed = {**cfg, "steps": [], "blocks": [], "model_path": "", "random_weights": True}
    assert validate({**fixed, "model_type": "swav", "input_activations": True})["model_type"] == "swav"
    with pytest.raises(ConfigError, match="'mae' hooks fixed layers and adds no noise"):
        validate({**cfg, "model_type": "mae"})
    with pytest.raises(ConfigError, match="'swav_w2' captures block inputs"):
        validate({**fixed, "model_type": "swav_w2"})
    with pytest.raises(ConfigError, match="'rgb_xy' has no weights"):
        validate({**fixed, "model_type": "rgb_xy"})
    with pytest.raises(ConfigError, match="'model_path' is empty: name the ddpm checkpoint"):
        validate({**cfg, "model_path": ""})


# --- layer catalogues -------------------------------------------------------------------------

def tiny_ddpm(input_activations: bool):
    cfg = load_config(CONFIG, {"model_path": "", "random_weights": True, "blocks": list(range(12)),
                               "steps": [50, 250], "input_activations": input_activations,
                               "dim": [64, 64, 1]})
    return backbone_class("ddpm").from_config(cfg, resolve_model_flags(cfg), torch.device("cpu"), lambda m: None)


def tiny_mae():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=4)
    return FeatureExtractorMAE(model, num_blocks=3)


def tiny_from_config(keys: dict):
    cfg = load_config(CONFIG, {"model_path": "", "random_weights": True, **keys})
    return backbone_class(cfg["model_type"]).from_config(cfg, resolve_model_flags(cfg), torch.device("cpu"),
                                                         lambda m: None)


def tiny_sd():
    # Everything is in memory once built: the folder may go.
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_sd_pipeline(Path(tmp) / "sd")
        return tiny_from_config({"model_type": "stable_diffusion", "model_path": str(folder), "random_weights": False,
                                 "exp_dir": tmp, "steps": [261], "blocks": [0, 1], "dim": [64, 64, 1]})


# Each registered class at a size it runs at in a second, with the catalogue's expected
# (first layer name, channels, stride) as the published architectures give them.
TINY = {
    "ddpm": (lambda: tiny_ddpm(False), 64, ("step 50, block 0", 128, 8)),
    "ddpm input activations": (lambda: tiny_ddpm(True), 64, ("step 50, block 0", 256, 8)),
    "mae": (tiny_mae, 32, ("blocks.1", 64, 8)),
    "swav": (lambda: FeatureExtractorSwAV(swav_resnet50(1)), 64, ("layer1.0 input", 64, 4)),
    "swav_w2": (lambda: FeatureExtractorSwAVW2(swav_resnet50(2)), 32, ("layer1.0 input", 128, 4)),
    "rgb_xy": (lambda: RGBPositionFeatures(16), 16, ("colour and position", 5, 1)),
    "diffusers": (lambda: tiny_from_config({"model_type": "diffusers", "model_flags": TINY_DIFFUSERS_UNET,
                                            "steps": [50], "blocks": [0, 1], "dim": [16, 16, 1],
                                            "hook_layers": ["up_blocks.0.attentions.0"]}),
                  16, ("step 50, up_blocks.0.attentions.0", 16, 2)),
    "stable_diffusion": (tiny_sd, 64, ("step 261, up_blocks.0", 16, 8)),
    "dinov2": (lambda: tiny_from_config({"model_type": "dinov2", "steps": [], "blocks": [0, 11], "dim": [28, 28, 1]}),
               28, ("blocks.0", 384, 14)),
}


def test_every_registered_backbone_has_a_tiny_build_here():
    assert set(REGISTRY) <= {name.split()[0] for name in TINY}


@pytest.mark.parametrize("name", TINY)
def test_layers_state_the_maps_call_returns(name):
    build, size, first = TINY[name]
    backbone = build()
    layers = backbone.layers()
    maps = backbone(torch.linspace(-1, 1, 2 * 3 * size * size).view(2, 3, size, size))
    assert (layers[0].name, layers[0].channels, layers[0].stride) == first
    assert len(layers) == len(maps) and len({layer.name for layer in layers}) == len(layers)
    for layer, a in zip(layers, maps):
        assert a.dtype == torch.float32
        assert tuple(a.shape) == (2, layer.channels, size // layer.stride, size // layer.stride), layer


def test_ddpm_catalogue_matches_the_unet_of_the_config():
    """celebamask64's U-Net (channel_mult 1,2,3,4 at 64 px): the decoder widths and resolutions of its
    12 output blocks, three per level from 8x8 up to 64x64."""
    layers = tiny_ddpm(False).layers()[:12]
    assert [(layer.channels, layer.stride) for layer in layers] == [
        (128, 8), (128, 8), (128, 4), (96, 4), (96, 4), (96, 2), (64, 2), (64, 2), (64, 1), (32, 1), (32, 1), (32, 1)]
    assert [layer.name for layer in tiny_ddpm(False).layers()][12] == "step 250, block 0"


def test_validation_in_a_fresh_process_registers_the_backbones_itself():
    """``ddpmseg.common.config`` alone validates model_type: the package wires the registry in on first use."""
    code = (f"import sys; sys.path[:0] = [{str(REPO / 'src')!r}, {str(REPO)!r}]\n"
            "from ddpmseg.common.config import load_config\n"
            f"print(load_config({CONFIG!r}, {{'model_type': 'swav', 'steps': [], 'blocks': [], "
            "'input_activations': True})['model_type'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "swav"


def test_fresh_noise_comes_from_the_feature_noise_stream_not_the_global_rng():
    """share_noise false: each call draws new noise from the seed's "feature_noise" stream, so two builds
    of one config give the same features and the global RNG is neither read nor reseeded."""
    def build(seed):
        cfg = load_config(CONFIG, {"model_path": "", "random_weights": True, "share_noise": False, "seed": seed})
        return backbone_class("ddpm").from_config(cfg, resolve_model_flags(cfg), torch.device("cpu"), lambda m: None)

    image = torch.zeros(1, 3, 64, 64)
    state = torch.get_rng_state()
    a, b = build(0), build(0)
    first, again = a(image), a(image)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(first, b(image), strict=True))  # same seed, same draws
    assert not torch.equal(first[0], again[0])  # a later call draws new noise
    assert not torch.equal(first[0], build(1)(image)[0])


class PooledColour(Backbone):
    """A test backbone without timesteps whose blocks can be chosen: block b is the image average-pooled
    by 2**b, so select_features.py searches blocks alone (the DINOv2 shape of grid)."""

    model_type = "pooled_colour"
    uses_timesteps = False
    can_sample = False
    hooks_fixed_layers = False
    has_weights = False
    LEVELS = 3

    def __init__(self, blocks):
        self.blocks = sorted(blocks)

    @classmethod
    def candidate_grid(cls, cfg, model_flags, steps=None, blocks=None):
        return [], sorted(blocks if blocks is not None else range(cls.LEVELS))

    @classmethod
    def from_config(cls, cfg, model_flags, device, log):
        return cls(cfg["blocks"])

    def layers(self):
        return [Layer(f"pool {2 ** b}", 3, 2 ** b) for b in self.blocks]

    def input_size(self):
        return 64, 64

    def __call__(self, images, noise=None):
        return [torch.nn.functional.avg_pool2d(images.float(), 2 ** b) for b in self.blocks]


def test_feature_selection_searches_the_blocks_of_a_backbone_without_timesteps(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, PooledColour.model_type, PooledColour)
    data = shapes64() / "real"
    cfg = load_config(CONFIG, {"model_type": "pooled_colour", "model_path": "", "steps": [], "blocks": [0],
                               "dim": [64, 64, 3], "training_path": str(data / "train"), "training_number": 4,
                               "device": "cpu"})
    probe = ProbeSettings(folds=2, members=1, iterations=20)
    sel = Selection(cfg, {}, torch.device("cpu"), str(tmp_path), None, None, probe, log=lambda m: None)
    sel.extract()
    result = sel.search()
    selected = sel.write_outputs(result, 0.0)
    singles, protocol = result.singles, result.own
    assert [(s.steps, s.blocks) for s in singles] == [([], [0]), ([], [1]), ([], [2])]
    assert selected["steps"] == [] and selected["dim"] == [64, 64, 3 * len(selected["blocks"])]
    assert protocol.steps == [] and protocol.blocks == [0] and protocol.miou == singles[0].miou
    assert (tmp_path / "selection_heatmap.png").is_file()
