"""Atomic file writes: a temp file beside the target, fsync, then rename over it.

An interrupted run therefore never leaves a truncated mask, report, config or checkpoint
that a later step (or a resumed run) would trust.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable

import torch


# The temp names atomic_write gives: "." + target name + "." + mkstemp's 8 random characters + ".tmp".
TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it onto ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    # Same folder => same filesystem, which is what makes os.replace atomic.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # Also on KeyboardInterrupt: leave neither a half file nor a stray temp behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            # A failed write (a full disk: ENOSPC) names no file; say which output it was.
            raise OSError(e.errno, e.strerror, path) from e
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (inf, -inf, NaN) replaced by None, in nested dicts, lists, tuples.

    JSON has no Infinity or NaN: Python's json writes them anyway and strict parsers (browsers, jq, pandas)
    reject the file. null stands for "no finite value", e.g. the best_batch_loss of an ensemble member
    that stopped before early stopping compared any loss (max_epochs=1), whose best is still +inf.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers as null, see finite_or_null; indent 1, trailing
    newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(finite_or_null(obj), indent=1, allow_nan=False) + "\n")


def torch_save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(folder: str, skip_dirs_with: str) -> list[str]:
    """Delete the temp files that killed atomic writes left under ``folder`` (a SIGKILL skips the
    cleanup above); sub-folders holding a ``skip_dirs_with`` file belong to another run and are
    left alone. Only call this while owning ``folder``. Returns the removed paths."""
    removed = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.exists(os.path.join(root, d, skip_dirs_with))]
        for name in files:
            if TEMP_NAME.fullmatch(name):
                os.remove(os.path.join(root, name))
                removed.append(os.path.join(root, name))
    return removed
