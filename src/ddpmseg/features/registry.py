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

from ..common.config import ConfigError


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
    hooks_fixed_layers: ClassVar[bool]  # True: "blocks" must be [] (the layers are fixed, e.g. MAE, SwAV)

    @classmethod
    @abc.abstractmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        """Raise ConfigError (prefixed with ``where``) for keys of ``cfg`` that do not fit this backbone."""

    @classmethod
    @abc.abstractmethod
    def candidate_grid(cls, cfg: dict) -> tuple[list[int], list[int]]:
        """(steps, blocks) that select_features.py searches by default."""

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

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Maps [B, C_i, h_i, w_i] float32 of ``images`` [B, 3, H, W] float32 in [-1, 1] (the datasets'
        range); the backbone applies its own normalisation and resizing. ``noise`` is the run's shared
        noise for backbones that noise their input, ignored by the others."""


REGISTRY: dict[str, type[Backbone]] = {}


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
        raise ConfigError(f"'model_type' must be one of {sorted(REGISTRY)}, got {model_type!r}")
    return REGISTRY[model_type]
