"""Write scripts/mutation.py's kill rates (docs/bench/mutation.json) into docs/reliability.md.

    python scripts/mutation.py                                     # the runs (hours on 2 cores)
    python scripts/mutation.py --modules M --rerun-uncaught        # M's uncaught mutants again, after adding tests
    python scripts/mutation_table.py                               # this table

The mutants the tests do not catch are either caught by a new test or judged harmless on
docs/mutation_equivalent.md, one entry per mutant: its name, the line it writes (the ``+`` lines of its
diff) and why no user can get a wrong result from it. An entry counts only while a mutant of that name
is still uncaught and writes that line (mutmut numbers a function's mutants in order, so a changed
function renumbers them); an entry that matches no uncaught mutant stops this script, so the page cannot
go stale.
"""
from __future__ import annotations

import json
import os
import re
import sys

from readme_block import publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "docs", "bench", "mutation.json")
JUDGED = os.path.join(REPO, "docs", "mutation_equivalent.md")
# "- `<mutant>` `<line it writes>`: <why it is harmless>" (a line holding a backtick goes in ``double`` ones)
ENTRY = re.compile(r"^- `(?P<name>[^`]+)` (?P<ticks>`+) ?(?P<line>.+?) ?(?P=ticks): (?P<why>.+)$")


def written_line(diff: str) -> str:
    """What a mutant writes: the ``+`` lines of its diff (after the two file lines), stripped, joined by a space."""
    return " ".join(line[1:].strip() for line in diff.splitlines()[2:] if line.startswith("+"))


def judged(path: str = JUDGED) -> dict[str, tuple[str, str]]:
    """Mutant name -> (the line it writes, why it is harmless), from the entries of ``path``."""
    with open(path) as f:
        found = [ENTRY.match(line) for line in f]
    return {m["name"]: (m["line"], m["why"]) for m in found if m}


def harmless(records: list[dict], entries: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Module -> how many of its uncaught mutants an entry judges; exits with an error line when an entry
    matches no uncaught mutant (caught now, gone, or renumbered to another change)."""
    uncaught = {m["name"]: (r["module"], written_line(m["diff"])) for r in records for m in r["not_caught"]}
    stale = [name for name, (line, _) in entries.items() if uncaught.get(name, (None, None))[1] != line]
    if stale:
        sys.exit(f"error: {os.path.relpath(JUDGED, REPO)} judges mutants that are not uncaught as written: "
                 f"{' '.join(stale)} (rerun scripts/mutation.py and judge its uncaught mutants again)")
    counts = {r["module"]: 0 for r in records}
    for name in entries:
        counts[uncaught[name][0]] += 1
    return counts


def table(records: list[dict], entries: dict[str, tuple[str, str]]) -> str:
    ok = harmless(records, entries)
    rows = ["| module | tests | mutants | checked | caught | uncaught, harmless | uncaught, not judged | kill rate |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    budgets, reruns = set(), False
    for r in records:
        n_ok = ok[r["module"]]
        rate = r["caught"] / (r["checked"] - n_ok) if r["checked"] > n_ok else 1.0
        budget = [run["budget_min"] for run in r["runs"] if "budget_min" in run]
        budgets.update(budget)
        reruns |= any("--rerun-uncaught" in run["command"] for run in r["runs"])
        mark = ("†" if budget else "") + ("‡" if len(r["runs"]) > 1 else "")
        rows.append(f"| `{r['module'].removeprefix('src/ddpmseg/')}`{mark} | `{' '.join(r['tests'])}` | {r['mutants']} | "
                    f"{r['checked']} | {r['caught']} | {n_ok} | {len(r['not_caught']) - n_ok} | **{100 * rate:.1f} %** |")
    dates = sorted({run["date"] for r in records for run in r["runs"]})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    notes = [f"Each row: `python scripts/mutation.py --modules src/ddpmseg/<module>`, i.e. `mutmut run --max-children 1` "
             f"(mutmut {', '.join(sorted({r['mutmut_version'] for r in records}))}) in a scratch copy of the checkout "
             f"whose setup.cfg mutates that module only and runs only the tests shown. Kill rate = caught / (checked - "
             f"uncaught, harmless)."]
    if budgets:
        notes.append(f"† with `--budget-min {'/'.join(f'{b:g}' for b in sorted(budgets))}`: mutmut tests the mutants "
                     f"whose tests are fastest first and stops after that many minutes; where \"checked\" is below \"mutants\" "
                     f"the budget ended the run and the rest are not checked.")
    if reruns:
        notes.append("‡ then `--rerun-uncaught` after tests were added: its uncaught mutants tested again (the "
                     "verdicts of the caught ones stand).")
    cpu = sum(run["cpu_s"] for r in records for run in r["runs"]) / 60
    notes.append(f"Run {when}, {cpu:.0f} CPU minutes in all.")
    return "\n".join(rows + [""] + [" ".join(notes), ""])


if __name__ == "__main__":
    with open(RESULTS) as f:
        records = json.load(f)
    publish("mutation", table(records, judged()))
