"""ddpm-seg: label-efficient semantic segmentation with frozen diffusion-model features.

The package is grouped by stage; a sub-package imports only from those before it:
``common`` (files, seeds, errors, config, reports, command-line plumbing) < ``data`` (datasets,
augmentation) < ``features`` (DDPM and other backbones, the feature store) < ``classifier`` (the
pixel ensemble and the interpreter job) and ``ddpm`` (training and sampling a DDPM) <
``datasetddpm`` (labelled samples, DeepLab) < ``demo`` < ``commands`` (the ``ddpmseg`` command, one
module per sub-command). tests/test_layering.py holds it to that.
"""
from __future__ import annotations


def _register_backbones() -> None:
    """Register every backbone family (config validation needs them; common cannot import features)."""
    from . import features  # noqa: F401


from .common import config as _config  # noqa: E402

_config.register_backbones = _register_backbones
