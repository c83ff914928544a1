"""Write bench/faults.py's figures (kills survived / kills, per tool) into docs/reliability.md.

    python bench/faults.py --tool all --kills 10 --out bench/results/faults.json
    python scripts/faults_table.py bench/results/faults.json [more.json ...]   # one table per file
"""
from __future__ import annotations

import json
import sys
from collections import Counter

from readme_block import publish

TOOL_NAMES = {"train_interpreter": "`train_interpreter.py`", "train_interpreter_refine": "`train_interpreter.py` with `refine`",
              "train_ddpm": "`ddpmseg train-ddpm`", "generate_dataset": "`generate_dataset.py`",
              "train_deeplab": "`train_deeplab.py`"}


# (what the tool printed last, lower case) -> stage; the first match wins.
STAGES = (("validation miou", "evaluation"), ("test miou", "exit"), ("miou ", "exit"), ("labelled samples", "exit"),
          ("already has", "resume check"), ("exist in", "resume check"), ("remain to be trained", "resume check"),
          ("took over", "resume check"), ("wrote ", "writing"), ("sample grid", "writing"), ("saved ", "writing"),
          ("refiner", "refiner"), ("fold", "refiner"), ("evaluation", "evaluation"),
          ("training features", "features"), ("activation maps", "features"), ("members ", "training"),
          ("feature store", "training"), ("ddpm updates", "training"), ("epoch", "training"),
          ("resumed", "training"), ("sampling", "sampling"))


def stage(line: str) -> str:
    """Where a kill landed, from what the killed attempt printed last ("" = nothing yet; "exit" = after
    its last line, while the process shuts down)."""
    line = line.lower()
    if not line:
        return "start-up"
    return next((name for word, name in STAGES if word in line), "other")


def table(result: dict) -> str:
    rows = ["| tool | kills survived / kills | trials survived / trials | reference run | kills landed in |",
            "|---|---:|---:|---:|---|"]
    for r in result["tools"]:
        where = Counter(stage(k["during"]) for t in r["details"] for k in t["kills"])
        rows.append(f"| {TOOL_NAMES[r['tool']]} | **{r['kills_survived']} / {r['kills']}** | "
                    f"{r['trials_survived']} / {r['trials']} | {r['reference_s']:.0f} s | "
                    + ", ".join(f"{n} {k}" for k, n in where.most_common()) + " |")
    return "\n".join(rows + ["", f"Kill moments uniform between the appearance of the reference run's output "
                             f"folder (nothing is written before) and its end; seed {result['seed']}, up to "
                             f"{result['kills_per_trial']} kill(s) per trial (each trial starts from an empty folder and ends with "
                             f"a run to the end; a run that finishes before its kill moment makes a trial with fewer "
                             f"kills); {result['machine']}.", ""])


if __name__ == "__main__":
    texts = []
    for path in sys.argv[1:] or ["bench/results/faults.json"]:
        with open(path) as f:
            texts.append(table(json.load(f)))
    text = "\n".join(texts)
    publish("faults", text)
