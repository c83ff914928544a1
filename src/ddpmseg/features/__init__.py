"""Per-pixel features: the backbone interface and registry (``registry``), one module per backbone family
(``ddpm``: the guided-diffusion U-Net; ``mae``, ``swav``: the paper's comparison backbones, whose networks
live in ``backbones``; ``rgb_xy``: the no-context baseline; ``diffusers_ddpm``, ``stable_diffusion``: diffusers
U-Nets, hooked by ``unet_hooks``; ``dinov2``) and the native-resolution store (``store``).

Importing the package registers every family; adding one is a module with an ``@register``ed
``Backbone`` and its import here.
"""
from .registry import REGISTRY, Backbone, Layer, backbone_class, register
from .ddpm import FeatureExtractorDDPM, collect_features, shared_noise
from .mae import FeatureExtractorMAE
from .swav import FeatureExtractorSwAV, FeatureExtractorSwAVW2
from .rgb_xy import RGBPositionFeatures
from . import diffusers_ddpm, dinov2, stable_diffusion  # noqa: F401 (registers them; diffusers loads lazily)

__all__ = ["REGISTRY", "Backbone", "Layer", "backbone_class", "register", "FeatureExtractorDDPM",
           "collect_features", "shared_noise", "FeatureExtractorMAE", "FeatureExtractorSwAV",
           "FeatureExtractorSwAVW2", "RGBPositionFeatures"]
