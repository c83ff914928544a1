"""``model_type: "diffusers"``: features of any diffusers ``UNet2DModel`` (e.g. the hub's
``google/ddpm-ema-{bedroom,cat,church,celebahq}-256``).

``model_path`` is a folder in ``save_pretrained`` layout: the U-Net's ``config.json`` and weights
either at the top (as the google/ddpm-* repositories keep them) or in ``unet/``, and the
scheduler's ``scheduler_config.json`` at the top or in ``scheduler/``. A hub id is fetched only
where the hub can be reached. Each image is noised with the folder's scheduler (``add_noise``) at
every timestep of "steps" (the run's shared noise, as for the guided-diffusion U-Net); one U-Net
pass takes all of them, hooked as ``unet_hooks`` describes (one pass per draw when "noise_draws"
averages several, see ``noise_draws``). ``sample()`` draws images with the
folder's scheduler (DDPMPipeline's loop).
These are Ho et al. DDPMs, not the paper's ADM U-Nets: the paper's block indices do not carry over
(`ddpmseg select` searches every up block at a spread of timesteps).
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from ..common.config import ConfigError
from ..common.seeding import stream_generator, stream_seed
from .ddpm import shared_noise
from .family_keys import reject_unread_keys
from .noise_draws import NoiseDraw, extra_draws, mean_over_draws
from .registry import Backbone, Layer, register
from .unet_hooks import (check_layer_names, config_layer_names, hookable_layers, hooked_forward, model_folder,
                         read_json, scheduler_from_folder, split_steps, timestep_layers, unet_grid)

DOWNLOAD_HINT = "bash checkpoints/diffusers/download_checkpoint.sh NAME, NAME one of bedroom, cat, church, celebahq"

# The architecture of random_weights runs: the google/ddpm-ema-*-256 U-Nets (Ho et al.'s 256 px
# DDPM); the config's model_flags may change any UNet2DModel argument.
DDPM_256_ARCHITECTURE = {
    "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "resnet_time_scale_shift": "default", "freq_shift": 1, "flip_sin_to_cos": False,
}

# A spread of noise levels over the 1000 training steps, from the paper's (50..250) into the
# coarse range where DIFT's best DDPM features lie (t = 101) and beyond.
CANDIDATE_STEPS = [25, 50, 100, 150, 250, 400, 600]


def _folder(cfg: dict, where: str) -> str:
    """The model folder of ``cfg`` (a hub id's download takes the U-Net's and scheduler's files only)."""
    return model_folder(cfg["model_path"], "diffusers UNet2DModel", DOWNLOAD_HINT, where,
                        ("*.json", "diffusion_pytorch_model.*", "unet/*", "scheduler/*"))


def _unet_folder(folder: str) -> str:
    return os.path.join(folder, "unet") if os.path.isfile(os.path.join(folder, "unet", "config.json")) else folder


def _scheduler_folder(folder: str) -> str:
    sub = os.path.join(folder, "scheduler")
    return sub if os.path.isfile(os.path.join(sub, "scheduler_config.json")) else folder


def _num_train_timesteps(cfg: dict) -> int:
    folder = _scheduler_folder(_folder(cfg, "config"))
    return read_json(os.path.join(folder, "scheduler_config.json"), "config").get("num_train_timesteps", 1000)


def _architecture(cfg: dict, where: str) -> dict:
    """The UNet2DModel config of ``cfg`` (read from its folder, or the random-weights architecture)."""
    if cfg["random_weights"]:
        return {**DDPM_256_ARCHITECTURE, **cfg["model_flags"]}
    folder = _folder(cfg, where)
    return read_json(os.path.join(_unet_folder(folder), "config.json"), where)


@register
class DiffusersDDPM(Backbone):
    model_type = "diffusers"
    uses_timesteps = True
    can_sample = True
    samples_with_own_scheduler = True  # the folder's scheduler, as DDPMPipeline samples
    hooks_fixed_layers = False

    def __init__(self, unet, scheduler, steps: list[int], layer_names: list[str], size: tuple[int, int],
                 device: torch.device, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 extra_draws: list[NoiseDraw] = ()):
        self.unet = unet.to(device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.steps = [int(t) for t in steps]
        self.layer_names = list(layer_names)
        self.size = size
        self.device = device
        # The default noise of every call (the run's shared noise), else fresh draws from ``generator``.
        self.noise = noise
        self.generator = generator if generator is not None else torch.Generator(device=device)
        self.extra_draws = list(extra_draws)  # draws 1..K-1 averaged with that one (noise_draws.extra_draws)

    # ------------------------------------------------------------------ config side

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        """The keys, and (when the model folder is here) the layers, size and steps against it. A folder
        still to download, or a hub id, is checked by from_config: validation never downloads."""
        super().check_config(cfg, where)
        reject_unread_keys(cfg, where, cls.model_type, ("hook_layers",))
        if not (cfg["random_weights"] or os.path.isdir(cfg["model_path"])):
            return
        arch = _architecture(cfg, where)
        if arch.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ConfigError(f"{where}: model_type 'diffusers' reads a UNet2DModel, the folder holds a "
                              f"{arch['_class_name']} (a Stable Diffusion pipeline needs model_type "
                              f"'stable_diffusion')")
        unet = cls._build_unet(arch, meta=True)
        check_layer_names(config_layer_names(cfg), [n for n, _, _ in hookable_layers(unet)], where)
        factor = 2 ** sum(getattr(b, "downsamplers", None) is not None for b in unet.down_blocks)
        if cfg["dim"][0] % factor:
            raise ConfigError(f"{where}: this U-Net halves the image {factor.bit_length() - 1} times, so 'dim' must "
                              f"be a multiple of {factor}, got {cfg['dim'][0]}")
        num_t = 1000 if cfg["random_weights"] else _num_train_timesteps(cfg)
        bad = [t for t in cfg["steps"] if not 0 <= t < num_t]
        if not cfg["steps"] or bad:
            raise ConfigError(f"{where}: model_type 'diffusers' needs timesteps in \"steps\" within 0..{num_t - 1} "
                              f"(e.g. [50, 150]), got {cfg['steps']}")

    @classmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Every up block at ``CANDIDATE_STEPS``, or the given steps / blocks if they exist."""
        num_up = len(_architecture(cfg, "config")["up_block_types"])
        num_t = 1000 if cfg["random_weights"] else _num_train_timesteps(cfg)
        return unet_grid(cfg, num_up, num_t, CANDIDATE_STEPS, steps, blocks)

    @staticmethod
    def _build_unet(arch: dict, meta: bool = False):
        from diffusers import UNet2DModel

        config = {k: v for k, v in arch.items() if not k.startswith("_")}
        if meta:  # the layer catalogue only: no memory, no weights
            with torch.device("meta"):
                return UNet2DModel.from_config(config)
        return UNet2DModel.from_config(config)

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "DiffusersDDPM":
        from diffusers import DDPMScheduler, UNet2DModel

        size = (cfg["dim"][0], cfg["dim"][1])
        if cfg["random_weights"]:
            # Drawn on the CPU, so that a seed gives the same U-Net on every device.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed("backbone_init", cfg["seed"]))
                unet = cls._build_unet(_architecture(cfg, "config"))
            scheduler = DDPMScheduler()  # diffusers' default: Ho et al.'s linear 1e-4..0.02 over 1000 steps
            log(f"diffusers: random weights (seed {cfg['seed']}), the google/ddpm-256 architecture")
        else:
            folder = _folder(cfg, "config")
            unet = UNet2DModel.from_pretrained(_unet_folder(folder))
            scheduler = scheduler_from_folder(_scheduler_folder(folder))
            log(f"diffusers: loaded {folder} ({type(scheduler).__name__}, "
                f"{scheduler.config.num_train_timesteps} steps)")
        # Noise as the guided-diffusion backbone draws it: the seed's shared image noise, or the
        # feature_noise stream per call; and the config's noise_draws - 1 further draws.
        noise = shared_noise(cfg["seed"], size[0], device) if cfg["share_noise"] else None
        extra = extra_draws(cfg["seed"], cfg["noise_draws"], (1, 3, *size) if cfg["share_noise"] else None, device)
        return cls(unet, scheduler, cfg["steps"], config_layer_names(cfg), size, device, noise,
                   stream_generator("feature_noise", cfg["seed"], device=device), extra)

    # ------------------------------------------------------------------ features

    def layers(self) -> list[Layer]:
        return timestep_layers(self.unet, self.layer_names, self.steps, scale=1)

    def input_size(self) -> tuple[int, int]:
        return self.size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """One U-Net pass over the S noised copies of the N images (step-major batch of S*N): every
        layer treats batch entries independently, so it equals S passes of N. ``noise`` replaces draw 0's
        default noise; with extra draws the maps are the mean over the draws, one pass each."""
        x0 = images.to(self.device, self.unet.dtype)
        first = NoiseDraw(self.noise if noise is None else noise, self.generator)
        return mean_over_draws(lambda draw: self._one_draw(x0, draw), [first, *self.extra_draws])

    def _one_draw(self, x0: torch.Tensor, draw: NoiseDraw) -> list[torch.Tensor]:
        """The maps of ``x0`` under one noise draw: one U-Net pass of the S noised copies."""
        dtype = self.unet.dtype
        S, n = len(self.steps), x0.shape[0]
        if draw.shared is None:  # fresh noise for every step, as q_sample drew it per step
            eps = torch.randn((S * n, *x0.shape[1:]), generator=draw.generator, dtype=dtype, device=self.device)
        else:  # the run's one noise tensor serves every image and step, as published
            eps = draw.shared.to(self.device, dtype).expand_as(x0).repeat(S, 1, 1, 1)
        t = torch.tensor(self.steps, dtype=torch.long, device=self.device).repeat_interleave(n)
        x_t = self.scheduler.add_noise(x0.repeat(S, 1, 1, 1), eps, t)
        maps = hooked_forward(self.unet, self.layer_names, lambda: self.unet(x_t, t))
        return split_steps(maps, S, n)

    # ------------------------------------------------------------------ sampling

    def _sampling_scheduler(self, use_ddim: bool, clip_sample: bool | None):
        """The folder's scheduler, or one built from its config as DDIM and / or with ``clip_sample``."""
        if not use_ddim and clip_sample is None:
            return self.scheduler
        from diffusers import DDIMScheduler

        kind = DDIMScheduler if use_ddim else type(self.scheduler)
        clip = self.scheduler.config.get("clip_sample", True) if clip_sample is None else clip_sample
        return kind.from_config(self.scheduler.config, clip_sample=clip)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, num_inference_steps: int | None = None,
               use_ddim: bool = False, clip_sample: bool | None = None) -> torch.Tensor:
        """``n`` images [n, 3, H, W] in [-1, 1] drawn with the folder's scheduler (all its training
        steps by default, as DDPMPipeline does; ``use_ddim``: DDIM with eta 0 on its config;
        ``clip_sample`` None: the folder's setting); every random draw comes from ``generator`` (CPU)."""
        dtype = self.unet.dtype
        scheduler = self._sampling_scheduler(use_ddim, clip_sample)
        scheduler.set_timesteps(num_inference_steps or scheduler.config.num_train_timesteps)
        x = torch.randn((n, self.unet.config.in_channels, *self.size), generator=generator, dtype=dtype)
        x = x.to(self.device)
        for t in scheduler.timesteps:
            eps = self.unet(x, t.to(self.device)).sample
            # The scheduler draws its variance noise on the generator's device, then we move it.
            x = scheduler.step(eps.cpu(), t, x.cpu(), generator=generator).prev_sample.to(self.device)
        return x.clamp(-1, 1).float()
