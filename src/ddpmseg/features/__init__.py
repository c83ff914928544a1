"""Per-pixel features: the DDPM U-Net's decoder activations and the RGB+xy baseline (``ddpm``), the
comparison backbones MAE and SwAV (``backbones``) and the native-resolution store (``store``).

The names of ``ddpm`` are re-exported: this was the module ``ddpmseg.features`` before issue 17,
and the README's Python API imports them from here.
"""
from .ddpm import FeatureExtractorDDPM, RGBPositionFeatures, collect_features, shared_noise

__all__ = ["FeatureExtractorDDPM", "RGBPositionFeatures", "collect_features", "shared_noise"]

# Backbone families register themselves with ddpmseg.features.registry on import.
from . import diffusers_ddpm  # noqa: E402,F401
from . import dinov2  # noqa: E402,F401
from . import stable_diffusion  # noqa: E402,F401
