"""Load files this tool writes (ensemble members, training snapshots) without running pickled code.

Every ``.pth``/``.pt`` file of a run folder holds tensors and plain Python values only, so it
loads with ``torch.load(..., weights_only=True)``. A run folder may come from someone else; a
file in it that needs pickled code to load is refused with one line instead of executed.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from guided_diffusion.checkpoint import CheckpointError


def unsafe_global(error: BaseException) -> str | None:
    """The pickled global (e.g. ``posix.system``) that a weights_only load refused, or None when
    ``error`` is not such a refusal."""
    msg = str(error)
    # torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module ... is blocked".
    if not isinstance(error, pickle.UnpicklingError) or "unsupported global" not in msg.lower():
        return None
    found = re.search(r"GLOBAL (\S+)", msg)
    return found.group(1) if found else "an unknown class"


def load_plain(path: str, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; CheckpointError (one line) when the file needs
    pickled code (``what`` says which file it should be, e.g. "an ensemble member") or is unreadable."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged file can fail with almost any exception type
        found = unsafe_global(e)
        if found is not None:
            raise CheckpointError(
                f"{path} is refused: it stores Python objects ({found}) besides tensors and plain values, and "
                f"loading it could run code from the file ({what} written by this tool never does). "
                f"Delete it and rerun, or get the run folder from its source again") from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} ({os.path.getsize(path):,} bytes) cannot be read as {what} "
                              f"({type(e).__name__}: {first}); delete it and rerun to rebuild it") from None
