"""Training throughput: our ensemble training vs the original one-member-at-a-time loop.

    python bench/ensemble_throughput.py [--workload lsun256|faces64] [--iterations 60] [--threads 1 2] [--quick]

All variants train 10 members for the same number of 64-pixel batches each, in this one process,
once per torch thread count in --threads (torch.set_num_threads), one JSON line each.
Baseline (the original's train()): per member a fresh nn.Sequential MLP, Adam, and a DataLoader
(batch 64, shuffle, drop_last) over precomputed float32 pixel features X [pixels, C] in RAM; every
iteration computes the batch accuracy (multi_acc) and reads the loss to the host for early stopping,
as the original does from its 5th epoch on, where most of a run's iterations fall. Both sides time
training alone: X is built before the baseline's clock starts, and ours trains on inputs built before
its clock (train_members: the dense feature matrix, where the config has one, made once), as a run
builds them once for all its members; per-batch upsampling, where there is no dense matrix, is timed.
A second baseline run uses the fused Adam kernel that we use, isolating batching's share.
Ours: train_members (train_ensemble's training, which a real run calls), with the workload's experiment config
(loaded and validated by ddpmseg.common.config), with each candidate step: "batched" (all members
in one step), "per_member" (one member after another), per-batch upsampling ("lazy") where the
config chose the dense feature matrix; and "auto", the step the trainer's probe picks
(ddpmseg.classifier.ensemble_step) trained the same way. The probe is timed apart: it is weighed
against the shortest full training of this store (early stopping's earliest stop), as a run weighs
it, while the timed training is a slice of --iterations; its share of that full training is
reported. Every variant runs --rounds times, the order reversed each round so that a drift in the
load of a shared machine falls on all; a rate is the median of its rounds' rates, so one round hit by
a burst of load elsewhere does not decide a ratio.
The floor is the arithmetic of one step (forward and backward matmul FLOPs of all members)
divided by the matmul FLOP/s this machine reaches on the same shapes. ``--quick`` runs the same
code on a tiny workload (the CI test).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "src"), os.path.join(HERE, "..")]

from workloads import WORKLOADS, synthetic_store, train_config  # noqa: E402
from ddpmseg.classifier.ensemble import hidden_sizes  # noqa: E402
from ddpmseg.classifier.ensemble_step import StepChoice  # noqa: E402
from ddpmseg.classifier.train import (  # noqa: E402
    EnsembleSettings, TrainingInputs, choose_training_step, min_iterations, train_members, wants_dense)

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
            yb = yb.to(device)
            opt.zero_grad()
            y_pred = model(xb.to(device))
            loss = loss_fn(y_pred, yb)
            (y_pred.log_softmax(1).argmax(1) == yb).float().mean()  # multi_acc, logged every 1000 iterations
            loss.backward()
            opt.step()
            loss.item()
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


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def train_seconds(store, pixels, cfg: dict, iterations: int, step: StepChoice | None = None) -> float:
    """Seconds of training all MEMBERS as train_ensemble does (train_members), its inputs built untimed."""
    inputs = TrainingInputs.build(store, pixels, EnsembleSettings.from_config(cfg), log=lambda m: None)
    with tempfile.TemporaryDirectory() as d:
        return timed(lambda: train_members(inputs, d, list(range(MEMBERS)), log=lambda m: None, max_steps=iterations,
                                           progress=False, step=step))


def auto_choice(store, pixels, cfg: dict) -> tuple[StepChoice, float]:
    """The step auto picks for this store (its probe weighed against the store's full training, as a run
    does: max_steps None) and the seconds of the shortest such training, in member-batches."""
    inputs = TrainingInputs.build(store, pixels, EnsembleSettings.from_config(cfg), log=lambda m: None)
    with tempfile.TemporaryDirectory() as d:
        choice = choose_training_step(inputs, list(range(MEMBERS)), d, max_steps=None)
    return choice, MEMBERS * min_iterations(inputs.settings, inputs.n_batches, None)


def measure(workload: str, cfg: dict, store, pixels, X, y, iterations: int, rounds: int) -> dict:
    """Seconds of every variant in each of ``rounds`` (order reversed each round), auto's choices and
    probe seconds, and the shortest full training (member-batches) its probe was weighed against."""
    classes, batch = cfg["number_class"], cfg["batch_size"]
    dense = wants_dense(len(pixels.labels), store.dim, cfg["feature_matrix"])
    picks = {"choices": [], "probe_s": [], "shortest": 0}

    def auto() -> float:
        choice, picks["shortest"] = auto_choice(store, pixels, cfg)
        picks["choices"].append(choice.chosen)
        picks["probe_s"].append(choice.probe_s or 0.0)
        return train_seconds(store, pixels, cfg, iterations, step=choice)

    variants = {
        "sequential": lambda: sequential(X, y, classes, iterations, batch),
        "sequential_fused_adam": lambda: sequential(X, y, classes, iterations, batch, fused=True),
        "batched": lambda: train_seconds(store, pixels, {**cfg, "ensemble_step": "batched"}, iterations),
        "per_member": lambda: train_seconds(store, pixels, {**cfg, "ensemble_step": "per_member"}, iterations),
        "auto": auto,
    }
    if dense:
        variants["batched_lazy"] = lambda: train_seconds(
            store, pixels, {**cfg, "ensemble_step": "batched", "feature_matrix": "lazy"}, iterations)
    seconds = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            seconds[name].append(variants[name]())
    return {"seconds": seconds, **picks, "dense": dense}


def run(workload: str, iterations: int, images: int, baseline_pixels: int, rounds: int, threads: int,
        quick: bool) -> dict:
    torch.set_num_threads(threads)
    cfg = train_config(workload)
    classes, batch = cfg["number_class"], cfg["batch_size"]
    store, pixels = synthetic_store(workload, images)
    # The baseline's X: the same features, fully upsampled, for a random subset of pixels.
    g = torch.Generator().manual_seed(1)
    sub = torch.randperm(len(pixels.labels), generator=g)[:baseline_pixels]
    X = store.pixels(*pixels.coords(sub))
    y = pixels.labels[sub]
    m = measure(workload, cfg, store, pixels, X, y, iterations, rounds)
    n = MEMBERS * iterations * batch  # pixels a round of any variant trains
    rate = {name: statistics.median(n / t for t in ts) for name, ts in m["seconds"].items()}
    candidates = {k: v for k, v in rate.items() if k in ("batched", "per_member", "batched_lazy")}
    fastest = max(candidates, key=candidates.get)
    probe_s = sum(m["probe_s"]) / rounds
    shortest_s = m["shortest"] * batch / rate["auto"]  # the shortest full training of this store, at auto's rate
    flops = step_flops(store.dim, classes, batch, MEMBERS)
    flop_rate = matmul_flops_per_s(store.dim, classes, batch, 5 if quick else 500)
    floor = MEMBERS * batch / (flops / flop_rate)
    return {
        "bench": "ensemble_throughput", "argv": sys.argv[1:], "workload": workload, "quick": quick, "dim": store.dim,
        "members": MEMBERS, "iterations_per_member": iterations, "rounds": rounds, "device": "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "sequential_pixels_per_s": round(rate["sequential"]),
        "sequential_fused_adam_pixels_per_s": round(rate["sequential_fused_adam"]),
        "batched_pixels_per_s": round(rate["batched"]), "per_member_pixels_per_s": round(rate["per_member"]),
        "feature_matrix": "dense" if m["dense"] else "lazy",
        "batched_lazy_pixels_per_s": round(rate.get("batched_lazy", rate["batched"])),
        "auto_pixels_per_s": round(rate["auto"]), "auto_chosen": "/".join(sorted(set(m["choices"]))),
        "auto_probe_s": round(probe_s, 2),
        "auto_probe_share_of_shortest_run": round(probe_s / (probe_s + shortest_s), 4),
        "speedup": round(rate["auto"] / rate["sequential"], 2),
        "speedup_vs_sequential_fused_adam": round(rate["auto"] / rate["sequential_fused_adam"], 2),
        "fastest_candidate": fastest, "auto_over_fastest_candidate": round(rate["auto"] / candidates[fastest], 2),
        "step_gflop": round(flops / 1e9, 3), "matmul_gflop_per_s": round(flop_rate / 1e9, 1),
        "floor_pixels_per_s": round(floor), "fraction_of_floor": round(rate["auto"] / floor, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="lsun256")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--baseline-pixels", type=int, default=40000,
                   help="pixels materialised as float32 X for the baseline (it holds all of them in RAM)")
    p.add_argument("--rounds", type=int, default=3,
                   help="passes over every variant, the order reversed each pass (3: a median outvotes one disturbed pass)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one JSON line each")
    p.add_argument("--quick", action="store_true", help="tiny run of the same code (faces64, 3 iterations)")
    a = p.parse_args()
    if a.quick:
        a.workload, a.iterations, a.images, a.baseline_pixels, a.rounds, a.threads = "faces64", 3, 1, 2000, 1, [1]
    for threads in a.threads:
        print(json.dumps(run(a.workload, a.iterations, a.images, a.baseline_pixels, a.rounds, threads, a.quick)),
              flush=True)


if __name__ == "__main__":
    main()
