"""Drawing images from a trained DDPM: ancestral or DDIM, with timestep respacing.

Every batch is seeded from (seed, batch index) alone, so a batch is the same images whichever
process draws it: a multi-process run produces exactly the samples of a single-process one.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.script_util import create_gaussian_diffusion, merged_flags

from ..common.seeding import stream_seed


def sampling_diffusion(model_flags: Mapping[str, Any], timestep_respacing: str = "") -> SpacedDiffusion:
    """The diffusion of ``model_flags`` with ``timestep_respacing`` (e.g. "ddim50", "250", "")
    instead of the training one; "" keeps every training step."""
    f = merged_flags(model_flags)
    return create_gaussian_diffusion(
        steps=f["diffusion_steps"], learn_sigma=f["learn_sigma"], noise_schedule=f["noise_schedule"],
        use_kl=f["use_kl"], predict_xstart=f["predict_xstart"], rescale_timesteps=f["rescale_timesteps"],
        rescale_learned_sigmas=f["rescale_learned_sigmas"], timestep_respacing=timestep_respacing,
    )


def sample_batch(model: torch.nn.Module, diffusion: SpacedDiffusion, batch_size: int, image_size: int,
                 seed: int, batch_index: int, use_ddim: bool = False, clip_denoised: bool = True,
                 device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """One batch of samples in [-1, 1], [B, 3, S, S] float32, drawn from the RNG stream of
    (seed, batch_index) without disturbing the caller's global RNG state."""
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(stream_seed("sample_batch", seed, batch_index))
        loop = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
        x = loop(model, (batch_size, 3, image_size, image_size), clip_denoised=clip_denoised,
                 device=device, progress=progress)
    return x.float().clamp(-1, 1)

