"""docs/configuration.md from the config's one definition: one table of every key of
``config.DEFAULTS`` with its type, its default and the comment above it in config.py.
scripts/config_doc.py writes the page; tests/test_config_doc.py fails when it is stale."""
from __future__ import annotations

import ast
import inspect
import json
import re
from typing import NamedTuple

from . import config

TITLE = "# Configuration keys"
INTRO = ("An experiment config is a JSON file (experiments/<dataset>/*.json); a key it leaves out takes the "
         "default below, and `--set KEY=VALUE` sets one from the command line. A file may start from another "
         "with `\"base\": \"ddpm.json\"` and list only the keys it changes. Generated from "
         "`src/ddpmseg/common/config.py` by `python scripts/config_doc.py`: edit the comments there, not this page.")


class Key(NamedTuple):
    name: str
    meaning: str  # the comment lines right above it in config.py, joined


def comment_text(line: str) -> str:
    return line.strip().removeprefix("#").strip()


def defaults_node(tree: ast.Module) -> ast.Dict:
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0] if isinstance(node, ast.Assign) \
            else None
        if isinstance(target, ast.Name) and target.id == "DEFAULTS":
            return node.value
    raise LookupError("config.py has no DEFAULTS")


def documented_keys() -> list[Key]:
    """DEFAULTS' keys in source order, each with the comment right above it; the ``# --- ... ---``
    lines that group the keys in config.py are not part of any key's meaning."""
    source = inspect.getsource(config)
    lines = source.splitlines()
    table = defaults_node(ast.parse(source))
    keys, start = [], table.lineno  # linenos are 1-based: lines[start] is the line after the dict's opening
    for key in table.keys:
        above, in_header = [], False
        for line in lines[start:key.lineno - 1]:
            text = line.strip()
            if text.startswith("# ---") or in_header:
                in_header = not text.endswith("---")
                above = []
            elif text.startswith("#"):
                above.append(comment_text(line))
            else:
                above = []
        keys.append(Key(key.value, " ".join(above)))
        start = key.end_lineno
    return keys


def type_text(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else {"str": "string", "bool": "boolean", "int": "integer",
                                                        "float": "number", "list": "list", "dict": "object"}[t.__name__]
                       for t in types)


def default_text(default: object) -> str:
    return "required" if default is config.REQUIRED else f"`{json.dumps(default)}`"


def cell(text: str) -> str:
    """``text`` safe inside a markdown table cell: one line, no column break, no HTML tag."""
    return re.sub(r"\s+", " ", text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render() -> str:
    """The whole of docs/configuration.md."""
    ignored = ", ".join(f"`{k}`" for k in sorted(config.IGNORED_LEGACY_KEYS))
    out = [TITLE, "", INTRO, "", f"Accepted and ignored, so that the published files load: {ignored}.", "",
           "| key | type | default | meaning |", "|---|---|---|---|"]
    for key in documented_keys():
        types, default = config.DEFAULTS[key.name]
        meaning = key.meaning
        if key.name in config.CHOICES:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in config.CHOICES[key.name]) + "."
        out.append(f"| `{key.name}` | {type_text(types)} | {cell(default_text(default))} | {cell(meaning.strip())} |")
    return "\n".join(out) + "\n"
