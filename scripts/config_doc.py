"""Write docs/configuration.md, the table of every config key, from src/ddpmseg/common/config.py.

    python scripts/config_doc.py

Run it after changing a key, its default or its comment; tests/test_config_doc.py fails until then.
"""
from __future__ import annotations

import os

from ddpmseg.common.atomic import write_text_atomic
from ddpmseg.common.config_doc import render

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configuration.md")

if __name__ == "__main__":
    write_text_atomic(PAGE, render())
    print(f"wrote {PAGE}")
