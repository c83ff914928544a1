"""The arithmetic a training run computes in, shared by the DDPM and DeepLab trainers.

fp32 as published; bf16/fp16 autocast on CUDA (fp16 with a gradient scaler); fp64 everywhere:
float64 weights and arithmetic, for checking that two ways of training (e.g. one process vs
torchrun) compute the same thing.
"""
from __future__ import annotations

import contextlib

import torch

from .config import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def check_precision_device(precision: str, device: torch.device) -> None:
    """Autocast to bf16/fp16 is for CUDA (on the CPU it would be slow and untested)."""
    if precision in _AUTOCAST and device.type != "cuda":
        raise ConfigError(f"precision {precision} needs a CUDA device; on {device} use fp32")


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights and the loss: autocast keeps float32 weights."""
    return torch.float64 if precision == "fp64" else torch.float32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context (a no-op for fp32 and fp64)."""
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (its narrow exponent underflows small gradients); None otherwise."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None
