"""Timestep samplers for training: uniform, or importance sampling by each step's loss."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist

from .gaussian_diffusion import GaussianDiffusion

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name: str, diffusion: GaussianDiffusion) -> "ScheduleSampler":
    """Build the sampler called ``name`` ("uniform" or "loss-second-moment") for ``diffusion``."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown schedule sampler {name!r}; accepted names: {', '.join(SCHEDULE_SAMPLERS)}")


class ScheduleSampler(ABC):
    """A distribution over timesteps, used to reduce the variance of the training objective.

    Sampled losses are reweighted by 1 / (T p(t)) so the objective stays an unbiased estimate
    of the uniform-timestep one.
    """

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised positive weight per timestep."""

    def sample(self, batch_size: int, device,
               rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw timesteps (int64) and their importance weights (float32) for one batch, from
        ``rng`` when given (reproducible training), else from NumPy's global RNG (the original)."""
        w = self.weights()
        p = w / np.sum(w)
        indices = (rng if rng is not None else np.random).choice(len(p), size=(batch_size,), p=p)
        weights = 1 / (len(p) * p[indices])
        return (
            torch.from_numpy(indices).long().to(device),
            torch.from_numpy(weights).float().to(device),
        )


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights are updated from the losses observed at each timestep."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this process's (timestep, loss) pairs, gathered across ranks when distributed.

        Every rank must see the same history so that all ranks keep identical weights.
        """
        pairs = list(zip(local_ts.tolist(), local_losses.detach().float().tolist()))
        if dist.is_available() and dist.is_initialized():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pairs)
            pairs = [pair for rank_pairs in gathered for pair in rank_pairs]
        self.update_with_all_losses([t for t, _ in pairs], [loss for _, loss in pairs])

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """Update the weights from (timestep, loss) pairs of the whole global batch."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[loss_t^2]) over the last ``history_per_term`` losses per t.

    Uniform until every timestep has a full history; a ``uniform_prob`` share of the mass
    always stays uniform so that no timestep is starved.
    """

    def __init__(self, diffusion: GaussianDiffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                # Full: drop the oldest loss and append the newest.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())
