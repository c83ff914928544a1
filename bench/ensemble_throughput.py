"""Training throughput: our batched ensemble vs the original one-member-at-a-time loop.

    python bench/ensemble_throughput.py [--workload lsun256|faces64] [--iterations 100]

Both train 10 members for the same number of 64-pixel batches each, in this one process.
Baseline (the original's train()): per member a fresh nn.Sequential MLP, Adam, and a DataLoader
(batch 64, shuffle, drop_last) over precomputed float32 pixel features X [pixels, C] in RAM.
A second baseline run uses the fused Adam kernel that we use, isolating batching's share.
Ours: train_ensemble on a FeatureStore (fp16 native-resolution maps, bilinear gather per batch),
all members in one batched step. Prints one JSON line with pixels/s and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "src"), os.path.join(HERE, "..")]

from workloads import WORKLOADS, synthetic_store, train_config  # noqa: E402
from ddpmseg.ensemble import hidden_sizes  # noqa: E402
from ddpmseg.train import train_ensemble  # noqa: E402

MEMBERS, BATCH = 10, 64


class FeatureDataset(torch.utils.data.Dataset):
    """The original's dataset: plain indexing into X and y."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def __len__(self):
        return len(self.X)


def sequential(X: torch.Tensor, y: torch.Tensor, classes: int, iterations: int, fused: bool = False) -> float:
    """Seconds for the original loop: members one after another, DataLoader batches.
    ``fused`` swaps in the fused Adam kernel we use, to separate its gain from batching's."""
    h1, h2 = hidden_sizes(classes)
    loader = torch.utils.data.DataLoader(FeatureDataset(X, y), batch_size=BATCH, shuffle=True, drop_last=True)
    t0 = time.time()
    for _ in range(MEMBERS):
        model = nn.Sequential(nn.Linear(X.shape[1], h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2),
                              nn.ReLU(), nn.BatchNorm1d(h2), nn.Linear(h2, classes))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        loss_fn = nn.CrossEntropyLoss()
        for i, (xb, yb) in enumerate(loader):
            if i == iterations:
                break
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="lsun256")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--baseline-pixels", type=int, default=40000,
                   help="pixels materialised as float32 X for the baseline (it holds all of them in RAM)")
    a = p.parse_args()
    classes = WORKLOADS[a.workload][2]
    store, pixels = synthetic_store(a.workload, a.images)
    # The baseline's X: the same features, fully upsampled, for a random subset of pixels.
    g = torch.Generator().manual_seed(1)
    sub = torch.randperm(len(pixels.labels), generator=g)[:a.baseline_pixels]
    X = store.pixels(*pixels.coords(sub))
    y = pixels.labels[sub]
    t_seq = sequential(X, y, classes, a.iterations)
    t_seq_fused = sequential(X, y, classes, a.iterations, fused=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        train_ensemble(store, pixels, train_config(classes), d, list(range(MEMBERS)),
                       max_steps=a.iterations, log=lambda m: None)
        t_ours = time.time() - t0
    n = MEMBERS * a.iterations * BATCH
    print(json.dumps({
        "bench": "ensemble_throughput", "workload": a.workload, "dim": store.dim, "members": MEMBERS,
        "iterations_per_member": a.iterations, "device": "cpu", "torch_threads": torch.get_num_threads(),
        "sequential_pixels_per_s": round(n / t_seq), "batched_pixels_per_s": round(n / t_ours),
        "sequential_fused_adam_pixels_per_s": round(n / t_seq_fused),
        "speedup": round(t_seq / t_ours, 2), "speedup_vs_sequential_fused_adam": round(t_seq_fused / t_ours, 2),
    }))


if __name__ == "__main__":
    main()
