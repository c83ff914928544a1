"""Drawing images from a trained DDPM: ancestral or DDIM, with timestep respacing.

Every batch is seeded from (seed, batch index) alone, so a batch is the same images whichever
process draws it: a multi-process run produces exactly the samples of a single-process one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import torch

from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.script_util import create_gaussian_diffusion, merged_flags

from ..common.config import ConfigError
from ..common.seeding import stream_seed


def sampling_diffusion(model_flags: Mapping[str, Any], timestep_respacing: str = "") -> SpacedDiffusion:
    """The diffusion of ``model_flags`` with ``timestep_respacing`` (e.g. "ddim50", "250", "")
    instead of the training one; "" keeps every training step."""
    f = merged_flags(model_flags)
    try:
        return create_gaussian_diffusion(
            steps=f["diffusion_steps"], learn_sigma=f["learn_sigma"], noise_schedule=f["noise_schedule"],
            use_kl=f["use_kl"], predict_xstart=f["predict_xstart"], rescale_timesteps=f["rescale_timesteps"],
            rescale_learned_sigmas=f["rescale_learned_sigmas"], timestep_respacing=timestep_respacing,
        )
    except ValueError as e:  # a spacing this diffusion's length cannot give
        raise ConfigError(f"--timestep_respacing {timestep_respacing!r} does not fit this model's "
                          f"{f['diffusion_steps']} diffusion steps ({e}): give at most {f['diffusion_steps']} "
                          f"steps, e.g. ddim50 with --use_ddim True, or \"\" for every step") from None


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


@dataclass(frozen=True)
class BatchSampler:
    """How ddpm.generate draws batch k: ``draw(batch_size, k)`` gives samples [B, 3, H, W] float32 in
    [-1, 1] from the RNG stream of (seed, k) alone."""

    draw: Callable[[int, int], torch.Tensor]
    description: str  # what the log says the batches are drawn with: "ancestral, 1000 steps"


def diffusion_sampler(model: torch.nn.Module, diffusion: SpacedDiffusion, image_size: int, seed: int,
                      use_ddim: bool, clip_denoised: bool, device: torch.device) -> BatchSampler:
    """Batches of a guided-diffusion U-Net, drawn with ``diffusion``'s ancestral or DDIM loop."""
    def draw(batch_size: int, batch_index: int) -> torch.Tensor:
        return sample_batch(model, diffusion, batch_size, image_size, seed, batch_index, use_ddim=use_ddim,
                            clip_denoised=clip_denoised, device=device)

    return BatchSampler(draw, f"{'DDIM' if use_ddim else 'ancestral'}, {diffusion.num_timesteps} steps")


class SchedulerSample(Protocol):
    """A backbone's own sampling loop (features.diffusers_ddpm): ``n`` images in [-1, 1], every random
    draw from ``generator``; ``num_inference_steps`` None takes every training step."""

    def __call__(self, n: int, generator: torch.Generator, num_inference_steps: int | None = None,
                 use_ddim: bool = False, clip_sample: bool | None = None) -> torch.Tensor: ...


def scheduler_steps(timestep_respacing: str) -> int | None:
    """The sampling steps of a scheduler for a respacing string: None for "" (every training step), N for
    "N" or "ddimN"; a per-section spacing ("50,50") has no scheduler equivalent."""
    if not timestep_respacing:
        return None
    count = timestep_respacing.removeprefix("ddim")
    if not count.isdigit() or int(count) <= 0:
        raise ConfigError(f"timestep_respacing {timestep_respacing!r}: a diffusers scheduler samples with one "
                          f"number of steps: give N or ddimN (e.g. 250, or ddim50 with --use_ddim True), "
                          f"or \"\" for every training step")
    return int(count)


def scheduler_sampler(sample: SchedulerSample, seed: int, timestep_respacing: str, use_ddim: bool,
                      clip_denoised: bool) -> BatchSampler:
    """Batches of a backbone's own scheduler loop, batch k drawn from a CPU generator seeded with the
    (seed, k) stream, the stream guided-diffusion's batches are drawn from."""
    steps = scheduler_steps(timestep_respacing)

    def draw(batch_size: int, batch_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(stream_seed("sample_batch", seed, batch_index))
        return sample(batch_size, generator, num_inference_steps=steps, use_ddim=use_ddim, clip_sample=clip_denoised)

    return BatchSampler(draw, f"{'DDIM' if use_ddim else 'ancestral'}, "
                              f"{f'{steps} steps' if steps else 'every training step'} of the model's scheduler")
