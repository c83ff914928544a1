"""Synthetic workloads shaped like the real ones, shared by the benchmarks."""
from __future__ import annotations

import torch

from ddpmseg.store import FeatureStore
from ddpmseg.train import LabelledPixels

# (C, h, w) of output blocks 5, 6, 7, 8, 12 of the LSUN/FFHQ 256 px U-Net, for each of 3 steps.
LSUN_LAYERS = [(1024, 32, 32), (512, 32, 32), (512, 32, 32), (512, 64, 64), (256, 128, 128)] * 3
# Output blocks 4..8 of the 64 px faces U-Net (num_channels 32), 3 steps.
FACES64_LAYERS = [(96, 16, 16), (96, 32, 32), (64, 32, 32), (64, 32, 32), (64, 64, 64)] * 3
WORKLOADS = {"lsun256": (LSUN_LAYERS, 256, 29), "faces64": (FACES64_LAYERS, 64, 19)}


def synthetic_store(name: str, num_images: int, seed: int = 0, location: str | None = None
                    ) -> tuple[FeatureStore, LabelledPixels]:
    """A filled FeatureStore and labels in 16x16 blocks (class 0 = ignored, as in bedroom_28)."""
    layers, size, classes = WORKLOADS[name]
    g = torch.Generator().manual_seed(seed)
    store = FeatureStore(num_images, layers, (size, size), location=location)
    index, labels = [], []
    for i in range(num_images):
        store.put(i, [torch.randn(s, generator=g) for s in layers])
        blocks = torch.randint(0, classes, (size // 16, size // 16), generator=g)
        lab = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1).reshape(-1)
        keep = torch.nonzero(lab != 0).squeeze(1)
        index.append(keep + i * size * size)
        labels.append(lab[keep])
    return store, LabelledPixels(torch.cat(index), torch.cat(labels), (size, size))


def train_config(classes: int, **kw) -> dict:
    """The training keys of an experiment config at their published values."""
    return {"batch_size": 64, "seed": 0, "number_class": classes, "learning_rate": 1e-3,
            "early_stop_after_epoch": 3, "early_stop_patience": 50, "max_epochs": 100, **kw}
