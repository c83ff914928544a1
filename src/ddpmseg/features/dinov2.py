"""``model_type: "dinov2"``: patch-token features of a DINOv2 ViT (Oquab et al., 2023), the
self-supervised backbone one would pick instead of a diffusion model.

The architectures are timm's ``vit_{small,base,large,giant}_patch14_dinov2`` ("dinov2_arch":
vits14 / vitb14 / vitl14 / vitg14, torch.hub's names). ``model_path`` is a checkpoint in either
layout, loaded strictly: the official torch.hub file (``dinov2_vits14_pretrain.pth``: with
``mask_token``, and the giant's SwiGLU as ``mlp.w12`` / ``mlp.w3``) or timm's (``model.safetensors``
of timm/vit_*_patch14_dinov2.lvd142m, or a .pth of its state dict). Images are resized to
"input_size" (a multiple of the patch, 14), ImageNet-normalised, and each of "blocks" gives its
patch tokens after the final LayerNorm (DINOv2's ``get_intermediate_layers(norm=True)``) as a
[C, input_size/14, input_size/14] map; the position embedding is interpolated to that grid by timm.
No noise, no timesteps: "steps" must be [].
"""
from __future__ import annotations

import math
import os
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from guided_diffusion.checkpoint import CheckpointError

from ..common.config import ConfigError
from ..common.paths import refuse_folder
from ..common.seeding import stream_seed
from .backbones import IMAGENET_MEAN, IMAGENET_STD, key_mismatches
from .family_keys import reject_unread_keys
from .registry import Backbone, Layer, register

PATCH = 14
# dinov2_arch -> (timm model name, depth, embed dim).
ARCHS = {
    "vits14": ("vit_small_patch14_dinov2", 12, 384),
    "vitb14": ("vit_base_patch14_dinov2", 12, 768),
    "vitl14": ("vit_large_patch14_dinov2", 24, 1024),
    "vitg14": ("vit_giant_patch14_dinov2", 40, 1536),
}
# The grid DINOv2 was trained at (518 px = 37 x 37 patches), the position embedding of every release.
PRETRAINED_GRID = 37


def vit_input_side(cfg: dict) -> int:
    """The side the ViT sees: "input_size", or dim[0] rounded up to a multiple of the patch."""
    return cfg["input_size"] or PATCH * math.ceil(cfg["dim"][0] / PATCH)


def build_dinov2(arch: str, grid: int = PRETRAINED_GRID) -> torch.nn.Module:
    """timm's DINOv2 ViT ``arch`` with a ``grid`` x ``grid`` position embedding, interpolated to any
    input grid at run time; no classifier head (none of the releases has one)."""
    import timm

    return timm.create_model(ARCHS[arch][0], pretrained=False, img_size=grid * PATCH, num_classes=0,
                             dynamic_img_size=True)


def official_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The torch.hub layout renamed to timm's: ``mask_token`` (used in DINOv2's training only)
    dropped, the giant's SwiGLU ``mlp.w12`` / ``mlp.w3`` named ``mlp.fc1`` / ``mlp.fc2``."""
    out = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue
        parts = k.split(".")
        if len(parts) == 5 and parts[0] == "blocks" and parts[2] == "mlp" and parts[3] in ("w12", "w3"):
            parts[3] = {"w12": "fc1", "w3": "fc2"}[parts[3]]
        out[".".join(parts)] = v
    return out


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A bare name -> tensor state dict from a .safetensors or .pth file, read without running pickled code."""
    refuse_folder(path, "model_path", CheckpointError)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}. Download it (bash checkpoints/dinov2/download_checkpoint.sh "
                              f"NAME, NAME one of {', '.join(ARCHS)}) or fix model_path")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file fails with almost any exception type
        raise CheckpointError(f"{path} ({os.path.getsize(path):,} bytes) cannot be read as a DINOv2 checkpoint: "
                              f"truncated, corrupt or not a state dict ({type(e).__name__}); download it again") from None
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict of name -> tensor "
                              f"(the torch.hub and timm DINOv2 files are bare state dicts)")
    return dict(sd)


def load_dinov2_checkpoint(path: str, arch: str) -> tuple[torch.nn.Module, str]:
    """The ViT ``arch`` with the weights of ``path`` (either layout), loaded strictly: every tensor of
    the model present with its shape, nothing else. Returns the model and the layout's name."""
    raw = read_state_dict(path)
    layout = "torch.hub" if "mask_token" in raw else "timm"
    sd = official_to_timm(raw) if layout == "torch.hub" else raw
    pos = sd.get("pos_embed")
    grid = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.dim() == 3 else PRETRAINED_GRID
    model = build_dinov2(arch, grid)
    expected = model.state_dict()
    missing, lines = key_mismatches(expected, sd, f"{path} ({layout} layout) does not match DINOv2 {arch}")
    if lines:
        width = sd["cls_token"].shape[-1] if "cls_token" in sd else None
        other = [a for a, (_, _, dim) in ARCHS.items() if dim == width and a != arch]
        if other:
            lines.append(f"  the checkpoint's width {width} is DINOv2 {other[0]}'s: set \"dinov2_arch\": \"{other[0]}\"")
        if any(k.startswith("register_tokens") or k == "reg_token" for k in sd if k not in expected):
            lines.append("  the checkpoint has register tokens (a _reg4 model), which this backbone does not build")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    return model, layout


@register
class DINOv2(Backbone):
    model_type = "dinov2"
    uses_timesteps = False
    can_sample = False
    hooks_fixed_layers = False

    def __init__(self, model: torch.nn.Module, blocks: list[int], size: tuple[int, int], side: int,
                 device: torch.device):
        self.model = model.to(device).eval().requires_grad_(False)
        self.blocks = sorted(blocks)
        self.size = size
        self.side = side
        self.device = device

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        super().check_config(cfg, where)  # "steps" must be [], model_path xor random_weights
        reject_unread_keys(cfg, where, cls.model_type, ("dinov2_arch", "input_size"))
        arch = cfg["dinov2_arch"]
        if arch not in ARCHS:
            raise ConfigError(f"{where}: 'dinov2_arch' must be one of {list(ARCHS)}, got {arch!r}")
        depth = ARCHS[arch][1]
        bad = [b for b in cfg["blocks"] if not 0 <= b < depth]
        if not cfg["blocks"] or bad or len(set(cfg["blocks"])) != len(cfg["blocks"]):
            raise ConfigError(f"{where}: 'blocks' must list distinct DINOv2 {arch} blocks 0..{depth - 1} "
                              f"(e.g. [{depth - 4}, {depth - 3}, {depth - 2}, {depth - 1}]), got {cfg['blocks']}")
        side = cfg["input_size"]
        if side is not None and (side < PATCH or side % PATCH):
            raise ConfigError(f"{where}: 'input_size' must be a multiple of DINOv2's patch {PATCH} (e.g. "
                              f"{PATCH * max(1, round(side / PATCH))}), got {side}")

    @classmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None) -> tuple[list[int], list[int]]:
        """No steps; every block, or the given blocks if this ViT has them."""
        depth = ARCHS[cfg["dinov2_arch"]][1]
        if steps:
            raise ConfigError(f"model_type 'dinov2' adds no noise, so there are no steps to select: drop --steps "
                              f"(got {steps})")
        blocks = sorted(blocks if blocks is not None else range(depth))
        bad = [b for b in blocks if not 0 <= b < depth]
        if bad:
            raise ConfigError(f"blocks {bad} do not exist: DINOv2 {cfg['dinov2_arch']} has blocks 0..{depth - 1}; "
                              f"pick --blocks among them")
        return [], blocks

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "DINOv2":
        arch = cfg["dinov2_arch"]
        if cfg["random_weights"]:
            # Drawn on the CPU, so that a seed gives the same ViT on every device.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed("backbone_init", cfg["seed"]))
                model = build_dinov2(arch)
            log(f"dinov2 {arch}: random weights (seed {cfg['seed']}), no checkpoint")
        else:
            model, layout = load_dinov2_checkpoint(cfg["model_path"], arch)
            log(f"dinov2 {arch}: loaded {cfg['model_path']} ({layout} layout)")
        return cls(model, cfg["blocks"], (cfg["dim"][0], cfg["dim"][1]), vit_input_side(cfg), device)

    def layers(self) -> list[Layer]:
        # stride: image pixels per token at the given size, rounded (the resize need not be integral).
        stride = max(1, round(self.size[0] * PATCH / self.side))
        return [Layer(f"blocks.{b}", self.model.embed_dim, stride) for b in self.blocks]

    def input_size(self) -> tuple[int, int]:
        return self.size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``noise`` is accepted for the common interface and ignored: DINOv2 takes clean images."""
        x = images.to(self.device, next(self.model.parameters()).dtype)
        if tuple(x.shape[-2:]) != (self.side, self.side):
            # antialias: a shrink averages the pixels it drops instead of skipping them.
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.side)
        # [-1, 1] -> [0, 1] -> ImageNet statistics, in the model's dtype (float64 in the parity tests).
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        maps = self.model.forward_intermediates(x, indices=self.blocks, norm=True, stop_early=True,
                                                output_fmt="NCHW", intermediates_only=True)
        return [m.to(torch.promote_types(m.dtype, torch.float32)) for m in maps]
