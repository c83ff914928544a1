"""torch.distributed plumbing for ``torchrun`` (NCCL on GPU, gloo on CPU).

A plain ``python script.py`` is a world of one: every helper here then does the trivial
thing, so single-process runs need no launcher and no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from .device import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files every rank agrees on (configs, merged outputs, reports)."""
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: every ``size``-th one from ``rank``, so shards never overlap."""
        return list(items[self.rank::self.size])


def init_world(device: str = "auto") -> World:
    """Join the ``torchrun`` job described by the environment, or be a world of one.

    ``device`` "auto" = this rank's GPU (``LOCAL_RANK``) when CUDA is available, else CPU;
    the backend follows the device: NCCL for CUDA, gloo for CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return World(rank=rank, size=size, device=dev)


def barrier() -> None:
    """Wait for every rank (no-op in a world of one)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in a world of one); returns it."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (so that all ranks take the same decision)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a world of one)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` in a world of one):
    for results only rank 0 writes, which the other ranks need not hold."""
    if not dist.is_initialized():
        return [obj]
    main = dist.get_rank() == 0
    out: list[Any] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, out, dst=0)
    return out


def close_world() -> None:
    """Leave the process group cleanly (avoids NCCL/gloo warnings at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()
