"""Train the pixel-classifier ensemble on a FeatureStore, all members in one batched step.

Semantics per member are the original's: its own initialisation and its own shuffled
batches (drop_last) over all labelled pixels, Adam, and early stopping on single-batch
losses once the epoch index passes ``early_stop_after_epoch``. Each member draws from its
own generator seeded by (seed, member index), so a member's weights do not depend on how
many other members train beside it; finished members are written as ``model_{i}.pth`` the
moment they stop, and a periodic ``train_state.pt`` lets an interrupted run continue.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import torch_save_atomic
from .ensemble import PixelEnsemble
from .store import FeatureStore

STATE_FILE = "train_state.pt"
SAVE_EVERY = 2000  # iterations between resumable snapshots: a crash loses at most this much


@dataclass
class LabelledPixels:
    """The training pixels: flat index img*H*W + y*W + x, and the class of each."""

    index: torch.Tensor  # int64 [N]
    labels: torch.Tensor  # int64 [N]
    hw: tuple[int, int]

    def coords(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, W = self.hw
        p = self.index[idx]
        return p // (H * W), (p // W) % H, p % W


def member_generator(seed: int, member: int) -> torch.Generator:
    """An independent, reproducible random stream for one ensemble member."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, member]).generate_state(1)[0]))


def model_path(exp_dir: str, member: int) -> str:
    return os.path.join(exp_dir, f"model_{member}.pth")


def train_ensemble(store: FeatureStore, pixels: LabelledPixels, cfg: dict, exp_dir: str,
                   members: list[int], device: str = "cpu", log=print, max_steps: int | None = None) -> dict:
    """Train ``members`` (indices into the ensemble) together; returns per-member stats.

    ``max_steps`` caps the iterations (members still active then stop with reason "max_steps"):
    a compute budget for benchmarks and smoke runs, not part of the published method.
    """
    M, B, N = len(members), cfg["batch_size"], len(pixels.labels)
    n_batches = N // B
    if n_batches == 0:
        raise ValueError(f"only {N} labelled training pixels, fewer than one batch of {B}")
    gens = [member_generator(cfg["seed"], m) for m in members]
    ens = PixelEnsemble(M, store.dim, cfg["number_class"], generators=gens).to(device)
    # The fused kernel is the same Adam update in one pass (9x faster on CPU for the 8448-d layer).
    opt = torch.optim.Adam(ens.parameters(), lr=cfg["learning_rate"], fused=True)
    step = 0  # iterations taken; epoch, batch = divmod(step, n_batches)
    best = [float("inf")] * M
    patience_count = [0] * M
    active = [True] * M
    stats = {m: {} for m in members}
    epoch_gen_states = [g.get_state() for g in gens]

    state_path = os.path.join(exp_dir, STATE_FILE)
    if os.path.exists(state_path):
        st = torch.load(state_path, weights_only=False)
        if st["members"] == members and st["num_pixels"] == N:
            ens.load_state_dict(st["ensemble"])
            opt.load_state_dict(st["optimizer"])
            step, best, patience_count, active = st["step"], st["best"], st["count"], st["active"]
            epoch_gen_states, stats = st["gen_states"], st["stats"]
            for g, s in zip(gens, epoch_gen_states):
                g.set_state(s)
            log(f"resumed training of members {members} at iteration {step}")
        else:
            log(f"ignoring {STATE_FILE}: it belongs to another training set or member list")
    perms = [torch.randperm(N, generator=g) for g in gens]

    def finish(j: int, reason: str) -> None:
        active[j] = False
        m = members[j]
        stats[m] = {"epochs": -(-step // n_batches), "iterations": step, "stopped": reason,
                    "best_batch_loss": best[j]}
        torch_save_atomic({"model_state_dict": {f"module.{k}": v.cpu() for k, v in ens.member_state_dict(j).items()},
                           "dim": store.dim, "number_class": cfg["number_class"], "stats": stats[m]},
                          model_path(exp_dir, m))

    ens.train()
    desc = f"members {members[0]}-{members[-1]}"
    bar = tqdm(desc=desc, initial=step, unit="batch", dynamic_ncols=True, mininterval=2.0)
    while any(active):
        epoch, pos = divmod(step, n_batches)
        if pos == 0 and step > 0:  # a new epoch: every member reshuffles with its own stream
            epoch_gen_states = [g.get_state() for g in gens]
            perms = [torch.randperm(N, generator=g) for g in gens]
        idx = torch.stack([p[pos * B:(pos + 1) * B] for p in perms])  # [M, B]
        img, ys, xs = pixels.coords(idx.reshape(-1))
        x = store.pixels(img, ys, xs).reshape(M, B, store.dim).to(device, non_blocking=True)
        y = pixels.labels[idx].to(device)
        logits = ens(x)
        losses = F.cross_entropy(logits.reshape(M * B, -1), y.reshape(-1), reduction="none").reshape(M, B).mean(1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        step += 1
        if epoch > cfg["early_stop_after_epoch"]:
            for j, loss in enumerate(losses.tolist()):
                if not active[j]:
                    continue
                if loss < best[j]:
                    best[j], patience_count[j] = loss, 0
                else:
                    patience_count[j] += 1
                if patience_count[j] > cfg["early_stop_patience"]:
                    finish(j, "early_stop")
        # ">=": a run resumed from a snapshot taken with a larger budget still stops.
        for limit, reason in ((cfg["max_epochs"] * n_batches, "max_epochs"), (max_steps, "max_steps")):
            if limit is not None and step >= limit:
                for j in range(M):
                    if active[j]:
                        finish(j, reason)
        if step % SAVE_EVERY == 0 and any(active):
            torch_save_atomic({"members": members, "num_pixels": N, "ensemble": ens.state_dict(),
                               "optimizer": opt.state_dict(), "step": step, "best": best,
                               "count": patience_count, "active": active, "gen_states": epoch_gen_states,
                               "stats": stats}, state_path)
        bar.update(1)
        bar.set_postfix(epoch=epoch, active=sum(active), loss=f"{losses.mean().item():.3f}", refresh=False)
    bar.close()
    if os.path.exists(state_path):
        os.remove(state_path)
    return stats


def load_ensemble(exp_dir: str, num_members: int, dim: int, num_classes: int, device: str = "cpu") -> PixelEnsemble:
    """Load ``model_{0..M-1}.pth`` into one PixelEnsemble in eval mode."""
    ens = PixelEnsemble(num_members, dim, num_classes)
    for m in range(num_members):
        ckpt = torch.load(model_path(exp_dir, m), map_location="cpu", weights_only=False)
        ens.load_member(m, ckpt["model_state_dict"])
    return ens.to(device).eval()
