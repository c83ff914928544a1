"""The documentation pages: every generated block lives on exactly one page, the one scripts/readme_block.py
names and its script writes, and every relative link of README.md and docs/ reaches a file and heading."""
import ast
import re
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their neighbour readme_block, as when run
import readme_block  # noqa: E402

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WRITERS = ("publish", "write_block", "replace_block")  # the calls that write a block, its name first


def markers_in(path) -> set[str]:
    return set(re.findall(r"<!-- (\w+):begin -->", path.read_text()))


def written_blocks() -> dict[str, list[str]]:
    """Block name -> the scripts whose calls of WRITERS name it."""
    found: dict[str, list[str]] = {}
    for script in sorted((REPO / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in WRITERS and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.setdefault(node.args[0].value, []).append(script.name)
    return found


def test_each_block_is_on_exactly_one_page_the_one_named_for_it():
    holders: dict[str, list[str]] = {}
    for path in PAGES:
        for name in markers_in(path):
            holders.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert set(holders) == set(readme_block.PAGES)
    for name, files in holders.items():
        assert files == [f"docs/{readme_block.PAGES[name]}"], f"block {name} is in {files}"
        text = (REPO / files[0]).read_text()
        begin, end = readme_block.markers(name)
        assert text.count(begin) == text.count(end) == 1 and text.index(begin) < text.index(end)


def test_every_script_that_writes_a_block_writes_it_to_a_page_that_has_it():
    written = written_blocks()
    assert set(written) == set(readme_block.PAGES), "a block no script writes, or a script writing an unknown block"
    for name in written:
        assert name in markers_in(REPO / "docs" / readme_block.PAGES[name])


def test_publish_replaces_its_block_and_keeps_the_pages_other_blocks(tmp_path, capsys):
    page = tmp_path / readme_block.PAGES["best_recipe"]
    page.write_text("# Page\n\n<!-- variants:begin -->\nv\n<!-- variants:end -->\n\n"
                    "<!-- best_recipe:begin -->\nold\n<!-- best_recipe:end -->\n\ntail\n")
    readme_block.publish("best_recipe", "new\n", str(tmp_path))
    assert page.read_text() == ("# Page\n\n<!-- variants:begin -->\nv\n<!-- variants:end -->\n\n"
                                "<!-- best_recipe:begin -->\nnew\n<!-- best_recipe:end -->\n\ntail\n")
    assert capsys.readouterr().out == "new\n\n"


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links() -> list[tuple[str, str]]:
    found = []
    for path in PAGES:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:", target):
                found.append((str(path.relative_to(REPO)), target))
    return found


@pytest.mark.parametrize("page,target", links())
def test_relative_links_reach_a_file_and_heading(page, target):
    file, _, anchor = target.partition("#")
    path = ((REPO / page).parent / file).resolve() if file else REPO / page
    assert path.exists(), f"{page} links to {target}, which does not exist"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S), re.M)
        assert anchor in {slug(h) for h in headings}, f"{page} links to {target}: no such heading"


def test_docs_paths_named_in_the_code_exist():
    """A docs/ page named in a script, a test or the package (e.g. in an error message) is there."""
    named = set()
    for path in [*REPO.glob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "src").rglob("*.py")]:
        named.update(re.findall(r"docs/[\w-]+\.md", path.read_text()))
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, f"named but missing: {missing}"
