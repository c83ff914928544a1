"""BatchNorm over the global batch of a torchrun job, on any device and backend.

Under DistributedDataParallel each process sees only its slice of the batch, so a plain BatchNorm
normalises with that slice's statistics: N processes then compute another function than one
process does with the whole batch. torch's SyncBatchNorm computes global statistics but refuses
CPU tensors, so a gloo job on CPUs (and the test that checks torchrun against one process) could
not use it. GlobalBatchNorm2d does the same on any device: each rank's count, mean and sum of
squared deviations go through one differentiable all-reduce per layer and are combined exactly
(Chan et al.'s parallel variance), so the statistics, the gradients through them and the running
averages are those of the whole batch. In eval mode, and in a world of one, it is nn.BatchNorm2d.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and state-dict keys) whose training statistics are
    over every rank's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Statistics in float32 at least: under autocast the convolutions hand over bf16/fp16.
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = xs.mean((0, 2, 3))
        m2 = (xs - mean[:, None, None]).square().sum((0, 2, 3))
        local = torch.stack([torch.full_like(mean, xs.numel() / xs.shape[1]), mean, m2])  # [3, C]
        size, rank = dist.get_world_size(), dist.get_rank()
        slots = torch.cat([local.new_zeros(rank, *local.shape), local[None],
                           local.new_zeros(size - rank - 1, *local.shape)])
        every = dist_nn.all_reduce(slots)  # [size, 3, C]: every rank's statistics, gradients flowing back
        n, means, m2s = every[:, 0], every[:, 1], every[:, 2]
        total = n.sum(0)
        g_mean = (n * means).sum(0) / total
        g_m2 = m2s.sum(0) + (n * (means - g_mean).square()).sum(0)
        if self.track_running_stats:
            self._update_running(g_mean.detach(), (g_m2 / (total - 1)).detach())
        y = (xs - g_mean[:, None, None]) * torch.rsqrt(g_m2 / total + self.eps)[:, None, None]
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """As F.batch_norm does: an exponential average with ``momentum``, cumulative when it is None."""
        self.num_batches_tracked.add_(1)
        f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_(unbiased_var.to(self.running_var.dtype), alpha=f)


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every nn.BatchNorm2d replaced, in place, by a GlobalBatchNorm2d holding the same
    parameters and statistics; returns it. Call it before moving the model to its device and dtype."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            use_global_batchnorm(child)
    return module
