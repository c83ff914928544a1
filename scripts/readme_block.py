"""Replace a generated block of README.md: the text between <!-- NAME:begin --> and <!-- NAME:end -->.

Tables in the README come from metrics files through scripts that call this, never by hand.
"""
from __future__ import annotations

import os
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def replace_block(name: str, text: str, path: str = README) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(path) as f:
        readme = f.read()
    if begin not in readme or end not in readme:
        sys.exit(f"error: {path} lacks the {begin} ... {end} markers")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + "\n" + text + end + tail)
