"""Training throughput: our ensemble training vs the original one-member-at-a-time loop.

    python bench/ensemble_throughput.py [--workload lsun256|faces64] [--iterations 100] [--quick]

All variants train 10 members for the same number of 64-pixel batches each, in this one process.
Baseline (the original's train()): per member a fresh nn.Sequential MLP, Adam, and a DataLoader
(batch 64, shuffle, drop_last) over precomputed float32 pixel features X [pixels, C] in RAM.
A second baseline run uses the fused Adam kernel that we use, isolating batching's share.
Ours: train_ensemble, the function a real run calls, with the workload's experiment config
(loaded and validated by ddpmseg.common.config); beside it the candidates measured in the same run:
per-batch upsampling ("lazy") where the config chose the dense feature matrix, and a loop that
trains one member at a time. The floor is the arithmetic of one step (forward and
backward matmul FLOPs of all members) divided by the matmul FLOP/s this machine reaches on the
same shapes. Prints one JSON line. ``--quick`` runs the same code on a tiny workload (the CI test).
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
from ddpmseg.classifier.ensemble import hidden_sizes  # noqa: E402
from ddpmseg.classifier.train import EnsembleSettings, train_ensemble, wants_dense  # noqa: E402

MEMBERS = 10


class FeatureDataset(torch.utils.data.Dataset):
    """The original's dataset: plain indexing into X and y."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def __len__(self):
        return len(self.X)


def original_mlp(dim: int, classes: int) -> nn.Sequential:
    """The original pixel_classifier's layers."""
    h1, h2 = hidden_sizes(classes)
    return nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2),
                         nn.ReLU(), nn.BatchNorm1d(h2), nn.Linear(h2, classes))


def sequential(X: torch.Tensor, y: torch.Tensor, classes: int, iterations: int, batch: int,
               fused: bool = False, members: int = MEMBERS, device: str = "cpu") -> float:
    """Seconds for the original loop: members one after another, DataLoader batches moved to
    ``device`` one at a time. ``fused`` swaps in the fused Adam kernel we use."""
    loader = torch.utils.data.DataLoader(FeatureDataset(X, y), batch_size=batch, shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    for _ in range(members):
        model = original_mlp(X.shape[1], classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        loss_fn = nn.CrossEntropyLoss()
        for i, (xb, yb) in enumerate(loader):
            if i == iterations:
                break
            opt.zero_grad()
            loss = loss_fn(model(xb.to(device)), yb.to(device))
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - t0


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_flops(dim: int, classes: int, batch: int, members: int) -> int:
    """Matmul FLOPs of one training step of all members: forward 2*B*in*out per Linear,
    backward twice that (input and weight gradients; the first layer's input gradient is not
    needed, but PyTorch's Linear on a leaf input skips it too)."""
    h1, h2 = hidden_sizes(classes)
    shapes = [(dim, h1), (h1, h2), (h2, classes)]
    fwd = sum(2 * batch * i * o for i, o in shapes)
    bwd = 2 * fwd - 2 * batch * dim * h1  # no gradient for the features themselves
    return members * (fwd + bwd)


def matmul_flops_per_s(dim: int, classes: int, batch: int, repeats: int) -> float:
    """FLOP/s of this machine on the step's own dominant matmuls (first layer, forward and weight
    gradient of one member), averaged over ``repeats`` like the training timings are: on a
    shared machine a best-of would pick the rare idle moments and overstate the floor."""
    h1, _ = hidden_sizes(classes)
    x, w, g = torch.randn(batch, dim), torch.randn(dim, h1), torch.randn(batch, h1)
    x @ w
    t0 = time.perf_counter()
    for _ in range(repeats):
        x @ w
        x.T @ g
    return repeats * 2 * 2 * batch * dim * h1 / (time.perf_counter() - t0)


def run(workload: str, iterations: int, images: int, baseline_pixels: int, quick: bool) -> dict:
    cfg = train_config(workload)
    classes, batch = cfg["number_class"], cfg["batch_size"]
    store, pixels = synthetic_store(workload, images)
    # The baseline's X: the same features, fully upsampled, for a random subset of pixels.
    g = torch.Generator().manual_seed(1)
    sub = torch.randperm(len(pixels.labels), generator=g)[:baseline_pixels]
    X = store.pixels(*pixels.coords(sub))
    y = pixels.labels[sub]
    t_seq = sequential(X, y, classes, iterations, batch)
    t_seq_fused = sequential(X, y, classes, iterations, batch, fused=True)

    def ours(groups: list[list[int]], **overrides) -> float:
        """Seconds of train_ensemble over these member groups, one call each (as a run would)."""
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            for members in groups:
                train_ensemble(store, pixels, EnsembleSettings.from_config({**cfg, **overrides}), d, members,
                               max_steps=iterations, log=lambda m: None)
            return time.perf_counter() - t0

    dense = wants_dense(len(pixels.labels), store.dim, cfg["feature_matrix"])
    t_ours = ours([list(range(MEMBERS))])  # the config's choices: what a real run does
    # The candidates, measured in the same run: per-batch upsampling instead of the dense
    # matrix, and one member at a time instead of the batched step.
    t_lazy = ours([list(range(MEMBERS))], feature_matrix="lazy") if dense else t_ours
    t_per_member = ours([[m] for m in range(MEMBERS)])
    n = MEMBERS * iterations * batch
    flops = step_flops(store.dim, classes, batch, MEMBERS)
    rate = matmul_flops_per_s(store.dim, classes, batch, 5 if quick else 500)
    floor_s = flops / rate
    return {
        "bench": "ensemble_throughput", "argv": sys.argv[1:], "workload": workload, "quick": quick, "dim": store.dim,
        "members": MEMBERS, "iterations_per_member": iterations, "device": "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "sequential_pixels_per_s": round(n / t_seq), "batched_pixels_per_s": round(n / t_ours),
        "sequential_fused_adam_pixels_per_s": round(n / t_seq_fused),
        "speedup": round(t_seq / t_ours, 2), "speedup_vs_sequential_fused_adam": round(t_seq_fused / t_ours, 2),
        "feature_matrix": "dense" if dense else "lazy", "batched_lazy_pixels_per_s": round(n / t_lazy),
        "per_member_pixels_per_s": round(n / t_per_member),
        "step_gflop": round(flops / 1e9, 3), "matmul_gflop_per_s": round(rate / 1e9, 1),
        "floor_pixels_per_s": round(MEMBERS * batch / floor_s),
        "fraction_of_floor": round((n / t_ours) / (MEMBERS * batch / floor_s), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="lsun256")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--baseline-pixels", type=int, default=40000,
                   help="pixels materialised as float32 X for the baseline (it holds all of them in RAM)")
    p.add_argument("--quick", action="store_true", help="tiny run of the same code (faces64, 3 iterations)")
    a = p.parse_args()
    if a.quick:
        a.workload, a.iterations, a.images, a.baseline_pixels = "faces64", 3, 1, 2000
    print(json.dumps(run(a.workload, a.iterations, a.images, a.baseline_pixels, a.quick)))


if __name__ == "__main__":
    main()
