"""scripts/mutation.py end to end on one small function (its --quick mode, about 30 s), and the table
scripts/mutation_table.py writes from its records."""
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO, checkout_env

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbour readme_block, as when run
import mutation  # noqa: E402
import mutation_table  # noqa: E402

# A mutant of iou_table_markdown that changes every IoU the table shows: the test of the table must catch it.
PLANTED = "+        iou = inter[c] / (_EPS - union[c])"


@pytest.mark.skipif(importlib.util.find_spec("mutmut") is None,
                    reason="mutmut is not installed (pip install -e .[mutation])")
def test_quick_run_catches_a_known_mutant_and_records_every_verdict(tmp_path):
    out = tmp_path / "mutation.json"
    r = subprocess.run([sys.executable, "scripts/mutation.py", "--quick", "--out", str(out)], cwd=REPO,
                       env=checkout_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (record,) = json.loads(out.read_text())
    assert record["module"] == mutation.QUICK["module"] and record["tests"] == mutation.QUICK["tests"]
    (run,) = record["runs"]
    assert run["command"] == "python scripts/mutation.py --quick"
    assert run["mutmut_command"] == f"mutmut run --max-children 1 {mutation.QUICK['mutants']}"
    assert record["mutmut_version"] == "3.8.1"
    # Only the quick function's mutants ran, and each has one verdict.
    caught = record["caught_diffs"]
    names = list(caught) + [m["name"] for m in record["not_caught"]]
    assert len(names) == len(set(names)) == record["mutants"] == record["checked"] == run["mutants_checked"]
    assert sum(record["counts"].values()) == record["mutants"]
    assert all(n.startswith("ddpmseg.common.metrics.x_iou_table_markdown__mutmut_") for n in names)
    assert record["caught"] == len(caught) == sum(record["counts"].get(s, 0) for s in mutation.CAUGHT)
    assert record["kill_rate"] == round(record["caught"] / record["mutants"], 4)
    # The tests ran on the mutated copy: the planted change is among the caught mutants.
    assert [n for n, diff in caught.items() if PLANTED in diff.splitlines()], "the planted mutant was not caught"
    for m in record["not_caught"]:
        assert m["status"] not in mutation.CAUGHT and m["diff"].startswith("--- src/ddpmseg/common/metrics.py")


def test_rerun_uncaught_gives_every_covered_function_all_the_tests():
    """The code --rerun-uncaught adds before mutmut's cli(), run against a stand-in for mutmut.__main__:
    after mutmut collects its stats, each function some test called maps to every test the stats run timed,
    also "t.py::d", which only reads a module-scoped fixture that "t.py::a" set up (so it called nothing)."""
    import types
    from collections import defaultdict

    tests = defaultdict(set, {"m.x_f": {"t.py::a"}, "m.x_g": {"t.py::b", "t.py::c"}})
    timed = {"t.py::a": 1.0, "t.py::b": 0.5, "t.py::c": 0.5, "t.py::d": 0.1}
    calls = []
    stats = types.SimpleNamespace(tests_by_mangled_function_name=tests, duration_by_test=timed)
    stand_in = types.SimpleNamespace(collect_or_load_stats=lambda *a, **k: calls.append((a, k)), state=lambda: stats)
    exec(mutation.ALL_TESTS_PER_MUTANT, {"mutmut_main": stand_in})
    stand_in.collect_or_load_stats("runner", apply_config_invalidation=True)
    assert calls == [(("runner",), {"apply_config_invalidation": True})]
    assert tests == {"m.x_f": set(timed), "m.x_g": set(timed)}
    # A first run launches mutmut unchanged; the rerun's code is the same with the widening before cli().
    assert mutation.launch_code(False) == mutation.LAUNCH
    widened = mutation.launch_code(True)
    assert widened.replace(mutation.ALL_TESTS_PER_MUTANT, "") == mutation.LAUNCH
    assert widened.index(mutation.ALL_TESTS_PER_MUTANT) < widened.index("mutmut_main.cli()")
    compile(widened, "launch", "exec")


def test_bad_module_and_quick_without_out_are_refused():
    for args, message in ((["--modules", "src/ddpmseg/nope.py"], "error: not a module of MODULES: src/ddpmseg/nope.py"),
                          (["--quick"], "error: --quick needs --out")):
        r = subprocess.run([sys.executable, "scripts/mutation.py", *args], cwd=REPO, env=checkout_env(),
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith(message), r.stderr


def record(module, caught, not_caught):
    run = {"command": f"python scripts/mutation.py --modules {module}", "date": "2026-01-02", "cpu_s": 120}
    return {"module": module, "tests": ["tests/test_x.py"], "mutants": caught + len(not_caught) + 5,
            "checked": caught + len(not_caught), "caught": caught, "not_caught": not_caught, "mutmut_version": "3.8.1",
            "runs": [run]}


def survivor(name, new_line):
    return {"name": name, "status": "survived",
            "diff": f"--- m.py\n+++ m.py\n@@ -1,2 +1,2 @@\n def f():\n-    return a\n+    {new_line}"}


def test_table_counts_judged_survivors_as_harmless_and_refuses_stale_entries(tmp_path):
    records = [record("src/ddpmseg/a.py", 8, [survivor("a.x_f__mutmut_1", "return `b`"), survivor("a.x_f__mutmut_2", "pass")])]
    page = tmp_path / "judged.md"
    page.write_text("# Harmless\n\n- `a.x_f__mutmut_1` `` return `b` ``: the same value.\n")
    entries = mutation_table.judged(str(page))
    assert entries == {"a.x_f__mutmut_1": ("return `b`", "the same value.")}
    text = mutation_table.table(records, entries)
    # 15 mutants, 10 checked, 8 caught, 1 harmless: 8 / 9
    assert "| `a.py` | `tests/test_x.py` | 15 | 10 | 8 | 1 | 1 | **88.9 %** |" in text
    assert "Run 2026-01-02, 2 CPU minutes in all." in text
    # An entry whose mutant now writes something else (renumbered) no longer counts: the script stops.
    with pytest.raises(SystemExit, match="not uncaught as written: a.x_f__mutmut_2"):
        mutation_table.table(records, {"a.x_f__mutmut_2": ("return b", "stale")})
