"""README.md's commands are all covered, its Python snippets (and the docs pages') run as written, and its
numbers are the generated tables' and the paper's.

Every shell command of the README is listed in COVERED with the tests that run what it runs (a command
added to the README without an entry fails here, and so does an entry whose test no longer exists); the
``ddpmseg`` commands are also run here in their ``--help`` form, which must list every option the README
passes. Each ```python block runs on its own (a reader copies one block), in a fresh interpreter, from the
repository root, as the README's commands do; paths it names under ../shared must exist. What a snippet
writes under the git-ignored output folders (runs/, pixel_classifiers/) is removed afterwards, unless it
was there before the test.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SHARED, require

OUTPUT_ROOTS = ("runs", "pixel_classifiers")  # where the README's examples write (git-ignored)
README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))

# README command (as shlex reads it, comments dropped) -> what covers it: tests ("file::function"), or
# ".ci/run", which runs the command verbatim in a fresh venv.
DEMO_TEST = "tests/test_demo.py::test_smoke_demo_runs_every_stage_and_reports_both_mious"
OWN_DATA_TEST = "tests/test_new_experiment.py::test_new_user_road_jpeg_rgb_masks_to_segmented_images"
COVERED = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m ddpmseg demo":
        [DEMO_TEST],  # every stage of the demo at toy size; .ci/run makes the same install, with the test extra
    "python3 -m venv .venv && .venv/bin/pip install -q -e .[test] && .venv/bin/python -m pytest -q": [".ci/run"],
    "ddpmseg new --name mine --images data/images --masks data/masks --classes classes.txt "
    "--model_path ../shared/checkpoints/faces64_ema.pt": [OWN_DATA_TEST],
    "ddpmseg train --exp experiments/mine/ddpm.json": [OWN_DATA_TEST],
    "ddpmseg segment --run pixel_classifiers/mine/50_150_250_4_5_6_7_8 --images photos/ --out segmented/":
        [OWN_DATA_TEST, "tests/test_segmenter.py::test_segment_folder_outputs_resume_and_unreadable_file"],
    "bash datasets/download_datasets.sh": [
        "tests/test_download_scripts.py::test_dataset_download_extracts_and_removes_the_tarball",
        "tests/test_download_scripts.py::test_interrupted_dataset_download_resumes"],
    "bash checkpoints/ddpm/download_checkpoint.sh lsun_bedroom": [
        "tests/test_download_scripts.py::test_checkpoint_download_lands_atomically",
        "tests/test_download_scripts.py::test_interrupted_checkpoint_download_resumes_with_range"],
    # The 256 px runs need the datasets and a GPU: the tests check the flags the script passes, and run
    # the same tool end to end on celebamask64.
    "bash scripts/ddpm/train_interpreter.sh bedroom_28": [
        "tests/test_scripts.py::test_model_flags_match_the_lsun_ffhq_checkpoints",
        "tests/test_interpreter.py::test_end_to_end_writes_every_output"],
    "bash scripts/ddpm/train_etf.sh bedroom_28 results/bedroom_28/etf 0": [
        "tests/test_scripts.py::test_train_etf_needs_a_result_dir_and_a_gpu_number",
        "tests/test_scripts.py::test_train_etf_runs_celebamask64_on_cpu"],
}


def blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```lang block of a markdown text."""
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)]


def shell_commands(text: str) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments dropped, as shlex reads them."""
    found = []
    for _, code in blocks(text, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            if words := shlex.split(line, comments=True):
                found.append(" ".join(words))
    return found


def ddpmseg_calls(command: str) -> list[list[str]]:
    """The `ddpmseg <subcommand> ...` (or `python -m ddpmseg ...`) parts of a command line, from the subcommand on."""
    calls = []
    for part in command.split(" && "):
        words = part.split()
        if words[:1] == ["ddpmseg"]:
            calls.append(words[1:])
        elif words[1:3] == ["-m", "ddpmseg"]:
            calls.append(words[3:])
    return calls


COMMANDS = shell_commands(README)
CALLS = sorted({(c[0], o) for cmd in COMMANDS for c in ddpmseg_calls(cmd) for o in c[1:] if o.startswith("--")}
               | {(c[0], "") for cmd in COMMANDS for c in ddpmseg_calls(cmd)})
SNIPPETS = [(f"{path.relative_to(REPO)}:{line}", code) for path in [REPO / "README.md", *DOCS]
            for line, code in blocks(path.read_text(), "python")]


def test_commands_are_found():
    text = "intro\n```bash\nls -l \\\n    /tmp   # where\n\n# a comment\nddpmseg x --a 1 && python -m ddpmseg y\n```\n"
    assert shell_commands(text) == ["ls -l /tmp", "ddpmseg x --a 1 && python -m ddpmseg y"]
    assert ddpmseg_calls(shell_commands(text)[1]) == [["x", "--a", "1"], ["y"]]
    assert blocks("a\n```python\nx = 1\n```\n", "python") == [(3, "x = 1\n")]
    assert len(COMMANDS) >= 9 and len(SNIPPETS) >= 3


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_is_covered(command):
    assert command in COVERED, f"README.md runs `{command}`: add it to COVERED with the tests that cover it"


@pytest.mark.parametrize("command", sorted(COVERED))
def test_every_covering_test_exists(command):
    assert command in COMMANDS, f"COVERED lists `{command}`, which README.md no longer has"
    for where in COVERED[command]:
        if where == ".ci/run":
            lines = (REPO / ".ci" / "run").read_text().splitlines()
            ci = [" ".join(shlex.split(line, comments=True)) for line in lines]
            assert command in ci, f".ci/run does not run `{command}`"
            continue
        path, name = where.split("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M), f"{where} does not exist"


@pytest.mark.parametrize("subcommand,option", CALLS)
def test_ddpmseg_help_lists_what_the_readme_passes(subcommand, option):
    proc = subprocess.run([sys.executable, "-m", "ddpmseg", subcommand, "--help"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert option in proc.stdout, f"`ddpmseg {subcommand} --help` does not list {option}"


def results_rows() -> dict[str, list[str]]:
    """The README's results table: dataset -> its cells."""
    section = README.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    assert rows[0] == ["dataset", "paper", "here", "status"]
    return {r[0]: r for r in rows[1:]}


def generated_blocks(text: str) -> list[str]:
    return re.findall(r"<!-- (\w+):begin -->\n(.*?)<!-- \1:end -->", text, flags=re.S)


def test_our_numbers_are_those_of_the_generated_table_the_row_links():
    measured = {k: r for k, r in results_rows().items() if r[2] != "–"}
    assert len(measured) >= 1
    for dataset, (_, _, here, status) in measured.items():
        (page,) = re.findall(r"\]\((docs/[\w-]+\.md)#[\w-]+\)", status)
        tables = "".join(body for _, body in generated_blocks((REPO / page).read_text()))
        assert here in tables, f"{dataset}: {here} is in no generated table of {page}"


def test_paper_numbers_are_the_papers():
    """The paper column equals the DDPM row of the original repository's results table (the fact sheet)."""
    facts = require(SHARED / "docs" / "ddpm_segmentation_facts.md").read_text()
    header, *table = [line for line in facts.split("## 8. Reported results", 1)[1].splitlines()
                      if line.startswith("| ")]
    datasets = [c.strip() for c in header.strip("|").split("|")][1:]
    (ddpm,) = [line for line in table if "**DDPM**" in line]
    paper = dict(zip(datasets, [c.strip().replace("±", " ± ") for c in ddpm.strip("|").split("|")][1:]))
    rows = results_rows()
    assert {d: rows[d][1] for d in datasets} == paper
    for dataset in datasets:
        assert rows[dataset][2:] == ["–", "not run here (needs the datasets and a GPU)"]


def outputs() -> set[str]:
    """The entries of the output roots (and the roots themselves) that exist now."""
    found = set()
    for root in OUTPUT_ROOTS:
        if (REPO / root).exists():
            found.add(root)
            found.update(os.path.join(root, e) for e in os.listdir(REPO / root))
    return found


@pytest.mark.parametrize("where,code", SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_snippet_runs_as_written(where, code):
    for path in re.findall(r"\.\./shared/[\w./-]+", code):
        require(REPO.parent / path[3:])
    before = outputs()
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"{where} failed:\n{proc.stderr[-4000:]}"
    finally:
        for path in sorted(outputs() - before, key=len, reverse=True):
            shutil.rmtree(REPO / path, ignore_errors=True)
