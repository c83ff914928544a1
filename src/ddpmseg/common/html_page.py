"""The pieces of the HTML pages a run folder gets (report.html, a segmentation gallery): one file a
browser opens from the file system, its style inline, pictures either embedded (plots) or the
folder's own PNGs referenced by relative path."""
from __future__ import annotations

import base64
import html
import json
import os
from typing import Iterable, Sequence

# The page's name in every folder that gets one: one name to open, whatever the folder holds.
REPORT_FILE = "report.html"
# One style for every page: readable tables, images shown at 2x (64 px runs) without smoothing.
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1300px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { font-size: 20px; } .note { color: #666; } .side { display: flex; gap: 24px; align-items: flex-start; }
img { max-width: 100%; height: auto; } img.pixels { image-rendering: pixelated; } code { background: #f5f5f5; padding: 0 3px; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """A whole HTML document: ``title`` as heading, ``subtitle`` under it, then the sections."""
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1><p class=\"note\">{esc(subtitle)}</p>\n"
            f"{body}\n</body></html>\n")


def section(heading: str, *parts: str, anchor: str) -> str:
    return f"<section id=\"{esc(anchor)}\"><h2>{esc(heading)}</h2>\n" + "\n".join(parts) + "\n</section>"


# How a number of each unit is shown: (factor from the stored value, decimals). IoU is stored as a
# fraction and shown in %, as the paper's tables do.
DISPLAY = {"%": (100, 2), "s": (1, 1), "MB": (1, 0), "nats": (1, 4)}


def shown(value: float | None, unit: str) -> str:
    """``value`` as the page shows it in ``unit`` (DISPLAY); a missing value is a dash."""
    if value is None:
        return "\u2014"
    factor, decimals = DISPLAY[unit]
    return f"{factor * value:.{decimals}f}"


def number(value: float | None, metric: Sequence[str], unit: str) -> str:
    """A table cell showing ``value``, found at key path ``metric`` of metrics.json, in ``unit``: the
    attributes (the path as a JSON list) let a reader, and the tests, trace every shown number to its source."""
    return (f"<td class=\"num\" data-metric=\"{esc(json.dumps(list(metric)))}\" data-unit=\"{esc(unit)}\">"
            f"{esc(shown(value, unit))}</td>")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; each row's cells are ready HTML (``cell`` or ``number``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def cell(text: object) -> str:
    return f"<td>{esc(text)}</td>"


def embedded_png(png: bytes, alt: str) -> str:
    """A plot drawn for the page, inside it (base64), so the page needs no file of its own beside it."""
    return f"<img alt=\"{esc(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\">"


def linked_png(path: str, folder: str, alt: str, scale: int = 1, width: int | None = None) -> str:
    """One of the folder's PNGs, referenced relative to ``folder`` (where the page lies), shown ``width``
    pixels wide, or ``scale`` times its own width (read from the PNG header): small images enlarged
    without smoothing."""
    rel = os.path.relpath(path, folder).replace(os.sep, "/")
    if width is None and scale != 1:
        with open(path, "rb") as f:
            header = f.read(24)  # PNG signature (8), IHDR length and type (8), width and height (4 + 4)
        width = int.from_bytes(header[16:20], "big") * scale
    size = f" width=\"{width}\"" if width is not None else ""
    return f"<img class=\"pixels\" loading=\"lazy\" alt=\"{esc(alt)}\" src=\"{esc(rel)}\"{size}>"
