"""Write the demo's numbers into docs/demo.md from a finished demo's metrics.json.

    python scripts/demo_table.py runs/demo/metrics.json
"""
from __future__ import annotations

import json
import sys

from readme_block import publish


def table(m: dict) -> str:
    t = m["timings_s"]
    stages = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in t.items() if k != "total")
    return "\n".join([
        "| features | test mIoU % (40 images, 6 classes) |", "|---|---:|",
        f"| DDPM U-Net, {m['preset']['ddpm_steps']} updates from scratch | {100 * m['ddpm']['miou']:.2f} |",
        f"| RGB + (x, y) baseline, same ensemble and run | {100 * m['rgb_xy']['miou']:.2f} |", "",
        f"Total {t['total'] / 60:.1f} min ({stages}); seed {m['seed']}, device {m['device']}"
        + (f", {m['cpu_count']} CPU cores" if "cpu_count" in m else "") + ".", ""])


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "runs/demo/metrics.json") as f:
        text = table(json.load(f))
    publish("demo", text)
