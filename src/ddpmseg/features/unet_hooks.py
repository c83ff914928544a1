"""What the diffusers backbones (``diffusers_ddpm``, ``stable_diffusion``) share: the layers of a
diffusers U-Net that can be hooked, their channels and strides, one hooked forward, and where a
model folder comes from.

Hookable layers, named as ``unet.named_modules()`` names them:

- ``up_blocks.K``: the output of up block K, after its upsampler (config ``"blocks": [K, ...]``);
- ``up_blocks.K.resnets.J`` and ``up_blocks.K.attentions.J``: one layer inside up block K, before
  the upsampler (config ``"hook_layers": ["up_blocks.1.resnets.2", ...]``).

Maps come step-major, then in the U-Net's forward order, and the forward stops right after the
last hooked layer: later layers cannot change what was captured.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..common.config import ConfigError
from .registry import Layer


class _StopForward(Exception):
    """Raised by the hook of the last hooked layer."""


def hookable_layers(unet: nn.Module) -> list[tuple[str, int, int]]:
    """(name, channels, stride in latent pixels) of every hookable layer, in forward order."""
    stride = 2 ** sum(getattr(b, "downsamplers", None) is not None for b in unet.down_blocks)
    out = []
    for k, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j, resnet in enumerate(block.resnets):
            out.append((f"up_blocks.{k}.resnets.{j}", resnet.out_channels, stride))
            if j < len(attentions):  # an attention follows its resnet in every diffusers up block
                out.append((f"up_blocks.{k}.attentions.{j}", resnet.out_channels, stride))
        if getattr(block, "upsamplers", None) is not None:
            stride //= 2
        out.append((f"up_blocks.{k}", block.resnets[-1].out_channels, stride))
    return out


def config_layer_names(cfg: dict) -> list[str]:
    """The layer names a config asks for: ``up_blocks.K`` of its "blocks", then its "hook_layers"."""
    return [f"up_blocks.{k}" for k in cfg["blocks"]] + list(cfg["hook_layers"])


def check_layer_names(names: Sequence[str], available: Sequence[str], where: str) -> None:
    """ConfigError naming the layers of ``names`` that this U-Net does not have (or a repeated one)."""
    if not names:
        raise ConfigError(f"{where}: no layer to hook: list up block indices in \"blocks\" and/or layer names "
                          f"in \"hook_layers\" (this U-Net has: {', '.join(available)})")
    bad = [n for n in names if n not in available]
    if bad:
        raise ConfigError(f"{where}: this U-Net has no layer {', '.join(bad)}; hookable: {', '.join(available)} "
                          f"(\"blocks\": [K] names up_blocks.K)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a layer is listed twice in \"blocks\" / \"hook_layers\": {list(names)}")


def unet_grid(cfg: dict, num_up_blocks: int, num_timesteps: int, default_steps: Sequence[int],
              steps: list[int] | None, blocks: list[int] | None) -> tuple[list[int], list[int]]:
    """`ddpmseg select`'s (steps, blocks) for a diffusers U-Net: the given ones, checked, or every up
    block at ``default_steps``. ConfigError for what does not exist, and for "hook_layers" (the search
    picks whole up blocks)."""
    if cfg["hook_layers"]:
        raise ConfigError(f"feature selection picks timesteps and whole up blocks: drop \"hook_layers\" "
                          f"(got {cfg['hook_layers']}) from the config it starts from")
    steps = sorted(steps if steps is not None else default_steps)
    blocks = sorted(blocks if blocks is not None else range(num_up_blocks))
    check_steps_and_blocks(steps, blocks, num_timesteps, num_up_blocks, ("--steps", "--blocks"),
                           schedule="scheduler", block_kind="up_blocks")
    return steps, blocks


def check_steps_and_blocks(steps: Sequence[int], blocks: Sequence[int], num_timesteps: int, num_blocks: int,
                           names: tuple[str, str], schedule: str = "diffusion",
                           block_kind: str = "decoder blocks (output_blocks)") -> None:
    """ConfigError for steps the noise schedule lacks or blocks the U-Net lacks; ``names`` are what the
    user set them with (config keys or options), ``schedule`` and ``block_kind`` how the family calls them."""
    bad_t = [t for t in steps if not 0 <= t < num_timesteps]
    if bad_t:
        raise ConfigError(f"steps {bad_t} do not exist: this {schedule} has {num_timesteps} steps, so "
                          f"{names[0]} must lie in 0..{num_timesteps - 1}")
    bad_b = [b for b in blocks if not 0 <= b < num_blocks]
    if bad_b:
        raise ConfigError(f"blocks {bad_b} do not exist: this U-Net has {block_kind} 0..{num_blocks - 1}; pick "
                          f"{names[1]} among them")


def timestep_layers(unet: nn.Module, names: Sequence[str], steps: Sequence[int], scale: int) -> list[Layer]:
    """The Layer of every (step, hooked layer), step-major then forward order; ``scale`` = image
    pixels per U-Net input pixel (1 for a pixel-space U-Net, the VAE factor for a latent one)."""
    chosen = [(n, c, s) for n, c, s in hookable_layers(unet) if n in set(names)]
    return [Layer(f"step {t}, {n}", c, s * scale) for t in steps for n, c, s in chosen]


def forward_order(unet: nn.Module, names: Sequence[str]) -> list[str]:
    order = [n for n, _, _ in hookable_layers(unet)]
    return sorted(names, key=order.index)


def hooked_forward(unet: nn.Module, names: Sequence[str], run: Callable[[], object]) -> list[torch.Tensor]:
    """Run ``run()`` (a forward of ``unet``) and return the outputs of the layers ``names`` (in
    forward order), each promoted to at least float32; the forward stops after the last of them."""
    names = forward_order(unet, names)
    captured: list[torch.Tensor] = []

    def hook_for(last: bool):
        def hook(module, inputs, output):
            # Attention layers of diffusers return a tuple or a Transformer2DModelOutput.
            value = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            captured.append(value.detach().to(torch.promote_types(value.dtype, torch.float32)))
            if last:
                raise _StopForward
        return hook

    # Hooks live for one call only, so the U-Net stays a plain module (and can sample) in between.
    handles = [unet.get_submodule(n).register_forward_hook(hook_for(n == names[-1])) for n in names]
    try:
        run()
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def split_steps(maps: Sequence[torch.Tensor], num_steps: int, n: int) -> list[torch.Tensor]:
    """[S*N, C, h, w] per layer (step-major batch) -> the step-major list of [N, C, h, w]."""
    return [m[s * n:(s + 1) * n] for s in range(num_steps) for m in maps]


def model_folder(path: str, kind: str, download_hint: str, where: str, files: Sequence[str] = ("*",)) -> str:
    """``path`` if it is a local folder; else a hub id, whose ``files`` (glob patterns) are fetched to
    the hub cache when the hub can be reached. ConfigError, at once, when it is neither
    (HF_HUB_OFFLINE=1 or no network)."""
    if os.path.isdir(path):
        return path
    how = f"download the folder ({download_hint}) and set \"model_path\" to it"
    if os.path.exists(path) or path.count("/") != 1 or path.startswith((".", "/")):
        raise ConfigError(f"{where}: model_path {path!r} is not a {kind} folder (save_pretrained layout): {how}")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ConfigError(f"{where}: model_path {path!r} is no local folder and HF_HUB_OFFLINE is set, so the hub "
                          f"is not asked: {how}")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(path, allow_patterns=list(files))
    except Exception as e:  # no network, unknown repo, gated repo: all end the same way
        raise ConfigError(f"{where}: model_path {path!r} is no local folder and the hub did not give it "
                          f"({type(e).__name__}): {how}") from None


def read_json(path: str, where: str) -> dict:
    """A model folder's JSON config; ConfigError if absent or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: cannot read {path} ({type(e).__name__}: {e}); the model folder is "
                          f"incomplete: download it again") from None


def scheduler_from_folder(folder: str):
    """The diffusers scheduler saved in ``folder`` (its scheduler_config.json names the class)."""
    import diffusers

    name = read_json(os.path.join(folder, "scheduler_config.json"), folder)["_class_name"]
    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None or not hasattr(scheduler_class, "add_noise"):
        raise ConfigError(f"{folder}: scheduler {name!r} is not a diffusers noise scheduler with add_noise")
    return scheduler_class.from_pretrained(folder)
