"""The backbone interface and the registry of backbone families, keyed by the config's ``model_type``.

A family is one module of ``ddpmseg.features`` holding one ``Backbone`` subclass decorated with
``@register``; ``ddpmseg.features`` imports every family module, so the registry is complete once
the package is imported. Everything the rest of the package needs to know about a backbone (which
config keys fit it, its default search grid, its layers, whether it can sample) is asked of its
class here, never decided by comparing ``model_type`` values elsewhere.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..common.config import BACKBONE_CLASSES, ConfigError


@dataclass(frozen=True)
class Layer:
    """One feature map a backbone returns."""
    name: str  # as users and error messages name it: "step 50, block 6", "up_blocks.1", "blocks.11"
    channels: int
    stride: int  # input pixels per map pixel at the backbone's input size


class Backbone(abc.ABC):
    """A frozen feature extractor built from a validated config: images in, native-resolution maps out."""

    model_type: ClassVar[str]  # the config's "model_type" value this class serves
    uses_timesteps: ClassVar[bool]  # True: config "steps" are noise levels; False: "steps" must be []
    can_sample: ClassVar[bool]  # True: generate_dataset.py (DatasetDDPM) may draw samples with it
    # True: samples come from the backbone's own loop (``sample``); False (a can_sample backbone):
    # guided-diffusion's samplers draw them with ``sampling_network()`` and the run's flags.
    samples_with_own_scheduler: ClassVar[bool] = False
    hooks_fixed_layers: ClassVar[bool]  # True: "blocks" must be [] (the layers are fixed, e.g. MAE, SwAV)
    has_weights: ClassVar[bool] = True  # False: nothing to load (rgb_xy), so "random_weights" is refused
    takes_model_flags: ClassVar[bool] = False  # True: guided-diffusion MODEL_FLAGS configure it

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        """Raise ConfigError (prefixed with ``where``) for keys of ``cfg`` that do not fit this backbone:
        steps and blocks against ``uses_timesteps`` / ``hooks_fixed_layers``, then the weight keys."""
        check_layer_keys(cls, cfg, where)
        check_weight_keys(cls, cfg, where)

    @classmethod
    @abc.abstractmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None) -> tuple[list[int], list[int]]:
        """(steps, blocks) that `ddpmseg select` searches: ``steps`` / ``blocks`` as given, checked
        against what this backbone has (ConfigError saying what exists), or its default grid for None.
        ConfigError when the backbone has nothing to select."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "Backbone":
        """The backbone of ``cfg``; its randomness (random weights, noise) comes from
        ddpmseg.common.seeding streams of ``cfg["seed"]``, never from the global RNG."""

    @abc.abstractmethod
    def layers(self) -> list[Layer]:
        """Exactly the maps ``__call__`` returns, in that order."""

    @abc.abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(H, W) the images are given at."""

    def sampling_network(self) -> torch.nn.Module:
        """The denoising network guided-diffusion's samplers draw generate_dataset.py's samples with
        (``can_sample`` backbones without ``samples_with_own_scheduler``)."""
        raise TypeError(f"model_type {self.model_type!r} cannot draw samples")

    def sample(self, n: int, generator: torch.Generator, num_inference_steps: int | None = None,
               use_ddim: bool = False, clip_sample: bool | None = None) -> torch.Tensor:
        """``n`` images [n, 3, H, W] in [-1, 1] drawn with the backbone's own scheduler
        (``samples_with_own_scheduler`` backbones); every random draw comes from ``generator`` (CPU)."""
        raise TypeError(f"model_type {self.model_type!r} has no sampling loop of its own")

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Maps [B, C_i, h_i, w_i] float32 of ``images`` [B, 3, H, W] float32 in [-1, 1] (the datasets'
        range); the backbone applies its own normalisation and resizing. ``noise`` is the run's shared
        noise for backbones that noise their input, ignored by the others."""


class FixedLayerBackbone(Backbone):
    """A backbone whose maps are fixed (the published choice) and whose input is not noised: `ddpmseg select`
    has nothing to pick."""

    uses_timesteps = False
    can_sample = False
    hooks_fixed_layers = True

    @classmethod
    def candidate_grid(cls, cfg: dict, model_flags: dict, steps: list[int] | None = None,
                       blocks: list[int] | None = None) -> tuple[list[int], list[int]]:
        raise nothing_to_select(cls)


# The one table of backbone classes: common.config validates model_type (and each class's keys) against
# it, and common comes before features in the layering, so the table lives there and is filled here.
REGISTRY: dict[str, type[Backbone]] = BACKBONE_CLASSES


def check_layer_keys(cls: type[Backbone], cfg: dict, where: str) -> None:
    """"steps" must be [] for a backbone without timesteps, "blocks" [] for one with fixed layers."""
    kind, no_steps, no_blocks = cls.model_type, not cls.uses_timesteps, cls.hooks_fixed_layers
    if no_steps and no_blocks and (cfg["steps"] or cfg["blocks"]):
        raise ConfigError(f"{where}: model_type '{kind}' hooks fixed layers and adds no noise: set "
                          f"\"steps\": [] and \"blocks\": [] (got {cfg['steps']} and {cfg['blocks']})")
    if no_steps and cfg["steps"]:
        raise ConfigError(f"{where}: model_type '{kind}' adds no noise: set \"steps\": [] (got {cfg['steps']})")
    if no_blocks and cfg["blocks"]:
        raise ConfigError(f"{where}: model_type '{kind}' hooks fixed layers: set \"blocks\": [] "
                          f"(got {cfg['blocks']})")


def check_weight_keys(cls: type[Backbone], cfg: dict, where: str) -> None:
    """"model_path" and "random_weights": exactly one of them for a backbone with weights."""
    kind = cls.model_type
    if not cls.has_weights and cfg["random_weights"]:
        raise ConfigError(f"{where}: model_type '{kind}' has no weights; remove 'random_weights'")
    if cfg["random_weights"] and cfg["model_path"]:
        raise ConfigError(f"{where}: 'random_weights' builds the backbone without a checkpoint, but 'model_path' "
                          f"is {cfg['model_path']!r}: set \"model_path\": \"\" (or drop random_weights)")
    if cls.has_weights and not cfg["random_weights"] and not cfg["model_path"]:
        raise ConfigError(f"{where}: 'model_path' is empty: name the {kind} checkpoint, or set "
                          f"\"random_weights\": true for an untrained backbone")


def check_input_activations(cls: type[Backbone], cfg: dict, where: str, inputs: bool) -> None:
    """A backbone that hooks fixed layers captures block inputs (``inputs``) or outputs, as published."""
    if cfg["input_activations"] != inputs:
        raise ConfigError(f"{where}: model_type '{cls.model_type}' captures block "
                          f"{'inputs' if inputs else 'outputs'}, as published: set "
                          f"\"input_activations\": {str(inputs).lower()}")


def register(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: make ``cls`` the backbone of config ``"model_type": cls.model_type``."""
    if cls.model_type in REGISTRY and REGISTRY[cls.model_type] is not cls:
        raise ValueError(f"model_type {cls.model_type!r} is registered twice: {REGISTRY[cls.model_type].__name__} "
                         f"and {cls.__name__}")
    REGISTRY[cls.model_type] = cls
    return cls


def backbone_class(model_type: str) -> type[Backbone]:
    """The registered class of ``model_type``; ConfigError listing the registered names otherwise."""
    if model_type not in REGISTRY:
        raise ConfigError(f"'model_type' must be one of {list(REGISTRY)}, got {model_type!r}")
    return REGISTRY[model_type]


def nothing_to_select(cls: type[Backbone]) -> ConfigError:
    """The error of ``candidate_grid`` for a backbone whose layers are fixed."""
    selectable = " or ".join(f"'{t}'" for t, c in REGISTRY.items() if not c.hooks_fixed_layers)
    return ConfigError(f"feature selection picks diffusion steps and U-Net blocks: model_type must be "
                       f"{selectable}, not '{cls.model_type}'")


def open_backbone(cfg: dict, model_flags: dict, device: torch.device, log: Callable[[str], None]) -> Backbone:
    """The backbone of a validated config, built by its registered class."""
    return backbone_class(cfg["model_type"]).from_config(cfg, model_flags, device, log)
