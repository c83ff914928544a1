"""The `ddpmseg` command: every sub-command's --help with its example, one definition per shared
option, argparse errors as one `error:` line with exit status 2, --set that never silently wins or
lands on another key, the console script in pyproject.toml and the original's root scripts."""
from __future__ import annotations

import argparse
import importlib
import re
import runpy
import subprocess
import sys

import pytest

from conftest import REPO, checkout_env, ddpmseg_command
from ddpmseg.commands import COMMANDS, main
from ddpmseg.common.cli import SHARED_OPTIONS, config_overrides

# Which command has which shared option: a command that computes takes --device, one that reads a
# config takes --set, and so on (a dropped option fails here, not in a user's shell).
HAS = {
    "--exp": {"select", "train", "generate", "deeplab"},
    "--run": {"evaluate", "segment", "suggest", "generate"},
    "--set": {"select", "train", "evaluate", "segment", "deeplab"},
    "--device": set(COMMANDS) - {"new", "download", "report"},
    "--seed": {"demo", "new", "train", "suggest", "train-ddpm", "sample", "generate", "deeplab"},
    "--out": {"demo", "select", "evaluate", "segment", "suggest", "sample", "generate"},
}
# The root scripts the original has, and the command each runs.
ROOT_SCRIPTS = {"train_interpreter.py": "train", "generate_dataset.py": "generate", "train_deeplab.py": "deeplab"}


def module(name: str):
    return importlib.import_module(f"ddpmseg.commands.{COMMANDS[name].module}")


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own exit
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_shows_its_summary_and_example(name, capsys):
    rc, out, _ = run_main([name, "--help"], capsys)
    assert rc == 0
    assert out.startswith(f"usage: ddpmseg {name} ")
    assert COMMANDS[name].summary in out
    example = module(name).EXAMPLE
    assert example.strip() and f"example:\n{example}" in out
    assert all(line.lstrip().startswith(("ddpmseg", "torchrun", "--")) for line in example.splitlines())


def test_the_console_script_and_python_m_list_every_command():
    text = (REPO / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.S | re.M).group(1)
    target = re.search(r'^ddpmseg = "([\w.]+):(\w+)"$', section, re.M)
    assert target and getattr(importlib.import_module(target.group(1)), target.group(2)) is main
    r = subprocess.run(ddpmseg_command("--help"), cwd=REPO, env=checkout_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    for name, cmd in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(cmd.summary)}$", r.stdout, re.M), name


@pytest.mark.parametrize("option", SHARED_OPTIONS)
def test_a_shared_option_is_defined_once(option):
    """Same help, type, metavar, default and action wherever it appears, and where it is expected."""
    reference = argparse.ArgumentParser()
    reference.add_argument(option, **SHARED_OPTIONS[option])
    want = options(reference)[option]
    having = set()
    for name in COMMANDS:
        action = options(module(name).build_parser()).get(option)
        if action is None:
            continue
        having.add(name)
        for field in ("help", "type", "metavar", "default", "dest"):
            assert getattr(action, field) == getattr(want, field), (name, option, field)
        assert type(action) is type(want), (name, option)
    assert having == HAS[option]


@pytest.mark.parametrize("name", sorted(HAS["--seed"]))
def test_a_bad_option_value_is_one_error_line_and_exit_2(name, capsys):
    rc, _, err = run_main([name, "--seed", "one"], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and errors == [f"ddpmseg {name}: error: argument --seed: invalid int value: 'one'"]


def test_an_unknown_command_is_one_error_line_and_exit_2(capsys):
    rc, _, err = run_main(["segmnt", "--run", "x"], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "invalid choice: 'segmnt'" in errors[0]


@pytest.mark.parametrize("argv, message", [
    (["train", "--exp", "experiments/celebamask64/ddpm.json", "--set", "seed=1", "--seed", "2"],
     "error: 'seed' is given by --set seed=... and by --seed: keep one"),
    (["deeplab", "--exp", "experiments/celebamask64/ddpm.json", "--set", "learning_rate=0.01"],
     "error: --set learning_rate= sets the pixel MLPs' learning_rate, which DeepLab does not use; DeepLab's is "
     "--deeplab_lr"),
    (["deeplab", "--exp", "experiments/celebamask64/ddpm.json", "--set", "batch_size=4"],
     "error: --set batch_size= sets the pixel MLPs' batch_size, which DeepLab does not use; DeepLab's is "
     "--deeplab_batch_size"),
])
def test_set_never_silently_wins_or_lands_elsewhere(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and err == message + "\n"


def test_a_later_set_replaces_an_earlier_one():
    assert config_overrides(["voting=soft", "tta=[]", "voting=hard"], seed=None, device="cpu") == {
        "voting": "hard", "tta": [], "device": "cpu"}


def test_deeplab_options_set_deeplabs_rate_and_batch():
    args = module("deeplab").build_parser().parse_args(["--exp", "x", "--deeplab_lr", "0.02",
                                                        "--deeplab_batch_size", "3"])
    assert (args.learning_rate, args.batch_size) == (0.02, 3)  # DeepLabSettings' fields
    assert "--learning_rate" not in options(module("deeplab").build_parser())


def test_download_checks_its_arguments(capsys):
    rc, _, err = run_main(["download", "datasets", "ffhq"], capsys)
    assert rc == 2 and "error: datasets takes no name" in err
    rc, _, err = run_main(["download", "ddpm"], capsys)
    assert rc == 2 and "error: ddpm needs the checkpoint's name" in err
    assert set(options(module("download").build_parser())) == {"-h", "--help"}
    # One per download script: checkpoints/<kind>/download_checkpoint.sh, and datasets/download_datasets.sh.
    assert module("download").build_parser()._actions[1].choices == [
        "datasets", "ddpm", "diffusers", "dinov2", "mae", "stable_diffusion", "swav", "swav_w2"]


@pytest.mark.parametrize("script", ROOT_SCRIPTS)
def test_the_original_root_scripts_run_the_same_command(script, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {script} ")
    rc, command_help, _ = run_main([ROOT_SCRIPTS[script], "--help"], capsys)
    assert out.split("\n\n", 1)[1] == command_help.split("\n\n", 1)[1]  # everything after the usage
