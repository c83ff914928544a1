"""Train the pixel-classifier ensemble on a FeatureStore, all members in one batched step.

Semantics per member are the original's: its own initialisation and its own shuffled
batches (drop_last) over all labelled pixels, Adam, and early stopping on single-batch
losses once the epoch index passes ``early_stop_after_epoch``. Each member draws from its
own generators seeded by (seed, member index), so a member's weights do not depend on how
many other members train beside it; finished members are written as ``model_{i}.pth`` the
moment they stop, and a periodic ``train_state.pt`` lets an interrupted run continue.

Variants (config keys): AdamW and weight decay, dropout, and the ETF regularizer, which adds
``etf_beta * CE(features @ E)`` for the member's own penultimate features (``"etf"``) or, as
the published code did, for a separate trunk that shares nothing with the classifier
(``"etf_decoupled"``, kept for comparison). Early stopping always watches the classifier's
cross-entropy, so a regularizer changes what is learned, not when training stops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import torch_save_atomic
from .ensemble import PixelEnsemble
from .etf import load_or_create_etf
from .seeding import derived_seed, generator
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


# Seed-stream ids (after seed and member index) of a member's other random streams.
DROPOUT_STREAM, TRUNK_STREAM, TRUNK_DROPOUT_STREAM = 1, 2, 3


def member_generator(seed: int, member: int) -> torch.Generator:
    """A member's init and shuffling stream, independent of every other member's."""
    return generator(seed, member)


def device_generator(seed: int, member: int, stream: int, device: str) -> torch.Generator:
    """A member's stream for random numbers drawn on ``device`` (dropout masks)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, member, stream))


def make_optimizer(params: list, cfg: dict) -> torch.optim.Optimizer:
    """Adam (the original) or AdamW; the fused kernel is the same update in one pass (9x faster on
    CPU for the 8448-d layer). Parameters without a gradient (the decoupled trunk's unused last
    layer) are skipped by both."""
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"], fused=True)


def model_path(exp_dir: str, member: int) -> str:
    return os.path.join(exp_dir, f"model_{member}.pth")


def train_ensemble(store: FeatureStore, pixels: LabelledPixels, cfg: dict, exp_dir: str,
                   members: list[int], device: str = "cpu", log=print, max_steps: int | None = None,
                   epoch_size: int | None = None, dtype: torch.dtype = torch.float32, progress: bool = True) -> dict:
    """Train ``members`` (indices into the ensemble) together; returns per-member stats.

    An epoch is ``epoch_size // batch_size`` batches from a fresh shuffle of all pixels
    (default: all of them, the original's epoch). ``max_steps`` caps the iterations (members
    still active then stop with reason "max_steps"): a compute budget for benchmarks and smoke
    runs, not part of the published method. ``dtype`` is the members' arithmetic: float32 as
    published; float64 lets tests check equivalences to rounding that no CPU's kernels can move.
    ``progress=False`` hides the progress bar (callers that train many small probes show their own).
    """
    M, B, N = len(members), cfg["batch_size"], len(pixels.labels)
    n_batches = min(N, epoch_size or N) // B
    if n_batches == 0:
        raise ValueError(f"only {N} labelled training pixels, fewer than one batch of {B}")
    seed, K, regularizer = cfg["seed"], cfg["number_class"], cfg["regularizer"]
    gens = [member_generator(seed, m) for m in members]
    ens = PixelEnsemble(M, store.dim, K, generators=gens, dropout=cfg["dropout"],
                        dropout_position=cfg["dropout_position"]).to(device, dtype)
    nets = [ens]
    params = list(ens.parameters())
    etf = None
    if regularizer != "none":
        etf = load_or_create_etf(exp_dir, ens.feature_dim, K, seed).to(device, dtype)
    if regularizer == "etf_decoupled":
        # The published regularizer: its own trunk (the classifier minus its last Linear) and its own
        # init stream, so the classifier trains exactly as it would with etf_beta = 0.
        trunk = PixelEnsemble(M, store.dim, K, generators=[generator(seed, m, TRUNK_STREAM) for m in members],
                              dropout=cfg["dropout"], dropout_position=cfg["dropout_position"]).to(device, dtype)
        nets.append(trunk)
        params += [p for n, p in trunk.named_parameters() if not n.endswith(".2")]
    for net, stream in zip(nets, (DROPOUT_STREAM, TRUNK_DROPOUT_STREAM)):
        if net.dropout:
            net.dropout_generators = [device_generator(seed, m, stream, device) for m in members]
    opt = make_optimizer(params, cfg)
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
            for net, sd in zip(nets, st["nets"]):
                net.load_state_dict(sd)
            opt.load_state_dict(st["optimizer"])
            step, best, patience_count, active = st["step"], st["best"], st["count"], st["active"]
            epoch_gen_states, stats = st["gen_states"], st["stats"]
            for g, s in zip(gens, epoch_gen_states):
                g.set_state(s)
            for net, states in zip(nets, st["dropout_states"]):
                for g, s in zip(net.dropout_generators or [], states):
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

    for net in nets:
        net.train()
    desc = f"members {members[0]}-{members[-1]}"
    bar = tqdm(desc=desc, initial=step, unit="batch", dynamic_ncols=True, mininterval=2.0,
               disable=not progress)
    while any(active):
        epoch, pos = divmod(step, n_batches)
        if pos == 0 and step > 0:  # a new epoch: every member reshuffles with its own stream
            epoch_gen_states = [g.get_state() for g in gens]
            perms = [torch.randperm(N, generator=g) for g in gens]
        idx = torch.stack([p[pos * B:(pos + 1) * B] for p in perms])  # [M, B]
        img, ys, xs = pixels.coords(idx.reshape(-1))
        x = store.pixels(img, ys, xs).reshape(M, B, store.dim).to(device, dtype, non_blocking=True)
        y = pixels.labels[idx].to(device)
        logits, features = ens(x, with_features=True)
        losses = per_member_ce(logits, y)  # the classifier's loss: what early stopping watches
        total = losses
        if etf is not None:
            if regularizer == "etf_decoupled":
                features = nets[1](x, with_features=True)[1]
            total = cfg["etf_alpha"] * losses + cfg["etf_beta"] * per_member_ce(features @ etf, y)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
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
            torch_save_atomic({"members": members, "num_pixels": N, "nets": [n.state_dict() for n in nets],
                               "optimizer": opt.state_dict(), "step": step, "best": best,
                               "count": patience_count, "active": active, "gen_states": epoch_gen_states,
                               "dropout_states": [[g.get_state() for g in n.dropout_generators or []]
                                                  for n in nets],
                               "stats": stats}, state_path)
        bar.update(1)
        bar.set_postfix(epoch=epoch, active=sum(active), loss=f"{losses.mean().item():.3f}", refresh=False)
    bar.close()
    if os.path.exists(state_path):
        os.remove(state_path)
    return stats


def per_member_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member: logits [M, B, K], labels [M, B] -> [M]."""
    M, B, K = logits.shape
    return F.cross_entropy(logits.reshape(M * B, K), y.reshape(-1), reduction="none").reshape(M, B).mean(1)


def load_ensemble(exp_dir: str, num_members: int, dim: int, num_classes: int, device: str = "cpu") -> PixelEnsemble:
    """Load ``model_{0..M-1}.pth`` into one PixelEnsemble in eval mode."""
    ens = PixelEnsemble(num_members, dim, num_classes)
    for m in range(num_members):
        ckpt = torch.load(model_path(exp_dir, m), map_location="cpu", weights_only=False)
        ens.load_member(m, ckpt["model_state_dict"])
    return ens.to(device).eval()
