"""The MAE backbone (``"model_type": "mae"``): the outputs of the last 12 of the ViT-L/8's 24 encoder
blocks (before the final norm), as published, as [N, 1024, H/8, W/8] maps."""
from __future__ import annotations

from typing import Callable

import torch

from .backbones import (ComparisonBackbone, MaskedAutoencoderViT, imagenet_normalise, load_mae_checkpoint,
                        mae_vit_large_patch8, require_checkpoint, seeded_weights)
from .registry import Layer, register

# The published extractor's blocks: the last half of ViT-L's 24.
PUBLISHED_NUM_BLOCKS = 12


@register
class FeatureExtractorMAE(ComparisonBackbone):
    """Callable: ``extractor(img, noise=None)`` -> ``num_blocks`` maps [N, embed_dim, H/p, W/p]."""

    model_type = "mae"
    captures_inputs = False

    def __init__(self, model: MaskedAutoencoderViT, num_blocks: int = PUBLISHED_NUM_BLOCKS,
                 device: str | torch.device = "cpu"):
        depth = len(model.blocks)
        if not 1 <= num_blocks <= depth:
            raise ValueError(f"num_blocks must be in 1..{depth}, got {num_blocks}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.num_blocks = num_blocks

    @classmethod
    def build(cls, model_path: str | None, image_size: int, device: str | torch.device = "cpu", seed: int = 0,
              log: Callable[[str], None] = print) -> "FeatureExtractorMAE":
        """ViT-L/8 at ``image_size`` from ``model_path`` (the full pre-training checkpoint), or with random
        weights of ``seed`` for None."""
        if model_path is not None:
            require_checkpoint(model_path, cls.model_type)  # before spending seconds on building the model
        model = seeded_weights(lambda: mae_vit_large_patch8(img_size=image_size), seed)
        if model_path is None:
            log(f"mae: random weights (seed {seed}), no checkpoint")
        else:
            load_mae_checkpoint(model, model_path)
            log(f"mae: loaded {model_path}")
        return cls(model, num_blocks=PUBLISHED_NUM_BLOCKS, device=device)

    def input_size(self) -> tuple[int, int]:
        return self.model.img_size, self.model.img_size

    def layers(self) -> list[Layer]:
        depth, patch = len(self.model.blocks), self.model.patch_embed.patch_size[0]
        return [Layer(f"blocks.{i}", self.model.pos_embed.shape[-1], patch)
                for i in range(depth - self.num_blocks, depth)]

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``noise`` is accepted for the common interface and ignored: MAE takes clean images."""
        size = self.model.img_size
        if tuple(img.shape[-2:]) != (size, size):
            raise ValueError(f"this MAE was built for {size}x{size} images (its position embedding has one "
                             f"entry per patch), got {img.shape[-2]}x{img.shape[-1]}; set dim to "
                             f"[{size}, {size}, ...] or build the model at the image size")
        x = imagenet_normalise(img.to(self.device))
        return [a.float() for a in self.model.block_outputs(x, self.num_blocks)]
