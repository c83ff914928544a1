"""Pixel features from a frozen guided-diffusion U-Net (Baranchuk et al., ICLR'22).

For each timestep t in ``steps`` the image is noised with q_sample (one shared noise tensor);
one U-Net forward takes all steps (and all images) as one batch (one forward per noise draw when the
config's noise_draws K > 1 averages them, see ``noise_draws``), and forward hooks on
``output_blocks[b]`` for b in ``blocks`` keep the block outputs (or inputs). The list is
step-major, then ascending block index: the original's feature order. The forward stops right
after the last hooked block, since later decoder blocks (the most expensive, at full
resolution) cannot change the hooked values.

``FeatureExtractorDDPM`` is the backbone of ``"model_type": "ddpm"`` (ddpmseg.features.registry).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from guided_diffusion.checkpoint import CheckpointError, load_model_and_diffusion
from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.unet import Downsample, ResBlock, Upsample

from ..common.config import ConfigError
from ..common.seeding import stream_generator, stream_seed
from .noise_draws import NoiseDraw, extra_draws, mean_over_draws
from .registry import Backbone, Layer, register
from .unet_hooks import check_steps_and_blocks

# `ddpmseg select`'s default step grid as fractions of the diffusion's length: for 1000 steps 10, 25, 50,
# 100, 150, 250, 500, 800 -- denser at small t, where the paper's best features are, and holding the
# hand-set protocol's 50/150/250 so the selection can rediscover it.
DEFAULT_STEP_FRACTIONS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.8)


class _StopForward(Exception):
    """Raised by the last hook: the rest of the U-Net is not needed for features."""


def _resamples(block: torch.nn.Module, kind: type) -> bool:
    """Whether a U-Net block changes resolution: holds a ``kind`` (Upsample / Downsample) layer, or a
    ResBlock that resamples with one (resblock_updown)."""
    return any(isinstance(m, kind) or isinstance(m, ResBlock) and isinstance(m.h_upd, kind) for m in block)


def unet_block_layers(model: torch.nn.Module, input_activations: bool) -> list[tuple[int, int]]:
    """(channels, stride) of every ``output_blocks[b]`` output (or input), read from the U-Net's modules."""
    stride = 2 ** sum(_resamples(b, Downsample) for b in model.input_blocks)
    shapes = []
    for block in model.output_blocks:
        first = block[0]  # every decoder block opens with the ResBlock that takes the skip connection
        after = stride // 2 if _resamples(block, Upsample) else stride
        shapes.append((first.in_layers[-1].in_channels, stride) if input_activations else (first.out_channels, after))
        stride = after
    return shapes


@register
class FeatureExtractorDDPM(Backbone):
    """Callable: ``extractor(img, noise=None)`` -> list of activations [N, C, h, w] (float32, or
    float64 for a float64 model).

    Pass ``model_path`` and the guided-diffusion flags as keywords (like the original), or an
    already-built ``model`` and ``diffusion``. ``noise`` is the default noise of every call (the
    run's shared noise); ``generator`` draws fresh noise where neither gives one (else the global RNG).
    ``extra_draws`` are noise draws 1..K-1 (``noise_draws.extra_draws``): each call then returns the
    mean of the activations over draw 0 (the above) and them.
    """

    model_type = "ddpm"
    uses_timesteps = True
    can_sample = True
    hooks_fixed_layers = False
    takes_model_flags = True

    def __init__(self, model_path: str | None = None, steps: Sequence[int] = (50, 150, 250),
                 blocks: Sequence[int] = (5, 6, 7, 8, 12), input_activations: bool = False,
                 device: str | torch.device = "cpu", model=None, diffusion=None, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, extra_draws: Sequence[NoiseDraw] = (),
                 **model_flags: Any):
        if model is None:
            if model_path is None:
                raise ValueError("give model_path (with the model flags) or model and diffusion")
            model, diffusion = load_model_and_diffusion(model_path, model_flags, device)
        self.model, self.diffusion = model.eval(), diffusion
        self.device = torch.device(device)
        self.steps = [int(t) for t in steps]
        self.blocks = sorted(int(b) for b in blocks)  # hooks fire in block order, as published
        check_steps_and_blocks(self.steps, self.blocks, diffusion.num_timesteps, len(model.output_blocks),
                               ("'steps'", "'blocks'"))
        self.input_activations = input_activations
        self.noise, self.generator = noise, generator
        self.extra_draws = list(extra_draws)
        self.image_size: int | None = None  # from_config sets it: the config's working resolution
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

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "FeatureExtractorDDPM":
        """The U-Net of ``cfg`` (random weights from the "unet_init" stream without a checkpoint), with the
        shared noise of the seed when ``share_noise``, else fresh noise per call from "feature_noise";
        and the config's noise_draws - 1 further draws."""
        seed, size = cfg["seed"], cfg["dim"][0]
        cls.candidate_grid(cfg, model_flags, cfg["steps"], cfg["blocks"], names=("'steps'", "'blocks'"))  # before loading
        model, diffusion = load_model_and_diffusion(cfg["model_path"] or None, model_flags, device,
                                                    seed=stream_seed("unet_init", seed))
        noise = shared_noise(seed, size, device) if cfg["share_noise"] else None
        extractor = cls(steps=cfg["steps"], blocks=cfg["blocks"], input_activations=cfg["input_activations"],
                        device=device, model=model, diffusion=diffusion, noise=noise,
                        generator=stream_generator("feature_noise", seed, device=device),
                        extra_draws=extra_draws(seed, cfg["noise_draws"],
                                                (1, 3, size, size) if cfg["share_noise"] else None, device))
        extractor.image_size = size
        return extractor

    @classmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None,
                       names: tuple[str, str] = ("--steps", "--blocks")) -> tuple[list[int], list[int]]:
        """Every decoder block at ``DEFAULT_STEP_FRACTIONS`` of the diffusion, or the given ones if they exist
        (``names``: what the error calls the steps and blocks the user gave)."""
        try:
            with torch.device("meta"):  # only the U-Net's structure is needed: no weights are allocated
                model, diffusion = create_model_and_diffusion(**model_flags)
        except (TypeError, ValueError) as e:  # as load_model_and_diffusion reports flags it cannot build from
            raise CheckpointError(f"cannot build a U-Net from these model flags: {e}") from None
        num_timesteps, num_blocks = diffusion.num_timesteps, len(model.output_blocks)
        steps = sorted(steps if steps is not None else {round(f * num_timesteps) for f in DEFAULT_STEP_FRACTIONS})
        blocks = sorted(blocks if blocks is not None else range(num_blocks))
        check_steps_and_blocks(steps, blocks, num_timesteps, num_blocks, names)
        return steps, blocks

    def input_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError("an extractor built from a model has no input size of its own; the images set it")
        return self.image_size, self.image_size

    def layers(self) -> list[Layer]:
        """"step t, block b" for every step, then block (the extraction order)."""
        shapes = unet_block_layers(self.model, self.input_activations)
        return [Layer(f"step {t}, block {b}", *shapes[b]) for t in self.steps for b in self.blocks]

    def sampling_network(self) -> torch.nn.Module:
        return self.model

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
        fresh noise for each step in turn, as q_sample did in the one-forward-per-step loop. With
        ``extra_draws`` that is draw 0 (``noise`` replaces the default noise of draw 0 only), and the
        result is the mean over the draws, one forward each.
        """
        img = img.to(self.device)
        first = NoiseDraw(self.noise if noise is None else noise, self.generator)
        return mean_over_draws(lambda draw: self._one_draw(img, draw), [first, *self.extra_draws])

    def _one_draw(self, img: torch.Tensor, draw: NoiseDraw) -> list[torch.Tensor]:
        """The activations of ``img`` under one noise draw: one forward of the S noised copies."""
        S, n = len(self.steps), img.shape[0]
        if draw.shared is None:
            noise = torch.cat([torch.randn(img.shape, generator=draw.generator, dtype=img.dtype, device=img.device)
                               for _ in self.steps])
        else:
            noise = draw.shared.to(self.device).expand_as(img).repeat(S, 1, 1, 1)
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
