"""report.html of a segment.py output folder: every segmented image as overlay | uncertainty map,
most uncertain first (where a labeller's time helps most), read from segments.csv alone."""
from __future__ import annotations

import csv
import os

from .atomic import write_text_atomic
from .html_page import REPORT_FILE, cell, esc, linked_png, page, section, table

SEGMENTS_CSV = "segments.csv"
# Classes named per image: the largest by pixel fraction.
TOP_CLASSES = 3
# Overlays are shown at this width (px) whatever the image size, so a row fits the page.
SHOWN_WIDTH = 256


def write_gallery(out_dir: str) -> str:
    """Write ``out_dir``/report.html from its segments.csv and PNGs; returns its path."""
    with open(os.path.join(out_dir, SEGMENTS_CSV), newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: (-float(r["uncertainty"]), r["stem"]))
    shown_rows = []
    for rank, r in enumerate(rows, 1):
        fractions = sorted(((float(v), k.removeprefix("fraction_")) for k, v in r.items()
                            if k.startswith("fraction_")), reverse=True)
        classes = ", ".join(f"{name} {100 * v:.1f} %" for v, name in fractions[:TOP_CLASSES] if v > 0)
        pictures = []
        for suffix in ("_overlay.png", "_uncertainty.png"):
            path = os.path.join(out_dir, r["stem"] + suffix)
            pictures.append(f"<td>{linked_png(path, out_dir, r['stem'] + suffix, width=SHOWN_WIDTH)}</td>"
                            if os.path.isfile(path) else cell("missing"))
        shown_rows.append([cell(rank), cell(r["stem"]), cell(f"{r['width']}\u00d7{r['height']}"),
                           f"<td class=\"num\">{esc(r['uncertainty'])}</td>", cell(classes), *pictures])
    body = table(["rank", "image", "size", "uncertainty", "largest classes", "overlay", "uncertainty map"],
                 shown_rows)
    intro = ("<p>Most uncertain first. Uncertainty: the ensemble's disagreement (mutual information, nats), "
             "the mean of the image's most uncertain pixels; in the map black is certain and pale yellow is "
             "ln 2 or more (the members split). Class ids per pixel: <code>&lt;stem&gt;.png</code>; "
             "every number: <a href=\"segments.csv\">segments.csv</a>.</p>")
    path = os.path.join(out_dir, REPORT_FILE)
    write_text_atomic(path, page("segmentation gallery", f"{len(rows)} images in {os.path.abspath(out_dir)}",
                                 [section("Images", intro, body, anchor="images")]))
    return path
