"""Train the pixel-classifier ensemble on a FeatureStore: all members in one batched step, or one
member after another, as ``ensemble_step`` says or measures faster (ddpmseg.classifier.ensemble_step).

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
cross-entropy, so a regularizer changes what is learned, not when training stops. Class weighting
(ddpmseg.classifier.class_balance) weights both cross-entropies, the watched one too (it is the
objective then), or replaces the shuffled batches by class-balanced draws.

``train_ensemble`` chooses the step and runs a ``GroupTraining`` per group of members: a short loop
over units tested on their own: ``EnsembleSettings`` (the config keys it reads), ``BatchSource``
(which pixels each member sees), ``MemberNets`` (networks, losses, step), ``EarlyStopping``,
``budget_spent`` (max_epochs/max_steps), ``TrainingCurves`` (each member's loss and accuracy, saved
in its file) and ``TrainingState`` (its snapshot/restore pair is what makes a run resumable).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..common.atomic import torch_save_atomic
from ..common.config import DEFAULTS, ConfigError, check_choice, check_type
from .class_balance import BalancedBatchSource, class_weights, weighted_mean
from .ensemble import PixelEnsemble
from .ensemble_step import StepChoice, choose_step
from .etf import load_or_create_etf
from ..common.numerics import NumericalError
from ..common.safeload import load_plain
from ..common.seeding import member_seed, torch_generator
from ..features.store import FeatureStore

STATE_FILE = "train_state.pt"
# Largest float32 [pixels, dim] matrix feature_matrix "auto" builds: celebamask64 (80k pixels x
# 1152 = 0.35 GiB) fits, so its batches skip the per-batch upsampling; a bedroom_28-shaped run
# (40 images, 8448-d, ~80 GiB) stays lazy and under its 4 GB peak-memory target.
DENSE_BUDGET_BYTES = 1 << 30
DENSE_CHUNK = 8192  # pixels upsampled per call while the dense matrix is built
SAVE_EVERY = 2000  # iterations between resumable snapshots: a crash loses at most this much
# Batches averaged into one point of a member's training curve: ~26 points per celebamask64 epoch
# (1280 batches), a few hundred over a run, small beside the member's weights.
CURVE_EVERY = 50


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
    """Member ``member``'s stream ``part`` (ddpmseg.common.seeding.MEMBER_PARTS) on ``device``."""
    return torch_generator(member_seed(seed, member, part), device)


@dataclass(frozen=True)
class EnsembleSettings:
    """The experiment-config keys ensemble training reads (their meaning and defaults: ddpmseg.common.config).

    Build it once with ``from_config`` from a validated config, so that a missing or mistyped key
    is an error where the settings are made, not a KeyError deep in the training loop.
    """

    seed: int
    number_class: int
    batch_size: int
    feature_matrix: str
    ensemble_step: str
    # the members' networks and losses
    dropout: float
    dropout_position: str
    regularizer: str
    etf_alpha: float
    etf_beta: float
    class_weighting: str
    # the optimizer
    optimizer: str
    learning_rate: float
    weight_decay: float
    # when a member stops
    max_epochs: int
    early_stop_after_epoch: int
    early_stop_patience: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EnsembleSettings:
        """The settings of ``cfg`` (a config from ``load_config``/``validate``, which fill every default).

        Raises ConfigError naming every missing key, or the first key of the wrong type or value.
        """
        where = "ensemble settings"
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in cfg]
        if missing:
            raise ConfigError(f"{where}: the config has no {', '.join(map(repr, missing))}; build it with "
                              "ddpmseg.common.config.load_config or validate, which fill in every default")
        values = {k: check_type(k, cfg[k], DEFAULTS[k][0], where) for k in names}
        for k in names:
            check_choice(k, values[k], where)
        return cls(**values)


def make_optimizer(params: list, settings: EnsembleSettings) -> torch.optim.Optimizer:
    """Adam (the original) or AdamW; the fused kernel is the same update in one pass (9x faster on
    CPU for the 8448-d layer). Parameters without a gradient (the decoupled trunk's unused last
    layer) are skipped by both."""
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)


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


def batches_per_epoch(num_pixels: int, batch_size: int, epoch_size: int | None) -> int:
    """Batches in an epoch of ``epoch_size`` pixels (None: all of them, the original's epoch), drop_last."""
    n_batches = min(num_pixels, epoch_size or num_pixels) // batch_size
    if n_batches == 0:
        raise ValueError(f"only {num_pixels} labelled training pixels, fewer than one batch of {batch_size}")
    return n_batches


class BatchSource:
    """Which labelled pixels each member sees at each iteration.

    Like a DataLoader(shuffle=True, drop_last=True) per member: at the start of every epoch each
    member shuffles all N pixels with its own generator, then takes ``n_batches`` batches of
    ``batch_size`` in that order. ``epoch_states`` (the generators' states when the current
    epoch's shuffle was drawn) and ``restore`` let a resumed run draw the same batches.
    """

    def __init__(self, generators: list[torch.Generator], num_pixels: int, batch_size: int, n_batches: int):
        self.generators, self.num_pixels = generators, num_pixels
        self.batch_size, self.n_batches = batch_size, n_batches
        self.epoch_states = [g.get_state() for g in generators]
        self._orders: list[torch.Tensor] | None = None

    def restore(self, epoch_states: list[torch.Tensor]) -> None:
        for g, state in zip(self.generators, epoch_states):
            g.set_state(state)
        self.epoch_states, self._orders = epoch_states, None

    def _shuffle(self) -> list[torch.Tensor]:
        return [torch.randperm(self.num_pixels, generator=g) for g in self.generators]

    def indices(self, step: int) -> torch.Tensor:
        """Pixel indices [members, batch_size] of iteration ``step``; called once per iteration, in order."""
        pos = step % self.n_batches
        if self._orders is None:  # the first call (or after restore): the shuffle epoch_states starts
            self._orders = self._shuffle()
        if pos == 0 and step > 0:  # a new epoch: every member reshuffles with its own stream
            self.epoch_states = [g.get_state() for g in self.generators]
            self._orders = self._shuffle()
        B = self.batch_size
        return torch.stack([order[pos * B:(pos + 1) * B] for order in self._orders])


class EarlyStopping:
    """The original's per-member rule, on plain floats.

    From the epoch after ``after_epoch`` on, a member's batch loss below its best so far resets
    its count and any other loss (a tie too) adds one; the member stops once its count exceeds
    ``patience``.
    """

    def __init__(self, num_members: int, after_epoch: int, patience: int):
        self.after_epoch, self.patience = after_epoch, patience
        self.best = [float("inf")] * num_members
        self.count = [0] * num_members

    def update(self, epoch: int, losses: Sequence[float], active: Sequence[bool]) -> list[int]:
        """Take one iteration's batch losses (epoch index ``epoch``); the members that stop now.

        Members not ``active`` (stopped already) are left as they are.
        """
        if epoch <= self.after_epoch:
            return []
        stopped = []
        for j, loss in enumerate(losses):
            if not active[j]:
                continue
            if loss < self.best[j]:
                self.best[j], self.count[j] = loss, 0
            else:
                self.count[j] += 1
            if self.count[j] > self.patience:
                stopped.append(j)
        return stopped


def budget_spent(step: int, epoch_cap: int, max_steps: int | None) -> str | None:
    """Why every member still training stops after iteration ``step``: "max_epochs" (``epoch_cap``
    iterations), "max_steps", or None. ">=": a run resumed from a snapshot taken with a larger
    budget still stops."""
    for limit, reason in ((epoch_cap, "max_epochs"), (max_steps, "max_steps")):
        if limit is not None and step >= limit:
            return reason
    return None


@dataclass
class MemberNets:
    """The networks trained together: the ensemble, the decoupled ETF trunk (or None), the ETF frame
    (or None) and one optimizer over their parameters; ``generators`` are the members' init and
    shuffling streams."""

    ensemble: PixelEnsemble
    trunk: PixelEnsemble | None
    etf: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]

    @classmethod
    def build(cls, dim: int, s: EnsembleSettings, members: list[int], exp_dir: str, device: str,
              dtype: torch.dtype) -> MemberNets:
        """The members' networks, initialised from their own streams, with their dropout streams set."""
        M, K = len(members), s.number_class
        gens = [member_generator(s.seed, m) for m in members]
        ens = PixelEnsemble(M, dim, K, generators=gens, dropout=s.dropout,
                            dropout_position=s.dropout_position).to(device, dtype)
        params = list(ens.parameters())
        etf = trunk = None
        if s.regularizer != "none":
            etf = load_or_create_etf(exp_dir, ens.feature_dim, K, s.seed).to(device, dtype)
        if s.regularizer == "etf_decoupled":
            # The published regularizer: its own trunk (the classifier minus its last Linear) and its own
            # init stream, so the classifier trains exactly as it would with etf_beta = 0.
            trunk = PixelEnsemble(M, dim, K, generators=[member_generator(s.seed, m, "trunk") for m in members],
                                  dropout=s.dropout, dropout_position=s.dropout_position).to(device, dtype)
            params += [p for n, p in trunk.named_parameters() if not n.endswith(".2")]
        nets = cls(ens, trunk, etf, make_optimizer(params, s), gens)
        for net, part in zip(nets.modules, ("member_dropout", "trunk_dropout")):
            if net.dropout:
                net.dropout_generators = [member_generator(s.seed, m, part, device) for m in members]
        return nets

    @property
    def modules(self) -> list[PixelEnsemble]:
        return [self.ensemble] if self.trunk is None else [self.ensemble, self.trunk]

    def losses(self, x: torch.Tensor, y: torch.Tensor, s: EnsembleSettings,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(each member's cross-entropy [M], each member's loss to minimise [M]: see member_losses,
        each member's pixel accuracy on the batch [M], in the losses' dtype); ``weights`` [K]: the class
        weights of class_weighting, None for none."""
        logits, features = self.ensemble(x, with_features=True)
        if self.trunk is not None:
            features = self.trunk(x, with_features=True)[1]
        ce, total = member_losses(logits, features, y, self.etf, s.etf_alpha, s.etf_beta, weights)
        return ce, total, (logits.argmax(-1) == y).to(ce.dtype).mean(1)

    def update(self, total: torch.Tensor) -> None:
        """One optimizer step on the sum of the members' losses (each member's gradient is its own)."""
        self.optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        self.optimizer.step()

    def dropout_states(self) -> list[list[torch.Tensor]]:
        return [[g.get_state() for g in net.dropout_generators or []] for net in self.modules]

    def restore_dropout_states(self, states: list[list[torch.Tensor]]) -> None:
        for net, net_states in zip(self.modules, states):
            for g, state in zip(net.dropout_generators or [], net_states):
                g.set_state(state)


class TrainingCurves:
    """Each member's training curve: its mean batch cross-entropy and pixel accuracy over every
    CURVE_EVERY batches, the last point over the batches since the one before it up to where the
    member stopped. ``points[j]["batch"]`` is the iteration a point ends at."""

    def __init__(self, num_members: int):
        self.points = [{"every": CURVE_EVERY, "batch": [], "loss": [], "accuracy": []} for _ in range(num_members)]
        self.window = [[0.0, 0.0, 0] for _ in range(num_members)]  # loss sum, accuracy sum, batches

    def add(self, losses: Sequence[float], accuracies: Sequence[float], active: Sequence[bool]) -> None:
        """Take one iteration's batch losses and accuracies of the members still ``active``."""
        for j, (loss, accuracy) in enumerate(zip(losses, accuracies)):
            if active[j]:
                w = self.window[j]
                w[0], w[1], w[2] = w[0] + loss, w[1] + accuracy, w[2] + 1

    def close_point(self, j: int, step: int) -> None:
        """End member ``j``'s current point at iteration ``step`` (nothing when it holds no batch)."""
        loss_sum, accuracy_sum, n = self.window[j]
        if n:
            p = self.points[j]
            p["batch"].append(step)
            p["loss"].append(loss_sum / n)
            p["accuracy"].append(accuracy_sum / n)
            self.window[j] = [0.0, 0.0, 0]


class TrainingState:
    """Where a training run stands: the iteration, which members still train, the stats of those
    that stopped, early stopping's records, and (through ``nets`` and ``batches``) weights, optimizer
    and random streams. ``snapshot``/``restore`` cover all of it, so a resumed run replays the
    uninterrupted one bit for bit."""

    def __init__(self, members: list[int], num_pixels: int, nets: MemberNets, batches: BatchSource,
                 stopping: EarlyStopping, step_record: dict | None = None):
        self.members, self.num_pixels = members, num_pixels
        self.step_record = step_record  # ensemble_step.StepChoice.record: how these members trained
        self.nets, self.batches, self.stopping = nets, batches, stopping
        self.step = 0  # iterations taken; epoch, batch = divmod(step, n_batches)
        self.active = [True] * len(members)
        self.stats: dict[int, dict] = {m: {} for m in members}
        self.curves = TrainingCurves(len(members))

    def _fields(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
        """Each snapshot key once, with how its value is read and how it is put back."""
        modules, opt = self.nets.modules, self.nets.optimizer

        def attribute(obj: object, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
            return lambda: getattr(obj, name), lambda value: setattr(obj, name, value)

        def load_nets(state_dicts: list[dict]) -> None:
            for net, sd in zip(modules, state_dicts):
                net.load_state_dict(sd)

        return {"nets": (lambda: [net.state_dict() for net in modules], load_nets),
                "optimizer": (opt.state_dict, opt.load_state_dict),
                "step": attribute(self, "step"),
                "best": attribute(self.stopping, "best"),
                "count": attribute(self.stopping, "count"),
                "active": attribute(self, "active"),
                "gen_states": (lambda: self.batches.epoch_states, self.batches.restore),
                "dropout_states": (self.nets.dropout_states, self.nets.restore_dropout_states),
                "stats": attribute(self, "stats"),
                "curves": attribute(self.curves, "points"),
                "curve_window": attribute(self.curves, "window")}

    def snapshot(self) -> dict:
        """Everything a resumed run needs, as plain tensors and lists (see safeload.load_plain)."""
        return {"members": self.members, "num_pixels": self.num_pixels,
                **{key: read() for key, (read, _) in self._fields().items()}}

    def restore(self, snapshot: dict) -> None:
        for key, (_, write) in self._fields().items():
            write(snapshot[key])

    def resume(self, path: str, log: Callable[[str], None]) -> None:
        """Continue from the snapshot at ``path`` if there is one for these members and pixels."""
        if not os.path.exists(path):
            return
        snapshot = load_plain(path, "a training snapshot")
        if snapshot["members"] == self.members and snapshot["num_pixels"] == self.num_pixels:
            self.restore(snapshot)
            log(f"resumed training of members {self.members} at iteration {self.step}")
        else:
            log(f"ignoring {STATE_FILE}: it belongs to another training set or member list")

    def finish(self, j: int, reason: str, n_batches: int) -> None:
        """Member ``members[j]`` stops now: record why and its stats."""
        self.active[j] = False
        self.curves.close_point(j, self.step)
        best = self.stopping.best[j]
        # None: training ended before early stopping watched a batch (inf has no place in strict JSON).
        self.stats[self.members[j]] = {"epochs": -(-self.step // n_batches), "iterations": self.step,
                                       "stopped": reason, "best_batch_loss": best if math.isfinite(best) else None,
                                       **({"ensemble_step": self.step_record} if self.step_record else {})}


def save_member(exp_dir: str, state: TrainingState, j: int, dim: int, number_class: int) -> None:
    """Write member ``members[j]`` as the original's checkpoint (an nn.DataParallel state dict)."""
    sd = state.nets.ensemble.member_state_dict(j)
    m = state.members[j]
    torch_save_atomic({"model_state_dict": {f"module.{k}": v.cpu() for k, v in sd.items()},
                       "dim": dim, "number_class": number_class, "stats": state.stats[m],
                       "curve": state.curves.points[j]}, model_path(exp_dir, m))


def refuse_nonfinite(total: Sequence[float], state: TrainingState, epoch: int, learning_rate: float) -> None:
    """Raise NumericalError if an active member's loss (``total``, read to the host) is NaN/inf: called
    before the step, so no weights, snapshot or member file ever holds NaN (finished members are saved
    already)."""
    bad = [j for j, loss in enumerate(total) if state.active[j] and not math.isfinite(loss)]
    if bad:
        raise NumericalError(
            f"ensemble training: the loss of member(s) {[state.members[j] for j in bad]} is "
            f"{total[bad[0]]} at iteration {state.step + 1} (epoch {epoch}); members finished before are "
            f"kept. Lower learning_rate (now {learning_rate}) or check the training features")


def progress_bar(members: list[int], step: int, enabled: bool) -> tqdm:
    return tqdm(desc=f"members {members[0]}-{members[-1]}", initial=step, unit="batch", dynamic_ncols=True,
                mininterval=2.0, disable=not enabled)


def loss_class_weights(s: EnsembleSettings, labels: torch.Tensor, device: str, dtype: torch.dtype,
                       log: Callable[[str], None]) -> torch.Tensor | None:
    """The class weights [K] of the loss that class_weighting asks for (None for none), logged once."""
    weights = class_weights(labels, s.number_class, s.class_weighting)
    if weights is None:
        return None
    log(f"class weights ({s.class_weighting}, pixel-weighted mean 1): "
        + ", ".join(f"{w:.3g}" for w in weights.tolist()))
    return weights.to(device, dtype)


def member_batches(s: EnsembleSettings, generators: list[torch.Generator], labels: torch.Tensor,
                   n_batches: int) -> BatchSource | BalancedBatchSource:
    """The members' batches: class-balanced draws for balanced_sampling, else the epoch shuffles."""
    if s.class_weighting == "balanced_sampling":
        return BalancedBatchSource(generators, labels, s.batch_size, s.number_class)
    return BatchSource(generators, len(labels), s.batch_size, n_batches)


def min_iterations(s: EnsembleSettings, n_batches: int, max_steps: int | None) -> int:
    """Iterations a member trains at the least: its budget, or the earliest early stop (epoch
    ``early_stop_after_epoch + 1`` and ``early_stop_patience`` batches more)."""
    earliest_stop = (s.early_stop_after_epoch + 1) * n_batches + s.early_stop_patience
    return min(s.max_epochs * n_batches, max_steps or earliest_stop, earliest_stop)


def snapshot_members(path: str) -> list[int] | None:
    """The members an interrupted run's snapshot at ``path`` was training, None without one."""
    return load_plain(path, "a training snapshot")["members"] if os.path.exists(path) else None


@dataclass
class TrainingInputs:
    """What every member of a train_ensemble call trains on: the store and labelled pixels, ``rows``
    (training_features), the settings, the batches per epoch, and the members' device and dtype."""

    store: FeatureStore
    pixels: LabelledPixels
    rows: Callable[[torch.Tensor], torch.Tensor]
    settings: EnsembleSettings
    n_batches: int
    device: str
    dtype: torch.dtype
    class_weights: torch.Tensor | None  # of the loss (class_weighting); None for none

    @classmethod
    def build(cls, store: FeatureStore, pixels: LabelledPixels, settings: EnsembleSettings, device: str = "cpu",
              dtype: torch.dtype = torch.float32, epoch_size: int | None = None,
              log: Callable[[str], None] = print) -> TrainingInputs:
        n_batches = batches_per_epoch(len(pixels.labels), settings.batch_size, epoch_size)
        rows = training_features(store, pixels, settings.feature_matrix, log)
        weights = loss_class_weights(settings, pixels.labels, device, dtype, log)
        return cls(store, pixels, rows, settings, n_batches, device, dtype, weights)


class GroupTraining:
    """Members trained together from their own streams, one iteration per ``step``; ``run`` steps
    until every member stopped, writing each member's file as it stops and a periodic snapshot."""

    def __init__(self, inputs: TrainingInputs, exp_dir: str, members: list[int], max_steps: int | None,
                 step_record: dict | None = None):
        s, N, n_batches = inputs.settings, len(inputs.pixels.labels), inputs.n_batches
        self.inputs, self.s, self.exp_dir, self.max_steps = inputs, s, exp_dir, max_steps
        self.nets = MemberNets.build(inputs.store.dim, s, members, exp_dir, inputs.device, inputs.dtype)
        self.state = TrainingState(members, N, self.nets, member_batches(s, self.nets.generators, inputs.pixels.labels,
                                                                         n_batches),
                                   EarlyStopping(len(members), s.early_stop_after_epoch, s.early_stop_patience),
                                   step_record)
        self.state_path = os.path.join(exp_dir, STATE_FILE)
        for net in self.nets.modules:
            net.train()

    def stop(self, j: int, reason: str) -> None:
        self.state.finish(j, reason, self.inputs.n_batches)
        save_member(self.exp_dir, self.state, j, self.inputs.store.dim, self.s.number_class)

    def step(self) -> tuple[int, float]:
        """One iteration of every member (those stopped too: the batched step has no gaps); returns the
        epoch index and the members' mean batch loss, read to the host like every member's loss."""
        s, state, inp, M = self.s, self.state, self.inputs, len(self.state.members)
        epoch = state.step // inp.n_batches
        idx = state.batches.indices(state.step)  # [M, B]
        x = inp.rows(idx.reshape(-1)).reshape(M, s.batch_size, inp.store.dim).to(inp.device, inp.dtype,
                                                                                  non_blocking=True)
        losses, total, accuracies = self.nets.losses(x, inp.pixels.labels[idx].to(inp.device), s,
                                                      inp.class_weights)
        # The iteration's one device sync, before the update: the NaN check needs the losses on the host.
        loss_list, accuracy_list, total_list = torch.stack([losses.detach(), accuracies, total.detach()]).tolist()
        refuse_nonfinite(total_list, state, epoch, s.learning_rate)
        self.nets.update(total)
        state.step += 1
        state.curves.add(loss_list, accuracy_list, state.active)
        for j in state.stopping.update(epoch, loss_list, state.active):
            self.stop(j, "early_stop")
        cap = budget_spent(state.step, s.max_epochs * inp.n_batches, self.max_steps)
        for j in range(M) if cap else ():
            if state.active[j]:
                self.stop(j, cap)
        for j in range(M) if state.step % CURVE_EVERY == 0 else ():
            state.curves.close_point(j, state.step)
        if state.step % SAVE_EVERY == 0 and any(state.active):
            torch_save_atomic(state.snapshot(), self.state_path)
        return epoch, sum(loss_list) / M

    def run(self, log: Callable[[str], None], progress: bool) -> dict:
        """Resume from a snapshot of these members if there is one, train until all stopped; their stats."""
        state = self.state
        state.resume(self.state_path, log)
        bar = progress_bar(state.members, state.step, progress)
        while any(state.active):
            epoch, loss = self.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, active=sum(state.active), loss=f"{loss:.3f}", refresh=False)
        bar.close()
        if os.path.exists(self.state_path):
            os.remove(self.state_path)
        return state.stats


def choose_training_step(inputs: TrainingInputs, members: list[int], exp_dir: str,
                         max_steps: int | None) -> StepChoice:
    """The step ``members`` train with (ensemble_step.choose_step): its probe trains throwaway copies."""
    s = inputs.settings
    return choose_step(s.ensemble_step, members, snapshot_members(os.path.join(exp_dir, STATE_FILE)),
                       min_iterations(s, inputs.n_batches, max_steps), s.batch_size,
                       lambda group, folder: GroupTraining(inputs, folder, group, None))


def train_ensemble(store: FeatureStore, pixels: LabelledPixels, settings: EnsembleSettings, exp_dir: str,
                   members: list[int], device: str = "cpu", log=print, max_steps: int | None = None,
                   epoch_size: int | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
                   step: StepChoice | None = None) -> dict:
    """Train ``members`` (indices into the ensemble); returns per-member stats.

    Members train all in one batched step or one after another, as ``step`` says (None: as
    ``settings.ensemble_step`` says or measures, see choose_training_step); each member's training
    is the same either way. An epoch is ``epoch_size // batch_size`` batches from a fresh shuffle of
    all pixels (default: all of them, the original's epoch). ``max_steps`` caps the iterations
    (members still active then stop with reason "max_steps"): a compute budget for benchmarks and
    smoke runs, not part of the published method. ``dtype`` is the members' arithmetic: float32 as
    published; float64 lets tests check equivalences to rounding that no CPU's kernels can move.
    ``progress=False`` hides the progress bar (callers that train many small probes show their own).
    """
    inputs = TrainingInputs.build(store, pixels, settings, device, dtype, epoch_size, log)
    return train_members(inputs, exp_dir, members, log, max_steps, progress, step)


def train_members(inputs: TrainingInputs, exp_dir: str, members: list[int], log=print, max_steps: int | None = None,
                  progress: bool = True, step: StepChoice | None = None) -> dict:
    """train_ensemble on inputs already built (the feature matrix and class weights made once): what
    bench/ensemble_throughput.py times, so that it measures training alone, as its baseline does."""
    choice = step or choose_training_step(inputs, members, exp_dir, max_steps)
    log(choice.describe())
    stats = {}
    for group in choice.groups(members):
        stats.update(GroupTraining(inputs, exp_dir, group, max_steps, choice.record()).run(log, progress))
    return stats


def per_member_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each member: logits [M, B, K], labels [M, B] -> [M]; with class ``weights``
    [K], the batch mean of each pixel's cross-entropy times its class's weight (class_balance.weighted_mean)."""
    M, B, K = logits.shape
    per_pixel = F.cross_entropy(logits.reshape(M * B, K), y.reshape(-1), reduction="none").reshape(M, B)
    return weighted_mean(per_pixel, y, weights)


def member_losses(logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor, etf: torch.Tensor | None,
                  etf_alpha: float, etf_beta: float,
                  weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the classifier's cross-entropy [M]: what early stopping watches, the loss minimised [M]):
    with an ETF frame, ``etf_alpha * CE(logits) + etf_beta * CE(features @ etf)``; class ``weights``
    weight both cross-entropies alike."""
    losses = per_member_ce(logits, y, weights)
    if etf is None:
        return losses, losses
    return losses, etf_alpha * losses + etf_beta * per_member_ce(features @ etf, y, weights)


def load_ensemble(exp_dir: str, num_members: int, dim: int, num_classes: int, device: str = "cpu") -> PixelEnsemble:
    """Load ``model_{0..M-1}.pth`` into one PixelEnsemble in eval mode."""
    ens = PixelEnsemble(num_members, dim, num_classes)
    for m in range(num_members):
        ckpt = load_plain(model_path(exp_dir, m), "an ensemble member")
        ens.load_member(m, ckpt["model_state_dict"])
    return ens.to(device).eval()
