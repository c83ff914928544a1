"""Code shape: no function in src/ddpmseg is longer than MAX_LINES unless its docstring says why.

A long function usually does several jobs; splitting it into named helpers lets each be read and
tested alone. Where length is the clearer choice, the docstring carries a line starting with
"Long because:" that says why.
"""
import ast
import os

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "ddpmseg")
MAX_LINES = 60  # from the def line to the last line of the body, docstring and comments included
REASON = "Long because:"


def long_functions(root: str) -> list[str]:
    """``path:line name (n lines)`` of every function or method longer than MAX_LINES without a reason."""
    found = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                lines = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if lines > MAX_LINES and not any(line.strip().startswith(REASON) for line in doc.splitlines()):
                    found.append(f"{os.path.relpath(path, root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_long_without_a_reason():
    assert long_functions(SRC) == []


def test_the_check_finds_a_long_function_and_accepts_a_reason(tmp_path):
    def body(n):
        return "".join(f"    x{i} = {i}\n" for i in range(n))
    (tmp_path / "long.py").write_text(f"def long():\n{body(MAX_LINES)}")
    (tmp_path / "short.py").write_text(f"def short():\n{body(MAX_LINES - 1)}")
    (tmp_path / "explained.py").write_text(f'def explained():\n    """Sets names.\n\n    {REASON} a table.\n    """\n'
                                           f"{body(MAX_LINES)}")
    assert long_functions(str(tmp_path)) == [f"long.py:1 long ({MAX_LINES + 1} lines)"]
