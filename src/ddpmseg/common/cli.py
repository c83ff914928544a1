"""What every command-line tool shares: the options that mean the same in every command, guided-diffusion
flag options, config overrides and one error policy."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
from typing import Any, Callable, Iterable

from tqdm import tqdm

from guided_diffusion.script_util import model_and_diffusion_defaults, str2bool

from .config import ConfigError, parse_override
from .distributed import close_world
from .errors import INPUT_ERRORS
from .paths import refuse_folder


# The options that mean the same in every command that has them, defined once. A command says what
# its --out defaults to in its own description; --device and --seed default to the config's value.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--exp": dict(metavar="CONFIG", help="experiment config (JSON), e.g. experiments/celebamask64/ddpm.json"),
    "--run": dict(metavar="RUN_DIR", help="folder of a finished `ddpmseg train` run (config.json, model_*.pth); "
                                          "write --run_dir under torchrun, which takes --run for its --run_path"),
    "--set": dict(action="append", default=[], metavar="KEY=VALUE",
                  help="set a config key; the value is parsed as JSON when it can be (repeatable: a later value of "
                       "a key replaces an earlier one, as for any option). A key that has its own option here is "
                       "given by one or the other, not both"),
    "--device": dict(metavar="DEVICE", help="auto, cpu, cuda or cuda:N; auto = CUDA when available, else the CPU, "
                                            "and under torchrun each process's own GPU (default: the config's "
                                            "'device' where the command reads one, else auto)"),
    "--seed": dict(type=int, metavar="N", help="random seed (default: the config's 'seed' where the command reads "
                                               "one, else 0)"),
    "--out": dict(metavar="DIR", help="output folder (the description says where it is by default)"),
}
# Other names of a shared option. torchrun's parser accepts abbreviations of its own options and
# refuses an ambiguous one anywhere on its command line, the script's arguments included: it takes
# --run for --run-path/--run_path, so a run folder is given as --run_dir under torchrun.
SHARED_ALIASES: dict[str, tuple[str, ...]] = {"--run": ("--run_dir",)}


def add_shared_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str,
                      required: bool = False) -> None:
    """Add the shared option ``name`` (a key of SHARED_OPTIONS, with its SHARED_ALIASES) under its one definition."""
    parser.add_argument(name, *SHARED_ALIASES.get(name, ()), required=required, **SHARED_OPTIONS[name])


def config_overrides(set_args: Iterable[str], **own: Any) -> dict[str, Any]:
    """The config overrides of ``--set KEY=VALUE`` arguments plus those of the command's own options
    (``own``: config key -> the option's value, None when not given). A later --set of a key replaces
    an earlier one, as argparse does for a repeated option (the shell wrappers rely on it to let the
    user's options override theirs); a key set by --set and by its own option is an error, since
    neither comes "later"."""
    overrides = dict(parse_override(text) for text in set_args)
    for key, value in own.items():
        if value is None:
            continue
        if key in overrides:
            raise ConfigError(f"'{key}' is given by --set {key}=... and by --{key}: keep one")
        overrides[key] = value
    return overrides


def command_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The parser of one command: ``description`` above the options, ``example`` below them."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog="example:\n" + example,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


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
    refuse_folder(path, "--model_flags")
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
    defined once, in the dataclass (``defaults`` replaces some for one tool). A field named like a
    shared option (seed, device) gets that option's definition, and the dataclass default when not given."""
    kinds = {"bool": str2bool, "int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f"--{f.name}" in SHARED_OPTIONS:
            add_shared_option(parser, f"--{f.name}")
            continue
        default = (defaults or {}).get(f.name, f.default)
        parser.add_argument(f"--{f.name}", type=kinds[str(f.type)], default=default, help=f"(default: {default})")


def dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` built from the options ``add_dataclass_args`` added, plus ``fixed`` fields; a shared
    option left out keeps the dataclass default."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in fixed}
    return cls(**{k: v for k, v in given.items() if v is not None or f"--{k}" not in SHARED_OPTIONS}, **fixed)
