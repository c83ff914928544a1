"""Input and output paths checked for what they are before a tool spends time: an output folder that
can be created and written, an input that is a file where a file is meant and a folder where a folder is."""
from __future__ import annotations

import os
import tempfile

from .config import ConfigError


def probe_output_dir(path: str, what: str) -> None:
    """ConfigError unless folder ``path`` (``what`` names it in the message, e.g. "--out") can be
    created and written: the missing folders are made, a temp file is written into the deepest, and
    everything the probe made is removed again, so a later bad input still leaves nothing behind."""
    made, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    try:
        if not os.path.isdir(folder):
            raise ConfigError(f"{what} {path}: {folder} is a file, so the folder cannot be created there; "
                              f"move the file or choose another {what}")
        try:
            for d in reversed(made):
                os.mkdir(d)
            fd, tmp = tempfile.mkstemp(dir=path, prefix=".write_probe.", suffix=".tmp")
            os.close(fd)
            os.remove(tmp)
        except OSError as e:
            raise ConfigError(f"{what} {path} cannot be created or written ({e.strerror}); choose a folder "
                              f"you may write") from None
    finally:
        for d in made:  # deepest first; only what the probe itself made, and only while empty
            try:
                os.rmdir(d)
            except OSError:
                pass


def refuse_folder(path: str, what: str, error: type[Exception] = ConfigError) -> None:
    """``error`` when ``path`` is a folder where a file is meant (a missing path is left to the caller,
    whose message says where to get the file)."""
    if os.path.isdir(path):
        inside = sorted(name for name in os.listdir(path) if not name.startswith("."))[:5]
        listed = f" (it holds {', '.join(inside)}{', ...' if len(inside) == 5 else ''})" if inside else " (it is empty)"
        raise error(f"{what} {path} is a folder, not a file{listed}: name the file itself")


def refuse_file(path: str, what: str, error: type[Exception] = ConfigError) -> None:
    """``error`` when ``path`` is a file where a folder is meant (a missing path is left to the caller)."""
    if os.path.isfile(path):
        raise error(f"{what} {path} is a file, not a folder: name the folder that holds it")
