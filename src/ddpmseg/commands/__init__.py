"""The ``ddpmseg`` command: one sub-command per tool, each in its own module of this package.

``ddpmseg --help`` lists the sub-commands from COMMANDS without importing them (some load timm and
the interpreter, seconds of start-up); ``ddpmseg NAME ...`` imports only NAME's module and runs its
``main``. Under torchrun: ``torchrun --nproc_per_node=N -m ddpmseg NAME ...``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from ..common import cli


class Command(NamedTuple):
    module: str  # the module of this package that holds the command's main
    summary: str  # its line in ``ddpmseg --help``, and the first line of its own --help


COMMANDS: dict[str, Command] = {
    "demo": Command("demo", "offline demo: procedural data, a DDPM trained from scratch, pixel classifiers"),
    "new": Command("new", "write an experiment config from your folders of images and masks"),
    "select": Command("select", "choose a config's diffusion steps and decoder blocks by cross-validation"),
    "train": Command("train", "train and evaluate the pixel-classifier ensemble on DDPM features"),
    "evaluate": Command("evaluate", "evaluate a trained ensemble again with other inference settings"),
    "segment": Command("segment", "segment new, unlabelled images of any size with a trained run"),
    "suggest": Command("suggest", "rank unlabelled images by which to label next"),
    "train-ddpm": Command("train_ddpm", "train a guided-diffusion DDPM from scratch on unlabelled images"),
    "sample": Command("sample", "draw samples from a DDPM checkpoint"),
    "generate": Command("generate", "DatasetDDPM: sample images and label them with a trained ensemble"),
    "deeplab": Command("deeplab", "DatasetDDPM: train DeepLabV3 on the generated set, test it on real images"),
    "download": Command("download", "download the paper's checkpoints or datasets"),
    "report": Command("report", "rebuild a run folder's report.html (or a segment output's gallery)"),
}


def top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="ddpmseg", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Label-efficient semantic segmentation with frozen diffusion-model features.\n\n"
                    f"commands:\n{listing}",
        epilog="example:\n  ddpmseg demo\n  ddpmseg train --help")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands above")
    p.add_argument("args", nargs="*", metavar="ARGS", help="the command's options: ddpmseg COMMAND --help")
    return p


def command_parser(name: str, doc: str, example: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of command ``name``: its summary and ``doc`` (its module's docstring) above the
    options, ``example`` below; ``prog`` names it in messages (default ``ddpmseg NAME``)."""
    return cli.command_parser(prog or f"ddpmseg {name}", f"{COMMANDS[name].summary}.\n\n{doc.strip()}", example)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the command's name is parsed here: its options belong to its own parser.
    if not argv or argv[0].startswith("-"):
        top_parser().parse_args(argv)  # --help, or an error that says a command is needed
    top_parser().parse_args(argv[:1])
    module = importlib.import_module(f"{__name__}.{COMMANDS[argv[0]].module}")
    return module.main(argv[1:])
