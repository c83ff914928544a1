"""What every command-line tool shares: guided-diffusion flag options and one error policy."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
from typing import Any, Callable, Iterable

from tqdm import tqdm

from guided_diffusion.script_util import model_and_diffusion_defaults, str2bool

from .config import ConfigError
from .distributed import close_world
from .errors import INPUT_ERRORS


def add_model_flag_args(parser: argparse.ArgumentParser, title: str, skip: Iterable[str] = ()) -> None:
    """One option per guided-diffusion flag, default None, so only flags the user passes count
    (argparse defaults must never silently replace a checkpoint's architecture)."""
    group = parser.add_argument_group(title)
    for key, default in model_and_diffusion_defaults().items():
        if key in skip:
            continue
        kind = str2bool if isinstance(default, bool) else type(default)
        group.add_argument(f"--{key}", type=kind, default=None, help=f"(guided-diffusion default: {default})")


def passed_model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The guided-diffusion flags given on the command line."""
    return {k: getattr(args, k) for k in model_and_diffusion_defaults() if getattr(args, k, None) is not None}


def read_flags_file(path: str) -> dict[str, Any]:
    """Flags from a JSON file: a checkpoint sidecar ({"flags": {...}}) or a flat dict."""
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model_flags {path}: cannot read it as JSON ({e})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--model_flags {path}: expected a JSON object of flags")
    return dict(loaded.get("flags", loaded))


# Failures of the machine, not of the code (a full disk, a read-only or blocked path), with what to do:
# they are bad input like a wrong config, so they get one line too. Other OSErrors keep their traceback.
OS_ERROR_HINTS = {
    errno.ENOSPC: "free disk space or write the outputs elsewhere",
    errno.EDQUOT: "free space in your quota or write the outputs elsewhere",
    errno.EACCES: "you may not write there; choose another output folder",
    errno.EPERM: "you may not write there; choose another output folder",
    errno.EROFS: "the filesystem is read-only; choose another output folder",
    errno.ENOTDIR: "a file stands where a folder is needed; move it or choose another path",
    errno.EEXIST: "a file stands where a folder is needed; move it or choose another path",
    errno.EISDIR: "a folder stands where a file is needed; move it or choose another path",
}


def run_cli(job: Callable[[], object]) -> int:
    """Run ``job``; a wrong input becomes one ``error: ...`` line and exit status 2."""
    try:
        job()
    except INPUT_ERRORS as e:
        # A progress bar the error interrupted would otherwise share (and hide) the error's line.
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in OS_ERROR_HINTS:
            raise
        print(f"error: {e.filename or 'an output file'}: {e.strerror} ({OS_ERROR_HINTS[e.errno]})", file=sys.stderr)
        return 2
    finally:
        close_world()  # a torchrun job leaves its process group cleanly, even after an error
    return 0


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                       defaults: dict[str, Any] | None = None, skip: Iterable[str] = ()) -> None:
    """One ``--<field>`` option per field of the options dataclass ``cls``, so each default is
    defined once, in the dataclass (``defaults`` replaces some for one tool)."""
    kinds = {"bool": str2bool, "int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        parser.add_argument(f"--{f.name}", type=kinds[str(f.type)], default=default, help=f"(default: {default})")


def dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` built from the options ``add_dataclass_args`` added, plus ``fixed`` fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in fixed}, **fixed)
