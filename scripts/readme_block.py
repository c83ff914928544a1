"""Replace a generated block of README.md: the text between <!-- NAME:begin --> and <!-- NAME:end -->.

Tables in the README come from metrics files through scripts that call this, never by hand.
docs/RESULTS.md is shared by several scripts the same way: each owns one block (``write_block``).
"""
from __future__ import annotations

import os
import sys

from ddpmseg.common.atomic import write_text_atomic

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(name: str, text: str, path: str = README) -> None:
    """Put ``text`` between the block's markers, which ``path`` must already have (exit with an error if not)."""
    begin, end = markers(name)
    with open(path) as f:
        readme = f.read()
    if begin not in readme or end not in readme:
        sys.exit(f"error: {path} lacks the {begin} ... {end} markers")
    head, rest = readme.split(begin, 1)
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


def publish(name: str, text: str, results: str, readme: bool = True) -> None:
    """Print a generated block and write it into ``results`` (docs/RESULTS.md) and, if ``readme``, README.md."""
    print(text)
    write_block(name, text, results)
    if readme:
        replace_block(name, text)


def add_study_arguments(parser, out: str, block: str, dataset_help: str = "a folder of experiments/") -> None:
    """The options every results script shares: --dataset, --out, --seeds, --table, --no_readme."""
    parser.add_argument("--dataset", default="celebamask64", help=dataset_help)
    parser.add_argument("--out", default=out, help="where the runs go (relative to the repository root)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--table", default="docs/RESULTS.md", help=f"the markdown file whose {block} block to write")
    parser.add_argument("--no_readme", action="store_true", help="do not write README.md's block")
