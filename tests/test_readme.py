"""README.md's Python snippets run as written.

Each ```python block runs on its own (a reader copies one block), in a fresh interpreter, from
the repository root, as the README's commands do; paths it names under ../shared must exist.
What a snippet writes under the git-ignored output folders (runs/, pixel_classifiers/) is removed
afterwards, unless it was there before the test.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, require

OUTPUT_ROOTS = ("runs", "pixel_classifiers")  # where the README's examples write (git-ignored)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of a markdown text."""
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S)]


with open(REPO / "README.md") as f:
    BLOCKS = python_blocks(f.read())


def outputs() -> set[str]:
    """The entries of the output roots (and the roots themselves) that exist now."""
    found = set()
    for root in OUTPUT_ROOTS:
        if (REPO / root).exists():
            found.add(root)
            found.update(os.path.join(root, e) for e in os.listdir(REPO / root))
    return found


def test_blocks_are_found():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\nz = 3\n")]
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_snippet_runs_as_written(line, code):
    for path in re.findall(r"\.\./shared/[\w./-]+", code):
        require(REPO.parent / path[3:])
    before = outputs()
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr[-4000:]}"
    finally:
        for path in sorted(outputs() - before, key=len, reverse=True):
            shutil.rmtree(REPO / path, ignore_errors=True)
