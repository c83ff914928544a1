"""Synthetic workloads shaped like the real ones, shared by the benchmarks.

Training configs come from the experiment files through ``ddpmseg.common.config.load_config``, the
loader every tool uses, so a bench sees every key (and default) a real run sees.
"""
from __future__ import annotations

import os

import torch

from ddpmseg.common.config import load_config
from ddpmseg.features.store import FeatureStore
from ddpmseg.classifier.train import LabelledPixels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (C, h, w) of output blocks 5, 6, 7, 8, 12 of the LSUN/FFHQ 256 px U-Net, for each of 3 steps.
LSUN_LAYERS = [(1024, 32, 32), (512, 32, 32), (512, 32, 32), (512, 64, 64), (256, 128, 128)] * 3
# Output blocks 4..8 of the 64 px faces U-Net (num_channels 32), 3 steps.
FACES64_LAYERS = [(96, 16, 16), (96, 32, 32), (64, 32, 32), (64, 32, 32), (64, 64, 64)] * 3
# The released 256 px LSUN/FFHQ U-Net (scripts/ddpm/model_flags.sh; tests/test_bench.py checks
# them against the checkpoint manifest). use_fp16 is how the original ran it, set per bench.
LSUN_FLAGS = {"image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4,
              "num_head_channels": 64, "attention_resolutions": "32,16,8", "dropout": 0.1,
              "use_scale_shift_norm": True, "resblock_updown": True, "learn_sigma": True,
              "diffusion_steps": 1000, "noise_schedule": "linear"}
# Layer shapes, image side, and the experiment whose training config the workload uses.
WORKLOADS = {"lsun256": (LSUN_LAYERS, 256, "experiments/bedroom_28/ddpm.json"),
             "faces64": (FACES64_LAYERS, 64, "experiments/celebamask64/ddpm.json")}


def synthetic_store(name: str, num_images: int, seed: int = 0, location: str | None = None
                    ) -> tuple[FeatureStore, LabelledPixels]:
    """A filled FeatureStore and labels in 16x16 blocks (class 0 = ignored, as in bedroom_28)."""
    layers, size, _ = WORKLOADS[name]
    classes = train_config(name)["number_class"]
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


def train_config(name: str, **overrides) -> dict:
    """The workload's experiment config, validated and with defaults filled, as a run resolves it."""
    return load_config(os.path.join(REPO, WORKLOADS[name][2]), overrides)
