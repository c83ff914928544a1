"""Mutation testing of the core modules, each against its mirrored tests only; writes docs/bench/mutation.json.

    python scripts/mutation.py                                         # every module of MODULES, one at a time
    python scripts/mutation.py --modules src/ddpmseg/common/metrics.py # some of them (their records are replaced)
    python scripts/mutation.py --quick --out /tmp/quick.json           # one function (tests/test_mutation.py)
    python scripts/mutation_table.py                                   # the table of docs/reliability.md

Needs mutmut (``pip install -e .[mutation]``). Per module: a scratch copy of the checkout in a temp folder (the
files git tracks or would track, as they are in the working tree), a setup.cfg ``[mutmut]`` there that mutates
that one module and runs only its mirrored tests, ``mutmut run --max-children 1``, then each mutant's verdict
from mutmut's meta file and the diff of every mutant the tests did not catch. A mutant counts as caught when a
test failed, timed out or crashed on it.

The tests run the mutated copy, not this tree: mutmut runs pytest from <scratch>/mutants, whose pyproject.toml
``pythonpath`` (".", "src") names the mutated copy; an editable install of ddpmseg is a finder that Python asks
only after sys.path; PYTHONPATH is dropped from mutmut's environment. mutmut itself stops before testing
mutants when no test fails with every function of the module raising, and tests/test_mutation.py checks that
a mutant known to change the result is caught.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Module -> its mirrored tests (pytest arguments). Each test file runs in under 20 s here, so none needs a -k.
MODULES = {
    "src/ddpmseg/common/metrics.py": ["tests/test_metrics.py"],
    "src/ddpmseg/classifier/predict.py": ["tests/test_predict.py"],
    "src/ddpmseg/classifier/segmenter.py": ["tests/test_segmenter.py"],
    "src/ddpmseg/classifier/crossfit.py": ["tests/test_crossfit.py"],
    "src/ddpmseg/classifier/feature_selection.py": ["tests/test_select_features.py"],
    "src/ddpmseg/classifier/refine.py": ["tests/test_refine.py"],
    "src/ddpmseg/classifier/train.py": ["tests/test_train.py"],
    # folders.py's readers of image and mask formats have their own file.
    "src/ddpmseg/data/folders.py": ["tests/test_data.py", "tests/test_data_formats.py"],
    "src/ddpmseg/data/augment.py": ["tests/test_augment.py"],
    "src/ddpmseg/features/store.py": ["tests/test_store.py"],
    "src/ddpmseg/features/ddpm.py": ["tests/test_features.py"],
}
# --quick: the mutants of one small function and the one test that reads it (about 30 s).
QUICK = {"module": "src/ddpmseg/common/metrics.py", "tests": ["tests/test_metrics.py", "-k", "markdown"],
         "mutants": "ddpmseg.common.metrics.x_iou_table_markdown__mutmut_*"}
MUTMUT_RUN = ["run", "--max-children", "1"]  # one worker: the machine's 2 cores are shared
# mutmut stops a mutant's test process after 2 x multiplier x (its tests' time + constant) CPU seconds: a
# timeout, which counts as caught. Its defaults (15, 1 s) let one endless loop take 8 CPU minutes where the
# tests need 15 s; the constant covers the fixtures a test sets up (a trained tiny run: ~10 s), which
# mutmut's test times leave out.
TIMEOUT_MULTIPLIER, TIMEOUT_CONSTANT = 3, 10
# `mutmut ARGS`, with two changes for the test processes mutmut forks from itself, one per mutant:
# - no wall-clock timeout: it would also stop a test process that a busy machine's scheduler has paused
#   (SIGSTOP) for minutes, and call the mutant caught; the CPU-time limit above (RLIMIT_CPU, set in each
#   test process) still ends endless loops;
# - tqdm's lock a thread lock and no monitor thread: its default lock is a multiprocessing semaphore that
#   every forked process shares, so one test process stopped at its limit while holding it would hang
#   every later one that shows a progress bar.
LAUNCH = """
import sys, threading
import tqdm
import mutmut.workers.isolation as isolation
isolation.register_timeout = lambda pid, timeout_s: None
tqdm.tqdm.monitor_interval = 0
tqdm.tqdm.set_lock(threading.RLock())
import mutmut.__main__ as mutmut_main
sys.argv[0] = "mutmut"
mutmut_main.cli()
"""
# With --rerun-uncaught, one more change before cli(): every function some test calls meets all the module's
# mirrored tests (every test mutmut's stats run timed). mutmut runs a mutant only against the tests it saw call
# the mutated function, and it credits a module-scoped fixture's calls to the first test that set the fixture
# up, so a function that runs inside such a fixture never meets the later tests that read its results
# (feature_selection's write_outputs); those tests call no function of their own, so they are in no function's
# list at all. A first run keeps mutmut's mapping (it is what makes a module's run fit its budget); the few
# survivors are worth the whole file each.
ALL_TESTS_PER_MUTANT = """
collect_or_load_stats = mutmut_main.collect_or_load_stats
def collect_then_widen(*args, **kwargs):
    collect_or_load_stats(*args, **kwargs)
    stats = mutmut_main.state()
    every = set(stats.duration_by_test).union(*stats.tests_by_mangled_function_name.values())
    for function in stats.tests_by_mangled_function_name:
        stats.tests_by_mangled_function_name[function] = set(every)
mutmut_main.collect_or_load_stats = collect_then_widen
"""
# mutmut's verdicts (mutmut.stats.status_by_exit_code) that mean the tests noticed the mutant; "segfault"
# is also how mutmut names a test process killed for running past its CPU limit.
CAUGHT = ("killed", "timeout", "segfault")


def scratch_copy(dest: str) -> None:
    """Copy the checkout's files (tracked, or untracked and not ignored) into ``dest``, as they are on disk."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0:
        sys.exit(f"error: git cannot list the files of {REPO} (a git checkout is needed): {listed.stderr.decode().strip()}")
    names = listed.stdout.decode().split("\0")
    for name in names:
        src = os.path.join(REPO, name)
        if name and os.path.isfile(src):  # a tracked file deleted in the working tree is left out
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))


def mutmut_config(module: str, tests: list[str], root: str) -> str:
    """setup.cfg's [mutmut] section: mutate ``module`` only, run ``tests`` only. mutmut copies source_paths
    (all of src/, so the other modules import) and also_copy into mutants/; also_copy names every other
    top-level entry (guided_diffusion, scripts, experiments, ...) that the tests read."""
    others = sorted(set(os.listdir(root)) - {"src", "tests", "pyproject.toml", "setup.cfg", "mutants"})
    lines = ["[mutmut]", "source_paths = src", f"only_mutate = {module}", "also_copy ="]
    lines += [f"    {name}" for name in others]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {arg}" for arg in tests]
    lines += [f"timeout_multiplier = {TIMEOUT_MULTIPLIER}", f"timeout_constant = {TIMEOUT_CONSTANT}"]
    return "\n".join(lines) + "\n"


def mutmut_env(tmp: str) -> dict[str, str]:
    """The environment of ``mutmut run``: no PYTHONPATH (it could name this tree's src/), one OpenMP thread
    unless set, DDPMSEG_SHARED pointing at this checkout's ../shared (the scratch copy has no neighbour), and
    TMPDIR inside the scratch folder: mutmut ends each mutant's test process without its atexit cleanup, which
    would leave a temp dataset per mutant in /tmp."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("DDPMSEG_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
    os.makedirs(tmp, exist_ok=True)
    return {**env, "TMPDIR": tmp}


def verdicts(root: str, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's verdict, from the meta file mutmut writes beside the mutated module."""
    from mutmut.stats import status_by_exit_code

    with open(os.path.join(root, "mutants", module + ".meta")) as f:
        codes = json.load(f)["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in sorted(codes.items())}


def diffs(root: str, module: str, names: list[str]) -> dict[str, str]:
    """Mutant name -> the unified diff ``mutmut show`` prints, computed in this process (one start-up of
    mutmut for all of them instead of one per mutant)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = os.getcwd()
    os.chdir(root)  # mutmut reads mutants/<module>.spans relative to the working directory
    try:
        return {name: get_diff_for_mutant(name, path=module) for name in names}
    finally:
        os.chdir(here)


def launch_code(all_tests: bool) -> str:
    """LAUNCH, with ALL_TESTS_PER_MUTANT inserted before cli() when ``all_tests``."""
    if not all_tests:
        return LAUNCH
    head, cli = LAUNCH.rsplit('sys.argv[0] = "mutmut"', 1)
    return head + ALL_TESTS_PER_MUTANT + 'sys.argv[0] = "mutmut"' + cli


def run_mutmut(root: str, names: list[str], budget_s: float | None, log_path: str, tmp: str,
               all_tests: bool = False) -> None:
    """``mutmut run --max-children 1 [names]`` in ``root``; after ``budget_s`` seconds it is interrupted as
    Ctrl-C would (mutmut stops its worker and keeps the verdicts it has: the rest stay "not checked").
    ``all_tests``: every covered function meets all the module's tests (ALL_TESTS_PER_MUTANT)."""
    argv = [sys.executable, "-c", launch_code(all_tests), *MUTMUT_RUN, *names]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=root, env=mutmut_env(tmp), stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait()
    if rc != 0:
        with open(log_path) as f:
            sys.exit(f"error: mutmut failed in {root} (exit {rc}); the end of its output:\n{f.read()[-3000:]}")


def mutation_run(module: str, tests: list[str], names: list[str], budget_s: float | None,
                 keep_caught_diffs: bool, all_tests: bool = False) -> tuple[dict[str, str], dict[str, str], dict]:
    """Mutation-test ``module`` against ``tests`` in a scratch copy: (verdict of each mutant, diff of each
    one not caught, or of all with ``keep_caught_diffs``, what the run took). ``names``: only these mutants
    (mutmut name patterns); the others keep no verdict. ``all_tests``: see run_mutmut."""
    with tempfile.TemporaryDirectory(prefix="ddpmseg-mutation-") as tmp:
        root = os.path.join(tmp, "repo")
        scratch_copy(root)
        with open(os.path.join(root, "setup.cfg"), "w") as f:
            f.write(mutmut_config(module, tests, root))
        start, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        run_mutmut(root, names, budget_s, os.path.join(tmp, "mutmut.log"), os.path.join(tmp, "tmp"), all_tests)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        took = {"wall_s": round(time.time() - start),
                "cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime)}
        status = verdicts(root, module)
        if names:
            status = {n: s for n, s in status.items() if any(fnmatch.fnmatchcase(n, p) for p in names)}
        shown = [n for n, s in status.items() if s != "not checked" and (keep_caught_diffs or s not in CAUGHT)]
        return status, diffs(root, module, shown), took


def record(module: str, tests: list[str], counts: Counter, not_caught: list[dict], runs: list[dict]) -> dict:
    """A module's JSON record: how many mutants got each verdict, caught / checked, every mutant checked and
    not caught with its diff, and the runs that gave the verdicts."""
    import mutmut

    caught = sum(counts[s] for s in CAUGHT)
    checked = sum(counts.values()) - counts["not checked"]
    return {"module": module, "tests": tests, "mutmut_version": mutmut.__version__, "mutants": sum(counts.values()),
            "checked": checked, "caught": caught, "kill_rate": round(caught / checked, 4) if checked else None,
            "counts": {k: v for k, v in sorted(counts.items()) if v}, "runs": runs, "not_caught": not_caught}


def uncaught(status: dict[str, str], diff: dict[str, str]) -> list[dict]:
    return [{"name": n, "status": s, "diff": diff[n]} for n, s in status.items() if s not in CAUGHT and s != "not checked"]


def run_entry(command: str, pattern: str, status: dict[str, str], took: dict, budget_min: float | None) -> dict:
    return {"command": command, "mutmut_command": " ".join(["mutmut", *MUTMUT_RUN, pattern]).strip(),
            "date": datetime.date.today().isoformat(), "mutants_checked": sum(s != "not checked" for s in status.values()),
            **took, **({"budget_min": budget_min} if budget_min else {})}


def load(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def merge(old: list[dict], new: dict) -> list[dict]:
    """``old`` with ``new`` in place of the record of its module, in MODULES order."""
    order = list(MODULES)
    kept = [r for r in old if r["module"] != new["module"]] + [new]
    return sorted(kept, key=lambda r: order.index(r["module"]) if r["module"] in order else len(order))


def quick() -> dict:
    """The --quick record: one function's mutants, with the diffs of the caught ones too (tests/test_mutation.py
    looks among them for a mutant it knows must be caught)."""
    status, diff, took = mutation_run(QUICK["module"], QUICK["tests"], [QUICK["mutants"]], None, keep_caught_diffs=True)
    entry = run_entry("python scripts/mutation.py --quick", QUICK["mutants"], status, took, None)
    out = record(QUICK["module"], QUICK["tests"], Counter(status.values()), uncaught(status, diff), [entry])
    return {**out, "caught_diffs": {n: diff[n] for n, s in status.items() if s in CAUGHT}}


def full(module: str, budget_min: float | None) -> dict:
    """Every mutant of ``module`` (the fastest to test first, as mutmut orders them, until the budget ends)."""
    status, diff, took = mutation_run(module, MODULES[module], [], budget_min and 60 * budget_min, False)
    command = f"python scripts/mutation.py --modules {module}" + (f" --budget-min {budget_min:g}" if budget_min else "")
    return record(module, MODULES[module], Counter(status.values()), uncaught(status, diff),
                  [run_entry(command, "", status, took, budget_min)])


def rerun_uncaught(previous: dict) -> dict:
    """``previous`` with its uncaught mutants tested again, each against all the module's tests (after tests
    were added: a test added or made stricter cannot free a mutant already caught, so those verdicts stand)."""
    module, names = previous["module"], [m["name"] for m in previous["not_caught"]]
    status, diff, took = mutation_run(module, previous["tests"], names, None, False, all_tests=True)
    counts = Counter(previous["counts"]) - Counter(m["status"] for m in previous["not_caught"]) + Counter(status.values())
    entry = run_entry(f"python scripts/mutation.py --modules {module} --rerun-uncaught",
                      f"<the {len(names)} mutants the run before did not catch>", status, took, None)
    return record(module, previous["tests"], counts, uncaught(status, diff), previous["runs"] + [entry])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", default=list(MODULES), metavar="PATH",
                        help="the modules to mutate (paths as in MODULES); default: all")
    parser.add_argument("--budget-min", type=float,
                        help="stop each module's run after this many minutes (its other mutants stay 'not checked')")
    parser.add_argument("--rerun-uncaught", action="store_true",
                        help="test again only the mutants the module's record in --out left uncaught, "
                             "each against all the module's tests")
    parser.add_argument("--quick", action="store_true",
                        help=f"only the mutants {QUICK['mutants']} against {' '.join(QUICK['tests'])}; needs --out")
    parser.add_argument("--out", help="the JSON file (default docs/bench/mutation.json; records of other modules kept)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.exit(2, f"error: not a module of MODULES: {' '.join(unknown)} (one of: {' '.join(MODULES)})\n")
    if args.quick and not args.out:
        parser.exit(2, "error: --quick needs --out (its record does not belong in docs/bench/mutation.json)\n")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        parser.exit(2, "error: mutmut is not installed: pip install -e .[mutation]\n")
    return args


def main(argv: list[str] | None = None) -> int:
    from ddpmseg.common.atomic import write_json_atomic

    args = parse_args(argv)
    out = args.out or os.path.join(REPO, "docs", "bench", "mutation.json")
    modules = [QUICK["module"]] if args.quick else args.modules
    previous = {r["module"]: r for r in load(out)}
    if args.rerun_uncaught:
        stale = [m for m in modules if m not in previous or previous[m]["tests"] != MODULES[m]]
        if stale:
            sys.exit(f"error: {out} has no record of {' '.join(stale)} with the tests of MODULES to rerun")
    for module in modules:
        print(f"{module}: mutmut against {' '.join(QUICK['tests'] if args.quick else MODULES[module])} ...", flush=True)
        if args.quick:
            result = quick()
        elif args.rerun_uncaught:
            result = rerun_uncaught(previous[module])
        else:
            result = full(module, args.budget_min)
        # Written after each module, so a long run interrupted later keeps the modules it finished.
        write_json_atomic(out, merge(load(out), result))
        print(f"{module}: {result['caught']} of {result['checked']} mutants checked caught ({result['mutants']} "
              f"in all), {result['counts']}, {result['runs'][-1]['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
