"""docs/configuration.md is generated from the config's DEFAULTS and their comments, and is current."""
from __future__ import annotations

import json

from conftest import REPO
from ddpmseg.common import config
from ddpmseg.common.config_doc import documented_keys, render, type_text

PAGE = REPO / "docs" / "configuration.md"


def table_rows(text: str) -> dict[str, list[str]]:
    """key -> its cells (type, default, meaning), read back from the page's table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_committed_page_is_current():
    assert PAGE.read_text() == render(), "docs/configuration.md is stale: run python scripts/config_doc.py"


def test_every_key_has_its_type_default_and_a_meaning():
    rows = table_rows(render())
    assert list(rows) == list(config.DEFAULTS)  # every key once, in config.py's order
    for key, (types, default) in config.DEFAULTS.items():
        kind, shown, meaning = rows[key]
        assert kind == type_text(types), key
        assert shown == ("required" if default is config.REQUIRED else f"`{json.dumps(default)}`"), key
        assert meaning, f"'{key}' has no comment above it in config.py"


def test_a_keys_meaning_is_the_comment_above_it():
    meanings = dict(documented_keys())
    assert meanings["ignore_label"] == "Label excluded from training and from mIoU; null when every pixel is scored."
    assert meanings["testing_masks_path"] == "Folder of the test masks, as training_masks_path."
    # A group header (# --- ... ---) belongs to no key.
    assert "additions" not in meanings["training_masks_path"] and "---" not in " ".join(meanings.values())
    rows = table_rows(render())
    assert rows["voting"][2].endswith("One of: `hard`, `soft`, `soft_prob`, `weighted`, `last_member`.")
    assert "&lt;exp_dir&gt;/&lt;steps&gt;_&lt;blocks&gt;/" in rows["exp_dir"][2]  # no HTML tag in the page
