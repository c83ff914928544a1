"""Write bench/faults.py's figures (kills survived / kills, per tool) into README.md's reliability section.

    python bench/faults.py --tool all --kills 10 --out bench/results/faults.json
    python scripts/faults_table.py bench/results/faults.json
"""
from __future__ import annotations

import json
import sys
from collections import Counter

from readme_block import replace_block

TOOL_NAMES = {"train_interpreter": "`train_interpreter.py`", "train_interpreter_refine": "`train_interpreter.py` with `refine`",
              "train_ddpm": "`train_ddpm.py`", "generate_dataset": "`generate_dataset.py`",
              "train_deeplab": "`train_deeplab.py`"}


def stage(line: str) -> str:
    """Where a kill landed, from the tool's last output line."""
    line = line.lower()
    for word, name in (("training features", "features"), ("evaluation", "evaluation"), ("members", "training"),
                       ("refiner", "refiner"), ("fold", "refiner"), ("ddpm updates", "training"),
                       ("saved", "writing"), ("sampling", "sampling"), ("epoch", "training"),
                       ("validation", "evaluation"), ("grid", "writing"), ("wrote", "writing")):
        if word in line:
            return name
    return "start-up" if not line else "other"


def table(result: dict) -> str:
    rows = ["| tool | kills survived / kills | trials (runs killed, rerun to the end) | reference run | kills landed in |",
            "|---|---:|---:|---:|---|"]
    for r in result["tools"]:
        where = Counter(stage(k["during"]) for t in r["details"] for k in t["kills"])
        rows.append(f"| {TOOL_NAMES[r['tool']]} | **{r['kills_survived']} / {r['kills']}** | "
                    f"{r['trials_survived']} / {r['trials']} survived | {r['reference_s']:.0f} s | "
                    + ", ".join(f"{n} {k}" for k, n in where.most_common()) + " |")
    return "\n".join(rows + ["", f"Seed {result['seed']}, up to {result['kills_per_trial']} kills per trial; "
                             f"{result['machine']}.", ""])


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "bench/results/faults.json") as f:
        text = table(json.load(f))
    print(text)
    replace_block("faults", text)
