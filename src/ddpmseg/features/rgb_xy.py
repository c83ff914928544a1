"""The no-context baseline (``"model_type": "rgb_xy"``): each pixel's colour and (x, y) position."""
from __future__ import annotations

from typing import Callable

import torch

from .registry import FixedLayerBackbone, Layer, check_weight_keys, register


@register
class RGBPositionFeatures(FixedLayerBackbone):
    """One [N, 5, H, W] map at full resolution: colour, then x, then y, all in [-1, 1], so the store,
    the ensemble and evaluation run unchanged on it."""

    model_type = "rgb_xy"
    has_weights = False

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size  # None: any size (the maps follow the images)

    @classmethod
    def check_config(cls, cfg: dict, where: str) -> None:
        """Only the weight keys: steps and blocks are ignored, so a ddpm config turned into this baseline
        with ``--set model_type=rgb_xy`` runs as it is."""
        check_weight_keys(cls, cfg, where)

    @classmethod
    def from_config(cls, cfg: dict, model_flags: dict, device: torch.device,
                    log: Callable[[str], None]) -> "RGBPositionFeatures":
        return cls(cfg["dim"][0])

    def layers(self) -> list[Layer]:
        return [Layer("colour and position", 5, 1)]

    def input_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError("RGBPositionFeatures() takes any size; give image_size for a fixed one")
        return self.image_size, self.image_size

    def __call__(self, img: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        n, _, h, w = img.shape
        ys = torch.linspace(-1, 1, h, device=img.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=img.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return [torch.cat([img.float(), xs, ys], dim=1)]
