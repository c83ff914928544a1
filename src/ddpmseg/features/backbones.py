"""The networks of the paper's comparison backbones: MAE ViT-L/8 and SwAV ResNet-50 (width 1 and 2).

Baranchuk et al. compare DDPM features with features of self-supervised models trained on
the same data. Each network here has the exact state-dict layout of its published
checkpoint and loads it with errors that say what is wrong; the backbones that extract
features with them are ``ddpmseg.features.mae`` and ``ddpmseg.features.swav``.

Hooked layers, as published: MAE, the outputs of the last 12 of 24 encoder blocks (before
the final norm); SwAV, the inputs of every other bottleneck of each stage (9 maps).
"""
from __future__ import annotations

import abc
import argparse
import math
import os
import re
from functools import partial
from typing import Callable, ClassVar, Mapping

import torch
import torch.nn as nn
import torchvision
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torchvision.models.resnet import Bottleneck

from guided_diffusion.checkpoint import SHOW, CheckpointError

from ..common.paths import refuse_folder
from ..common.safeload import unsafe_global
from ..common.seeding import stream_seed
from .registry import FixedLayerBackbone, check_input_activations, check_layer_keys, check_weight_keys

# Both backbones were pretrained on [0, 1] images normalised with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bottlenecks whose INPUTS SwAV's extractor keeps: layer[::2] of each stage, in forward order.
SWAV_HOOKED_BLOCKS = ("layer1.0", "layer1.2", "layer2.0", "layer2.2",
                      "layer3.0", "layer3.2", "layer3.4", "layer4.0", "layer4.2")

# Checkpoint names the download scripts know (scripts/download_lib.sh).
_DOWNLOAD_NAMES = ("lsun_bedroom", "ffhq", "lsun_cat", "lsun_horse")


# --------------------------------------------------------------------------- MAE


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding: [grid_size**2 (+1), dim], float32.

    Tokens are in row-major image order. The first dim/2 channels encode the token's column
    and the last dim/2 its row, each as [sin(p * w_k), cos(p * w_k)] with
    w_k = 10000 ** (-k / (dim / 4)). With ``cls_token`` a zero row comes first.
    """
    if dim % 4:
        raise ValueError(f"the sin-cos embedding needs a dim divisible by 4, got {dim}")
    # float64 like the reference (numpy); rounding to float32 happens once, at the end.
    freqs = 10000.0 ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([encode(cols.flatten()), encode(rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb])
    return emb.float()


class MaskedAutoencoderViT(nn.Module):
    """The MAE of He et al. with the parameter names of its published checkpoints.

    Only the encoder runs at feature time; the decoder (and ``mask_token``) exist so that a
    full pre-training checkpoint loads strictly, which proves it matches this architecture.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False,
                 layernorm_eps: float = 1e-6):
        super().__init__()
        if img_size % patch_size:  # otherwise the patch grid would silently drop border pixels
            raise ValueError(f"img_size {img_size} must be a multiple of the patch size {patch_size}")
        norm = partial(nn.LayerNorm, eps=layernorm_eps)
        self.img_size = img_size
        self.norm_pix_loss = norm_pix_loss  # a training-loss setting, kept for the record
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, yet parameters (not buffers) because the checkpoints store them as such.
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth))
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        grid = self.patch_embed.grid_size[0]
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid)[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid)[None])
        # The patch projection is a linear map of the flattened patch: initialise it as one.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def block_outputs(self, x: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
        """Outputs of the last ``num_blocks`` encoder blocks for ImageNet-normalised ``x``.

        Each is [N, embed_dim, H/p, W/p]: cls token dropped, patch tokens in image order.
        """
        depth = len(self.blocks)
        if not 1 <= num_blocks <= depth:
            raise ValueError(f"num_blocks must be in 1..{depth}, got {num_blocks}")
        n = x.shape[0]
        h, w = self.patch_embed.grid_size
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        # The original runs forward_encoder(x, mask_ratio=0): it shuffles the (all kept) tokens
        # at random and un-shuffles the block outputs with ids_restore. Positions are added
        # before the shuffle and nothing is masked, so attention (permutation-equivariant)
        # computes the same function on tokens in image order, here without the randomness.
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i >= depth - num_blocks:
                outputs.append(tokens[:, 1:].transpose(1, 2).reshape(n, -1, h, w))
        return outputs


def mae_vit_large_patch8(img_size: int = 256) -> MaskedAutoencoderViT:
    """ViT-L/8 MAE as pretrained for the paper (256 px: 32x32 tokens)."""
    return MaskedAutoencoderViT(img_size=img_size, patch_size=8, embed_dim=1024, depth=24, num_heads=16,
                                decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4,
                                norm_pix_loss=True, layernorm_eps=1e-6)


# --------------------------------------------------------------------------- SwAV


class ResNet50w2(nn.Module):
    """SwAV's ResNet-50-w2: every width of ResNet-50 doubled (outputs 512..4096 channels).

    Unlike torchvision's ``wide_resnet50_2`` (wider bottlenecks only), the stem and block
    outputs double too. SwAV pads by 1 before a conv1 with padding 2 (3 in all, as in ResNet-50).
    """

    def __init__(self):
        super().__init__()
        width = 128
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, (planes, blocks, stride) in enumerate(zip((128, 256, 512, 1024), (3, 4, 6, 3), (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", _stage(inplanes, planes, blocks, stride))
            inplanes = planes * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage of torchvision Bottlenecks (stride on the 3x3 conv, as in SwAV)."""
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def swav_resnet50(width: int = 1) -> nn.Module:
    """SwAV's backbone: torchvision ResNet-50 (width 1) or ResNet-50-w2 (width 2), fc = Identity."""
    if width == 1:
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Identity()  # SwAV checkpoints hold no classifier
        return model
    if width == 2:
        return ResNet50w2()
    raise ValueError(f"SwAV width must be 1 or 2, got {width}")


class _StopForward(Exception):
    """Raised by the last hook: later layers cannot change the captured inputs."""


def swav_block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of the ``SWAV_HOOKED_BLOCKS`` bottlenecks for ImageNet-normalised ``x``.

    The forward stops at the last hooked block, skipping the rest of layer4.
    """
    blocks = [model.get_submodule(name) for name in SWAV_HOOKED_BLOCKS]
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().float())
        if module is blocks[-1]:
            raise _StopForward

    # Hooks live for one call only, so the model stays a plain module between calls.
    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


# --------------------------------------------------------------------------- input


def imagenet_normalise(img: torch.Tensor) -> torch.Tensor:
    """Our [-1, 1] images -> the ImageNet-normalised [0, 1] images the backbones were trained on."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device).view(1, 3, 1, 1)
    return ((img.float() + 1) / 2 - mean) / std


# --------------------------------------------------------------------------- checkpoints


def require_checkpoint(path: str, kind: str) -> None:
    """CheckpointError naming the download script when ``path`` is not a file (checked before building)."""
    refuse_folder(path, "model_path", CheckpointError)
    if os.path.isfile(path):
        return
    stem = os.path.splitext(os.path.basename(path))[0]
    script = f"bash checkpoints/{kind}/download_checkpoint.sh"
    how = f"{script} {stem}" if stem in _DOWNLOAD_NAMES else f"{script} NAME, NAME one of {', '.join(_DOWNLOAD_NAMES)}"
    raise CheckpointError(f"checkpoint not found: {path}. Download it ({how}) or fix model_path")


def _read_entry(path: str, entry: str, kind: str) -> dict[str, torch.Tensor]:
    """``torch.load(path)[entry]`` as a name -> tensor dict, loaded without running pickled code."""
    require_checkpoint(path, kind)
    try:
        # The official MAE checkpoints also pickle their training arguments (a Namespace).
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can fail with almost any exception type
        found = unsafe_global(e)
        if found is not None:
            resaved = os.path.splitext(path)[0] + "_tensors.pth"
            raise CheckpointError(
                f"{path} stores Python objects ({found}) besides "
                f"tensors, so it is not a tensor checkpoint this tool can load safely (weights_only). If you "
                f"trust the file, re-save its tensors once: python -c \"import torch; c = torch.load('{path}', "
                f"weights_only=False); torch.save({{'{entry}': c['{entry}']}}, '{resaved}')\" and use {resaved}"
            ) from None
        # weights_only errors open with generic advice; the cause follows "WeightsUnpickler error:".
        msg = str(e)
        cause = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        first = cause.group(1) if cause else (msg.strip().splitlines() or [""])[0]
        detail = type(e).__name__ + (f": {first.strip()[:200]}" if first.strip() else "")
        raise CheckpointError(
            f"{path} ({os.path.getsize(path):,} bytes) cannot be read as a PyTorch checkpoint: it is "
            f"truncated, corrupt or not a checkpoint ({detail}). Re-download it "
            f"(the download scripts resume partial files)") from None
    if not isinstance(obj, Mapping) or entry not in obj:
        has = f"its top-level keys are {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) \
            else f"it holds a {type(obj).__name__}"
        raise CheckpointError(f"{path} has no '{entry}' entry, where a {kind} checkpoint keeps its weights "
                              f"(torch.load(path)['{entry}']); {has}")
    sd = obj[entry]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in sd.items()):
        raise CheckpointError(f"{path}: ['{entry}'] is a {type(sd).__name__}, not a state dict of name -> tensor")
    return dict(sd)


def _listed(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - SHOW} more)" if len(items) > SHOW else ""
    return f"  {title} ({len(items)}): " + "; ".join(items[:SHOW]) + more


def _shape_mismatches(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> list[str]:
    return [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
            for k, v in model_sd.items() if k in sd and sd[k].shape != v.shape]


def key_mismatches(expected: dict, sd: dict, header: str) -> tuple[list[str], list[str]]:
    """(keys missing from ``sd``, the error's lines) of a strict load of ``sd`` into a model whose
    state dict is ``expected``; no lines when every key and shape matches."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = _shape_mismatches(expected, sd)
    if not (missing or unexpected or shapes):
        return missing, []
    lines = [f"{header} ({len(sd)} tensors in the checkpoint, {len(expected)} in the model)."]
    for title, items in (("missing from checkpoint", missing), ("unexpected in checkpoint", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            lines.append(_listed(title, items))
    return missing, lines


def load_mae_checkpoint(model: MaskedAutoencoderViT, path: str) -> None:
    """Load ``torch.load(path)['model']`` (the full MAE, decoder included) strictly into ``model``."""
    sd = _read_entry(path, "model", "mae")
    expected = model.state_dict()
    missing, lines = key_mismatches(expected, sd, f"{path} does not match the MAE model")
    if lines:
        if missing and all(k.startswith(("decoder", "mask_token")) for k in missing):
            lines.append("  the decoder is missing: this looks like an encoder-only (fine-tuned) checkpoint; "
                         "use the full pre-training checkpoint")
        if "pos_embed" in sd and "pos_embed" in expected and sd["pos_embed"].shape != expected["pos_embed"].shape:
            patch = model.patch_embed.patch_size[0]
            side = math.isqrt(sd["pos_embed"].shape[1] - 1) * patch
            lines.append(f"  pos_embed: the checkpoint was trained at image size {side} ({side}x{side} px), "
                         f"the model was built for {model.img_size}; the config's dim must be that size "
                         f"([{side}, {side}, ...], e.g. 256 for the published MAE checkpoints)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)


def load_swav_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Load the backbone from ``torch.load(path)['state_dict']`` into ``model``.

    Keys lose their DataParallel ``module.`` prefix. Every backbone tensor must be present
    with the model's shape (the original's strict=False would let a wrong checkpoint pass);
    checkpoint keys outside the backbone (projection_head, prototypes) are ignored and
    returned, sorted, without the prefix.
    """
    kind = "swav_w2" if isinstance(model, ResNet50w2) else "swav"
    raw = _read_entry(path, "state_dict", kind)
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    expected = model.state_dict()
    # num_batches_tracked only counts training steps and never affects eval-mode outputs;
    # BatchNorm fills it in itself when a (pre-2018) checkpoint lacks it.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    shapes = _shape_mismatches(expected, sd)
    if missing or shapes:
        lines = [f"{path} does not match the {kind} backbone ({len(expected)} tensors in the model)."]
        if missing:
            lines.append(_listed("missing from checkpoint", missing))
        if shapes:
            lines.append(_listed("shape mismatch", shapes))
            ratio = {sd[k].shape[0] / v.shape[0] for k, v in expected.items()
                     if k in sd and sd[k].dim() and v.dim() and sd[k].shape != v.shape}
            if ratio == {2.0}:
                lines.append("  the checkpoint is twice as wide as the model: a SwAV-w2 checkpoint needs "
                             "model_type swav_w2")
            elif ratio == {0.5}:
                lines.append("  the checkpoint is half as wide as the model: a SwAV (ResNet-50) checkpoint "
                             "needs model_type swav")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=True)
    return sorted(k for k in sd if k not in expected)


def seeded_weights(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``make()`` with its initial weights drawn from the "backbone_init" stream of ``seed`` (the
    untrained-backbone control), on the CPU so that a seed gives the same backbone on every device;
    the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed("backbone_init", seed))
        return make()


class ComparisonBackbone(FixedLayerBackbone):
    """MAE or SwAV: a published network whose block inputs or outputs (``captures_inputs``) are the maps."""

    captures_inputs: ClassVar[bool]  # the config's input_activations must equal it, as published

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        check_layer_keys(cls, cfg, where)
        check_input_activations(cls, cfg, where, inputs=cls.captures_inputs)
        check_weight_keys(cls, cfg, where)

    @classmethod
    @abc.abstractmethod
    def build(cls, model_path: str | None, image_size: int, device: str | torch.device = "cpu", seed: int = 0,
              log: Callable[[str], None] = print) -> "ComparisonBackbone":
        """The backbone from the checkpoint ``model_path``, or with random weights of ``seed`` for None."""

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "ComparisonBackbone":
        return cls.build(cfg["model_path"] or None, cfg["dim"][0], device, cfg["seed"], log)
