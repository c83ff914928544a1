"""Write a generated block of a documentation page: the text between <!-- NAME:begin --> and <!-- NAME:end -->.

Every measured table of the documentation comes from metrics files through a script that calls this, never
by hand. Each block lives on exactly one page of docs/, named in ``PAGES``; a page may hold several blocks,
each written by its own script, and writing one keeps the others (tests/test_readme.py checks that every
block is on its page and on no other).
"""
from __future__ import annotations

import os
import sys

from ddpmseg.common.atomic import write_text_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")  # where the pages are; the study scripts' --docs points elsewhere for tests

# Block name -> the page of DOCS that holds it: one page per block, so no table is shown twice.
PAGES = {
    "demo": "demo.md",
    "selection": "selection.md",
    "active_learning": "selection.md",
    "variants": "experiments.md",
    "best_recipe": "experiments.md",
    "min_region": "experiments.md",
    "accuracy": "experiments.md",
    "ddps": "refinement.md",
    "backbones": "backbones.md",
    "from_scratch": "train-ddpm.md",
    "faults": "reliability.md",
    "mutation": "reliability.md",
    "bench": "benchmarks.md",
    "scaling": "benchmarks.md",
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(name: str, text: str, path: str) -> None:
    """Put ``text`` between the block's markers, which ``path`` must already have (exit with an error if not)."""
    begin, end = markers(name)
    with open(path) as f:
        page = f.read()
    if begin not in page or end not in page:
        sys.exit(f"error: {path} lacks the {begin} ... {end} markers")
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text_atomic(path, head + begin + "\n" + text + end + tail)


def write_block(name: str, text: str, path: str) -> None:
    """Like ``replace_block``, but a file without the block (or no file yet) gets it appended: the other
    blocks of the file are kept, whichever script wrote them."""
    begin, end = markers(name)
    old = ""
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
    if begin in old and end in old:
        replace_block(name, text, path)
        return
    separator = "\n" if old and not old.endswith("\n\n") else ""
    write_text_atomic(path, old + separator + begin + "\n" + text + end + "\n")


def page(name: str, docs: str = DOCS) -> str:
    """The file of the folder ``docs`` that holds block ``name``."""
    return os.path.join(docs, PAGES[name])


def publish(name: str, text: str, docs: str = DOCS) -> None:
    """Print a generated block and write it into its page of the folder ``docs``."""
    print(text)
    write_block(name, text, page(name, docs))


def add_study_arguments(parser, out: str, dataset_help: str = "a folder of experiments/") -> None:
    """The options every results script shares: --dataset, --out, --seeds, --docs."""
    parser.add_argument("--dataset", default="celebamask64", help=dataset_help)
    parser.add_argument("--out", default=out, help="where the runs go (relative to the repository root)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--docs", default="docs",
                        help="the folder of the pages the tables are written into (relative to the repository root)")
