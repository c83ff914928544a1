"""``model_type: "stable_diffusion"``: latent-diffusion U-Net features (DIFT, Diffusion Hyperfeatures).

``model_path`` is a pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``), or a hub id where the hub can be reached. Each image is VAE-encoded (the latent
distribution's mean times ``scaling_factor``), noised with the folder's scheduler (``add_noise``)
at every timestep of "steps", and passed once through the U-Net with the embedding of the fixed
"prompt"; the layers are hooked as ``unet_hooks`` describes, with strides in image pixels.

The prompt's embedding is a constant of the run: it is computed once and saved in the run's
exp_dir (``prompt_embedding_<hash>.safetensors``, the prompt in its metadata), and later builds
(`ddpmseg segment`, `ddpmseg evaluate`) read it there, so the text encoder is loaded once, then freed.
"prompt_embedding" names such a file explicitly. On CUDA the VAE and U-Net run under bf16
autocast (fp16 where bf16 is unsupported); maps come back float32.

The noise lives in latent space, so the run's shared image-space noise does not fit: with
"share_noise" one latent noise tensor, drawn once from the latent_noise stream, serves every
image and step (as published for the pixel-space U-Nets); without, each call draws fresh noise
from the feature_noise stream. "noise_draws" K > 1 adds K - 1 latent draws of the same kind
(``noise_draws``); the image is encoded once and the U-Net's maps are averaged over the draws.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from typing import Callable

import torch

from ..common.atomic import atomic_write
from ..common.config import ConfigError
from ..common.seeding import stream_generator
from .family_keys import reject_unread_keys
from .noise_draws import NoiseDraw, extra_draws, mean_over_draws
from .registry import Backbone, Layer, register
from .unet_hooks import (check_layer_names, config_layer_names, hookable_layers, hooked_forward,
                         model_folder, read_json, scheduler_from_folder, split_steps, timestep_layers, unet_grid)

DOWNLOAD_HINT = "bash checkpoints/stable_diffusion/download_checkpoint.sh NAME, NAME one of sd15, sd21"
PARTS = ("unet", "vae", "scheduler")  # the text encoder and tokenizer are needed only without a saved embedding
# What a hub id's download takes: the float32 safetensors of each part (a hub pipeline also holds
# fp16 variants and single-file checkpoints of several GB, which this backbone never reads).
HUB_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json", "text_encoder/model.safetensors",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors")
# Candidate timesteps of `ddpmseg select`: DIFT's t = 261 and a spread around it.
CANDIDATE_STEPS = [50, 100, 200, 261, 400, 600]


def _vae_factor(vae_config: dict) -> int:
    """Image pixels per latent pixel: each VAE encoder block but the last halves the image."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def _num_train_timesteps(folder: str) -> int:
    return read_json(os.path.join(folder, "scheduler", "scheduler_config.json"), "config").get("num_train_timesteps", 1000)


def embedding_path(cfg: dict, folder: str) -> str:
    """Where a run saves (and later finds) its prompt embedding: in exp_dir, named by prompt and model."""
    if cfg["prompt_embedding"]:
        return cfg["prompt_embedding"]
    key = hashlib.sha256(f"{os.path.realpath(folder)}\n{cfg['prompt']}".encode()).hexdigest()[:12]
    return os.path.join(cfg["exp_dir"], f"prompt_embedding_{key}.safetensors")


def encode_prompt(folder: str, prompt: str) -> torch.Tensor:
    """[1, 77, D] float32: the CLIP text encoder's last hidden state of ``prompt``, padded to the
    tokenizer's length, as StableDiffusionPipeline.encode_prompt computes it (no clip skip)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
    # A tokenizer_config.json without model_max_length leaves it "unlimited": the encoder's positions bound it.
    length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def save_embedding(path: str, embedding: torch.Tensor, prompt: str) -> None:
    from safetensors.torch import save

    data = save({"embedding": embedding.contiguous()}, metadata={"prompt": prompt})
    atomic_write(path, lambda f: f.write(data))


def load_embedding(path: str, prompt: str, where: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        saved = (f.metadata() or {}).get("prompt")
        embedding = f.get_tensor("embedding")
    if saved != prompt:
        raise ConfigError(f"{where}: {path} holds the embedding of the prompt {saved!r}, the config's prompt is "
                          f"{prompt!r}: set \"prompt\" to it, or \"prompt_embedding\": \"\" to compute the new one")
    return embedding


@register
class StableDiffusion(Backbone):
    model_type = "stable_diffusion"
    uses_timesteps = True
    can_sample = False
    hooks_fixed_layers = False

    def __init__(self, unet, vae, scheduler, embedding: torch.Tensor, steps: list[int], layer_names: list[str],
                 size: tuple[int, int], device: torch.device, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, extra_draws: list[NoiseDraw] = ()):
        self.unet = unet.to(device).eval().requires_grad_(False)
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.embedding = embedding.to(device)
        self.steps = [int(t) for t in steps]
        self.layer_names = list(layer_names)
        self.size = size
        self.device = device
        self.factor = _vae_factor(vae.config)
        # The latent noise of every call (shared), else fresh draws from ``generator``.
        self.shared_noise = noise
        self.generator = generator if generator is not None else torch.Generator(device=device)
        self.extra_draws = list(extra_draws)  # latent draws 1..K-1 averaged with that one
        # bf16 keeps float32's range (fp16 can overflow in SD's attention), where the GPU has it.
        self.autocast = None if device.type != "cuda" else (
            torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @classmethod
    def _folder(cls, cfg: dict, where: str) -> str:
        if cfg["random_weights"]:
            raise ConfigError(f"{where}: model_type 'stable_diffusion' has no random-weights build: set "
                              f"\"random_weights\": false and name a pipeline folder in \"model_path\" ({DOWNLOAD_HINT})")
        folder = model_folder(cfg["model_path"], "Stable Diffusion pipeline", DOWNLOAD_HINT, where, HUB_FILES)
        missing = [p for p in PARTS if not os.path.isdir(os.path.join(folder, p))]
        if missing:
            raise ConfigError(f"{where}: {folder} is no Stable Diffusion pipeline folder: it lacks "
                              f"{', '.join(p + '/' for p in missing)} ({DOWNLOAD_HINT})")
        return folder

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        from diffusers import UNet2DConditionModel

        if cfg["random_weights"]:  # first: this error is more precise than the generic one
            cls._folder(cfg, where)
        super().check_config(cfg, where)
        reject_unread_keys(cfg, where, cls.model_type, ("hook_layers", "prompt", "prompt_embedding"))
        if not os.path.isdir(cfg["model_path"]):  # to download, or a hub id: from_config checks it (no download here)
            return
        folder = cls._folder(cfg, where)
        arch = read_json(os.path.join(folder, "unet", "config.json"), where)
        with torch.device("meta"):  # the layer catalogue only: no memory, no weights
            unet = UNet2DConditionModel.from_config({k: v for k, v in arch.items() if not k.startswith("_")})
        check_layer_names(config_layer_names(cfg), [n for n, _, _ in hookable_layers(unet)], where)
        factor = _vae_factor(read_json(os.path.join(folder, "vae", "config.json"), where))
        if cfg["dim"][0] % factor or cfg["dim"][1] % factor:
            raise ConfigError(f"{where}: the VAE encodes {factor} x {factor} pixels into one latent, so 'dim' must "
                              f"be a multiple of {factor}, got {cfg['dim'][:2]}")
        steps = _num_train_timesteps(folder)
        bad = [t for t in cfg["steps"] if not 0 <= t < steps]
        if not cfg["steps"] or bad:
            raise ConfigError(f"{where}: model_type 'stable_diffusion' needs timesteps in \"steps\" within "
                              f"0..{steps - 1} (e.g. [261]), got {cfg['steps']}")
        path = embedding_path(cfg, folder)
        if cfg["prompt_embedding"] and not os.path.isfile(path):
            raise ConfigError(f"{where}: prompt_embedding {path} not found: set \"prompt_embedding\": \"\" to compute "
                              f"it from the prompt")
        if not os.path.isfile(path) and not all(os.path.isdir(os.path.join(folder, p))
                                                for p in ("text_encoder", "tokenizer")):
            raise ConfigError(f"{where}: no saved prompt embedding ({path}) and no text_encoder/ + tokenizer/ in "
                              f"{folder} to compute it: download the whole pipeline ({DOWNLOAD_HINT})")

    @classmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Every up block at ``CANDIDATE_STEPS``, or the given steps / blocks if they exist."""
        folder = cls._folder(cfg, "config")
        num_up = len(read_json(os.path.join(folder, "unet", "config.json"), "config")["up_block_types"])
        return unet_grid(cfg, num_up, _num_train_timesteps(folder), CANDIDATE_STEPS, steps, blocks)

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "StableDiffusion":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = cls._folder(cfg, "config")
        path = embedding_path(cfg, folder)
        if os.path.isfile(path):
            embedding = load_embedding(path, cfg["prompt"], "config")
            log(f"stable_diffusion: prompt embedding read from {path}")
        else:  # the text encoder lives only inside encode_prompt: freed when it returns
            embedding = encode_prompt(folder, cfg["prompt"])
            save_embedding(path, embedding, cfg["prompt"])
            log(f"stable_diffusion: prompt {cfg['prompt']!r} encoded once, saved to {path}")
        unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"))
        if embedding.shape[-1] != unet.config.cross_attention_dim:
            raise ConfigError(f"config: the prompt embedding {path} has width {embedding.shape[-1]}, this U-Net "
                              f"attends to {unet.config.cross_attention_dim}: it belongs to another model")
        vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"))
        scheduler = scheduler_from_folder(os.path.join(folder, "scheduler"))
        log(f"stable_diffusion: loaded {folder}")
        size = (cfg["dim"][0], cfg["dim"][1])
        factor = _vae_factor(vae.config)
        latent = (1, vae.config.latent_channels, size[0] // factor, size[1] // factor)
        noise = torch.randn(latent, generator=stream_generator("latent_noise", cfg["seed"])) if cfg["share_noise"] \
            else None
        extra = extra_draws(cfg["seed"], cfg["noise_draws"], latent if cfg["share_noise"] else None, device)
        return cls(unet, vae, scheduler, embedding, cfg["steps"], config_layer_names(cfg), size, device,
                   noise, stream_generator("feature_noise", cfg["seed"], device=device), extra)

    def layers(self) -> list[Layer]:
        return timestep_layers(self.unet, self.layer_names, self.steps, scale=self.factor)

    def input_size(self) -> tuple[int, int]:
        return self.size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of ``images`` in [-1, 1]: the VAE posterior's mean, scaled as the U-Net was trained."""
        mean = self.vae.encode(images).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (mean - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``noise`` (the run's image-space noise) is not used: the noise is latent, see the module doc.
        The image is encoded once; the maps are the mean over the noise draws, one U-Net pass each."""
        autocast = nullcontext() if self.autocast is None else torch.autocast("cuda", dtype=self.autocast)
        with autocast:
            z0 = self.encode(images.to(self.device, self.vae.dtype))
            first = NoiseDraw(self.shared_noise, self.generator)
            return mean_over_draws(lambda draw: self._one_draw(z0, draw), [first, *self.extra_draws])

    def _one_draw(self, z0: torch.Tensor, draw: NoiseDraw) -> list[torch.Tensor]:
        """The maps of latents ``z0`` under one noise draw: one U-Net pass of the S noised copies."""
        S, n = len(self.steps), z0.shape[0]
        if draw.shared is not None:
            eps = draw.shared.to(self.device, z0.dtype).expand_as(z0).repeat(S, 1, 1, 1)
        else:
            eps = torch.randn((S * n, *z0.shape[1:]), generator=draw.generator, dtype=z0.dtype, device=self.device)
        t = torch.tensor(self.steps, dtype=torch.long, device=self.device).repeat_interleave(n)
        z_t = self.scheduler.add_noise(z0.repeat(S, 1, 1, 1), eps, t)
        context = self.embedding.to(self.unet.dtype).expand(S * n, -1, -1)
        maps = hooked_forward(self.unet, self.layer_names, lambda: self.unet(z_t, t, encoder_hidden_states=context))
        return split_steps(maps, S, n)
