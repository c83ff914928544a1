"""The SwAV backbones (``"model_type": "swav"``, ResNet-50, and ``"swav_w2"``, ResNet-50-w2): the inputs
of every other bottleneck of each stage (``SWAV_HOOKED_BLOCKS``, 9 maps), as published."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .backbones import (SWAV_HOOKED_BLOCKS, ComparisonBackbone, imagenet_normalise, load_swav_checkpoint,
                        require_checkpoint, seeded_weights, swav_block_inputs, swav_resnet50)
from .registry import Layer, register

# ResNet's stem (7x7 convolution and max-pool, each of stride 2) divides the resolution by 4 before layer1.
STEM_STRIDE = 4


@register
class FeatureExtractorSwAV(ComparisonBackbone):
    """Callable: ``extractor(img, noise=None)`` -> the 9 hooked bottleneck inputs [N, C, h, w]."""

    model_type = "swav"
    captures_inputs = True
    width = 1  # the ResNet-50's width multiplier

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", image_size: int | None = None):
        self.device = torch.device(device)
        # eval(): BatchNorm must use the checkpoint's running statistics, not the batch's.
        self.model = model.to(self.device).eval()
        self.image_size = image_size  # None: any size (a ResNet is convolutional)

    @classmethod
    def build(cls, model_path: str | None, image_size: int, device: str | torch.device = "cpu", seed: int = 0,
              log: Callable[[str], None] = print) -> "FeatureExtractorSwAV":
        """The ResNet from ``model_path`` (a SwAV checkpoint; its heads are ignored), or with random
        weights of ``seed`` for None."""
        kind = cls.model_type
        if model_path is not None:
            require_checkpoint(model_path, kind)  # before spending seconds on building the model
        model = seeded_weights(lambda: swav_resnet50(width=cls.width), seed)
        if model_path is None:
            log(f"{kind}: random weights (seed {seed}), no checkpoint")
        else:
            ignored = load_swav_checkpoint(model, model_path)
            prefixes = sorted({k.split(".")[0] for k in ignored})
            log(f"{kind}: loaded {model_path}; ignored {len(ignored)} checkpoint keys outside the backbone"
                + (f" ({', '.join(prefixes)})" if prefixes else ""))
        return cls(model, device=device, image_size=image_size)

    def input_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError("this SwAV extractor takes any size; give image_size for a fixed one")
        return self.image_size, self.image_size

    def layers(self) -> list[Layer]:
        """"layer2.0 input" and so on: a bottleneck's input channels, and the stride the stem and the
        strided 3x3 convolutions of the bottlenecks before it give."""
        strides, stride = {}, STEM_STRIDE
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, block in enumerate(self.model.get_submodule(stage)):
                strides[f"{stage}.{i}"] = stride
                stride *= block.conv2.stride[0]
        return [Layer(f"{name} input", self.model.get_submodule(name).conv1.in_channels, strides[name])
                for name in SWAV_HOOKED_BLOCKS]

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``noise`` is accepted for the common interface and ignored: SwAV takes clean images."""
        return swav_block_inputs(self.model, imagenet_normalise(img.to(self.device)))


@register
class FeatureExtractorSwAVW2(FeatureExtractorSwAV):
    """SwAV's ResNet-50-w2: the same hooked blocks, twice as wide."""

    model_type = "swav_w2"
    width = 2
