"""The package's import structure: no import cycle (module-level or inside a function), no import
from a later stage's sub-package, guided_diffusion free of ddpmseg, the light command-line tools
free of the interpreter and timm, and the flat layout's module names still importable."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "ddpmseg"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules that ``path`` (module ``name``) imports anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from .x import y" imports x, and y too when y is a module of its own
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walker_sees_function_level_imports_and_cycles():
    graph = import_graph()
    assert "ddpmseg.common.config" in graph["ddpmseg.common.cli"]  # a module-level relative import is an edge
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_guided_diffusion_imports_nothing_from_ddpmseg():
    for path in sorted((REPO / "guided_diffusion").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n == "ddpmseg" or n.startswith("ddpmseg.") for n in names), f"{path} imports {names}"


# What train_ddpm.py and sample.py import from the package (kept in step with them by the test below).
LIGHT_TOOLS = ("train_ddpm.py", "sample.py")


def test_light_tools_load_neither_the_interpreter_nor_timm():
    """train_ddpm.py and sample.py (and every tool, through ddpmseg.common.cli) start without the
    segmentation job's modules: timm alone takes seconds to import."""
    wanted = {"ddpmseg.common.cli"}
    for tool in LIGHT_TOOLS:
        for node in ast.parse((REPO / tool).read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpmseg"):
                wanted.add(node.module)
    code = (f"import json, sys; sys.path[:0] = [{str(SRC)!r}, {str(REPO)!r}]\n"
            f"for m in {sorted(wanted)!r}: __import__(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert "ddpmseg.common.cli" in loaded and len(wanted) > 2
    heavy = [m for m in loaded if m == "timm" or m.startswith("timm.") or m.split(".")[-1] == "interpreter"
             and m.startswith("ddpmseg")]
    assert not heavy, f"{sorted(wanted)} load {heavy[:5]}"


# The sub-packages by stage: a module imports from its own sub-package or from one of a lower
# rank, never upward, and never sideways between two of one rank (classifier and ddpm stay apart).
RANKS = {"common": 0, "data": 1, "features": 2, "classifier": 3, "ddpm": 3, "datasetddpm": 4}
TOP_RANK = 5  # the package itself and the tools beside the sub-packages (ddpmseg.demo)


def place(module: str) -> tuple[str, int]:
    """(sub-package, rank) of a package module; the top level is ("", TOP_RANK)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS):
        assert parts[1] in RANKS, f"{module}: sub-package {parts[1]!r} has no rank in RANKS"
        return parts[1], RANKS[parts[1]]
    return "", TOP_RANK


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        own, rank = place(module)
        for target in sorted(targets):
            other, other_rank = place(target)
            if other != own and other_rank >= rank:
                bad.append(f"{module} ({own or 'top'}) imports {target} ({other or 'top'})")
    return bad


def test_no_module_imports_upward_or_sideways():
    assert layering_violations(import_graph()) == []


def test_the_layering_check_sees_an_upward_import():
    graph = {"ddpmseg.common.config": {"ddpmseg.classifier.refine"}, "ddpmseg.classifier.refine": set(),
             "ddpmseg.ddpm.train": {"ddpmseg.classifier.train"}, "ddpmseg.classifier.train": set(),
             "ddpmseg.demo": {"ddpmseg.data.augment"}, "ddpmseg.data.augment": set()}
    assert layering_violations(graph) == [
        "ddpmseg.common.config (common) imports ddpmseg.classifier.refine (classifier)",
        "ddpmseg.ddpm.train (ddpm) imports ddpmseg.classifier.train (classifier)"]
    assert set(place(m)[0] for m in import_graph()) == {"", *RANKS}  # every module has its place


def test_the_flat_layouts_names_import_the_moved_modules():
    """``ddpmseg.<old name>`` (and the README's imports before issue 17) give the module itself."""
    import importlib

    import ddpmseg
    from ddpmseg.features import FeatureExtractorDDPM, collect_features  # noqa: F401

    for old, new in ddpmseg.MOVED.items():
        moved = importlib.import_module(f"ddpmseg.{new}")
        assert importlib.import_module(f"ddpmseg.{old}") is moved
        assert moved.__spec__.name == moved.__name__ == f"ddpmseg.{new}"
    from ddpmseg.segmenter import Segmenter
    from ddpmseg.classifier.segmenter import Segmenter as Moved
    assert Segmenter is Moved
    assert set(ddpmseg.MOVED.values()) == {m.removeprefix("ddpmseg.") for m in modules()} - {
        "ddpmseg", "demo", *RANKS, "data.folders", "features.ddpm",
        # the report pages' modules, which never had a flat name
        "common.run_report", "common.html_page", "common.report_plots", "common.gallery"}
