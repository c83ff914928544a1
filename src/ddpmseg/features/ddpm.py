"""Pixel features from a frozen guided-diffusion U-Net (Baranchuk et al., ICLR'22).

For each timestep t in ``steps`` the image is noised with q_sample (one shared noise tensor);
one U-Net forward takes all steps (and all images) as one batch, and forward hooks on
``output_blocks[b]`` for b in ``blocks`` keep the block outputs (or inputs). The list is
step-major, then ascending block index: the original's feature order. The forward stops right
after the last hooked block, since later decoder blocks (the most expensive, at full
resolution) cannot change the hooked values.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from guided_diffusion.checkpoint import load_model_and_diffusion


class _StopForward(Exception):
    """Raised by the last hook: the rest of the U-Net is not needed for features."""


class FeatureExtractorDDPM:
    """Callable: ``extractor(img, noise=None)`` -> list of activations [N, C, h, w] (float32, or
    float64 for a float64 model).

    Pass ``model_path`` and the guided-diffusion flags as keywords (like the original), or an
    already-built ``model`` and ``diffusion``.
    """

    def __init__(self, model_path: str | None = None, steps: Sequence[int] = (50, 150, 250),
                 blocks: Sequence[int] = (5, 6, 7, 8, 12), input_activations: bool = False,
                 device: str | torch.device = "cpu", model=None, diffusion=None, **model_flags: Any):
        if model is None:
            if model_path is None:
                raise ValueError("give model_path (with the model flags) or model and diffusion")
            model, diffusion = load_model_and_diffusion(model_path, model_flags, device)
        self.model, self.diffusion = model.eval(), diffusion
        self.device = torch.device(device)
        self.steps = [int(t) for t in steps]
        self.blocks = sorted(int(b) for b in blocks)  # hooks fire in block order, as published
        n = len(model.output_blocks)
        bad = [b for b in self.blocks if not 0 <= b < n]
        if bad:
            raise ValueError(f"blocks {bad} do not exist: this U-Net has output_blocks 0..{n - 1}")
        bad_t = [t for t in self.steps if not 0 <= t < diffusion.num_timesteps]
        if bad_t:
            raise ValueError(f"steps {bad_t} out of range 0..{diffusion.num_timesteps - 1}")
        self.input_activations = input_activations
        self._acts: list[torch.Tensor] = []
        self._active = False
        self._handles = [model.output_blocks[b].register_forward_hook(self._hook(last=b == self.blocks[-1]))
                         for b in self.blocks]

    def _hook(self, last: bool):
        def hook(module, inputs, output):
            if not self._active:  # the same U-Net may also be sampling (DatasetDDPM)
                return
            value = inputs[0] if self.input_activations else output
            # float32 for float16/bfloat16 torsos (as published); float64 stays float64 (tests).
            self._acts.append(value.detach().to(torch.promote_types(value.dtype, torch.float32)))
            if last:
                raise _StopForward
        return hook

    def close(self) -> None:
        """Remove the hooks, leaving the U-Net as it was (for a model that outlives the extractor)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Activations of ``img`` [N, 3, H, W] at every step: one U-Net forward for all of them.

        The S noised copies of the N images go through the U-Net as one batch of S*N (step-major),
        which computes exactly what S forwards of N would: every layer of the U-Net treats batch
        entries independently (GroupNorm, attention and convolutions are per sample), and each
        entry carries its own timestep. ``noise`` serves every step, as published; None draws
        fresh noise for each step in turn, as q_sample did in the one-forward-per-step loop.
        """
        img = img.to(self.device)
        S, n = len(self.steps), img.shape[0]
        if noise is None:
            noise = torch.cat([torch.randn_like(img) for _ in self.steps])
        else:
            noise = noise.to(self.device).expand_as(img).repeat(S, 1, 1, 1)
        tt = torch.tensor(self.steps, dtype=torch.long, device=self.device).repeat_interleave(n)
        x_t = self.diffusion.q_sample(img.repeat(S, 1, 1, 1), tt, noise=noise)
        self._acts = []
        self._active = True
        try:
            self.model(x_t, self.diffusion._scale_timesteps(tt))
        except _StopForward:
            pass
        finally:
            self._active = False
        # [S*N, C, h, w] per block -> step-major list of [N, C, h, w], the original's order.
        return [a[s * n:(s + 1) * n] for s in range(S) for a in self._acts]


def collect_features(args: dict, activations: Sequence[torch.Tensor], sample_idx: int = 0) -> torch.Tensor:
    """Upsample every activation of one sample to ``args['dim'][:2]`` and concatenate: [C, H, W].

    The full tensor is what the original stores per image; the pipeline itself never builds it
    (see ddpmseg.features.store), but this is the reference it is tested against.
    """
    size = tuple(args["dim"][:2])
    mode = args.get("upsample_mode", "bilinear")
    maps = [F.interpolate(a[sample_idx][None].float(), size=size, mode=mode,
                          align_corners=False if mode in ("bilinear", "bicubic") else None)[0]
            for a in activations]
    return torch.cat(maps, dim=0)


def shared_noise(seed: int, size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The original's one noise tensor for all images and steps: a generator on ``device``
    seeded with ``seed`` (a CUDA generator gives a different stream than the CPU one)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g, device=device)


class RGBPositionFeatures:
    """The no-context baseline: each pixel's colour and (x, y) position, all in [-1, 1].

    Same interface as FeatureExtractorDDPM (one [N, 5, H, W] activation at full resolution),
    so the store, the ensemble and evaluation run unchanged on it.
    """

    def __call__(self, img: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        n, _, h, w = img.shape
        ys = torch.linspace(-1, 1, h, device=img.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=img.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return [torch.cat([img.float(), xs, ys], dim=1)]
