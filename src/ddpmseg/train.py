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
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import torch_save_atomic
from .ensemble import PixelEnsemble
from .etf import load_or_create_etf
from .numerics import NumericalError, nonfinite_members
from .safeload import load_plain
from .seeding import member_seed, torch_generator
from .store import FeatureStore

STATE_FILE = "train_state.pt"
# Largest float32 [pixels, dim] matrix feature_matrix "auto" builds: celebamask64 (80k pixels x
# 1152 = 0.35 GiB) fits, so its batches skip the per-batch upsampling; a bedroom_28-shaped run
# (40 images, 8448-d, ~80 GiB) stays lazy and under its 4 GB peak-memory target.
DENSE_BUDGET_BYTES = 1 << 30
DENSE_CHUNK = 8192  # pixels upsampled per call while the dense matrix is built
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


def member_generator(seed: int, member: int, part: str = "member", device: str = "cpu") -> torch.Generator:
    """Member ``member``'s stream ``part`` (ddpmseg.seeding.MEMBER_PARTS) on ``device``."""
    return torch_generator(member_seed(seed, member, part), device)


def make_optimizer(params: list, cfg: dict) -> torch.optim.Optimizer:
    """Adam (the original) or AdamW; the fused kernel is the same update in one pass (9x faster on
    CPU for the 8448-d layer). Parameters without a gradient (the decoupled trunk's unused last
    layer) are skipped by both."""
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"], fused=True)


def wants_dense(num_pixels: int, dim: int, mode: str) -> bool:
    """Whether feature_matrix ``mode`` builds the dense float32 matrix for this training set."""
    return mode == "dense" or (mode == "auto" and num_pixels * dim * 4 <= DENSE_BUDGET_BYTES)


def training_features(store: FeatureStore, pixels: LabelledPixels, mode: str,
                      log: Callable[[str], None] = print) -> Callable[[torch.Tensor], torch.Tensor]:
    """``rows(idx)``: upsampled features float32 [len(idx), dim] of training pixels ``idx``.

    "dense" (or "auto" within DENSE_BUDGET_BYTES) computes every pixel's row once with the same
    ``store.pixels`` a lazy batch calls (an elementwise interpolation, so the rows are the same
    numbers) and then gathers rows; "lazy" upsamples each batch from the native maps.
    """
    N = len(pixels.labels)
    if not wants_dense(N, store.dim, mode):
        return lambda idx: store.pixels(*pixels.coords(idx))
    dense = torch.empty(N, store.dim)
    log(f"feature matrix: {N:,} training pixels x {store.dim} upsampled once, {dense.nbytes / 2**30:.2f} GiB float32")
    for start in range(0, N, DENSE_CHUNK):
        chunk = torch.arange(start, min(start + DENSE_CHUNK, N))
        dense[start:start + len(chunk)] = store.pixels(*pixels.coords(chunk))
    return lambda idx: dense.index_select(0, idx)


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
        trunk = PixelEnsemble(M, store.dim, K, generators=[member_generator(seed, m, "trunk") for m in members],
                              dropout=cfg["dropout"], dropout_position=cfg["dropout_position"]).to(device, dtype)
        nets.append(trunk)
        params += [p for n, p in trunk.named_parameters() if not n.endswith(".2")]
    for net, part in zip(nets, ("member_dropout", "trunk_dropout")):
        if net.dropout:
            net.dropout_generators = [member_generator(seed, m, part, device) for m in members]
    opt = make_optimizer(params, cfg)
    step = 0  # iterations taken; epoch, batch = divmod(step, n_batches)
    best = [float("inf")] * M
    patience_count = [0] * M
    active = [True] * M
    stats = {m: {} for m in members}
    epoch_gen_states = [g.get_state() for g in gens]

    state_path = os.path.join(exp_dir, STATE_FILE)
    if os.path.exists(state_path):
        st = load_plain(state_path, "a training snapshot")
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
    rows = training_features(store, pixels, cfg["feature_matrix"], log)

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
        x = rows(idx.reshape(-1)).reshape(M, B, store.dim).to(device, dtype, non_blocking=True)
        y = pixels.labels[idx].to(device)
        logits, features = ens(x, with_features=True)
        if regularizer == "etf_decoupled":
            features = nets[1](x, with_features=True)[1]
        losses, total = member_losses(logits, features, y, etf, cfg)
        bad = [j for j in nonfinite_members(total) if active[j]]  # finished members are saved already
        if bad:  # stop before the step: no weights, snapshot or member file ever holds NaN
            raise NumericalError(
                f"ensemble training: the loss of member(s) {[members[j] for j in bad]} is "
                f"{total[bad[0]].item()} at iteration {step + 1} (epoch {epoch}); members finished before are "
                f"kept. Lower learning_rate (now {cfg['learning_rate']}) or check the training features")
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


def member_losses(logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor, etf: torch.Tensor | None,
                  cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(the classifier's cross-entropy [M]: what early stopping watches, the loss minimised [M]):
    with an ETF frame, ``etf_alpha * CE(logits) + etf_beta * CE(features @ etf)``."""
    losses = per_member_ce(logits, y)
    if etf is None:
        return losses, losses
    return losses, cfg["etf_alpha"] * losses + cfg["etf_beta"] * per_member_ce(features @ etf, y)


def load_ensemble(exp_dir: str, num_members: int, dim: int, num_classes: int, device: str = "cpu") -> PixelEnsemble:
    """Load ``model_{0..M-1}.pth`` into one PixelEnsemble in eval mode."""
    ens = PixelEnsemble(num_members, dim, num_classes)
    for m in range(num_members):
        ckpt = load_plain(model_path(exp_dir, m), "an ensemble member")
        ens.load_member(m, ckpt["model_state_dict"])
    return ens.to(device).eval()
