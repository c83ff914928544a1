"""The one place a device name ("auto", "cpu", "cuda", "cuda:1", ...) becomes a torch device."""
from __future__ import annotations

import torch

from .config import ConfigError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``name`` as a torch device; "auto" = CUDA when available, else CPU. With ``local_rank``
    (this process's place on its machine under torchrun), a CUDA device without an index is that
    process's GPU. ConfigError when torch does not know ``name`` or it asks for CUDA that is not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"'device' {name!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'device' is {name!r} but CUDA is not available; use \"auto\" or \"cpu\"")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device
