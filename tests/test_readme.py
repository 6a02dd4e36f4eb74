"""The README and the pages under docs/: every ```python block runs as written, or says why it does not.

A page's blocks run in order in one namespace (a page reads top to bottom, so a later block may use an earlier
one's names), in an empty temporary working directory. A block that cannot run here (it needs a file from
outside, a GPU, or minutes) has the line ``<!-- not run: REASON -->`` right above its fence; it is still
compiled, so its syntax is checked. The README's layout table names every module, and every module it names
exists.
"""
import pathlib
import re
from dataclasses import dataclass
from typing import List, Optional

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.*\S.*?) -->$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the block's first code line
    code: str
    not_run: Optional[str]  # the reason, for a block marked as not run


def python_blocks(page: str, text: Optional[str] = None) -> List[Block]:
    """The ```python blocks of ``page`` (its text read from the file unless given), with their not-run reasons.
    A not-run marker that does not sit right above a python block, or whose reason is empty, is an error."""
    lines = (text if text is not None else (ROOT / page).read_text(encoding="utf-8")).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- not run"):
            if not NOT_RUN.match(line):
                raise ValueError(f"{page}:{i + 1}: a not-run marker must read '<!-- not run: REASON -->': {line!r}")
            if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
                raise ValueError(f"{page}:{i + 1}: a not-run marker must sit right above a ```python block")
        if line.strip() == "```python":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"{page}:{i + 1}: a ```python block that never closes")
            marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
            blocks.append(Block(page, i + 2, "\n".join(lines[i + 1:end]) + "\n",
                                marker.group("reason") if marker else None))
            i = end
        i += 1
    return blocks


def run_page(page: str, text: Optional[str] = None) -> dict:
    """Run the page's blocks in order in one namespace (not-run blocks only compiled); returns the namespace.
    Line numbers in a traceback are the page's own."""
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(page, text):
        code = compile("\n" * (block.line - 1) + block.code, page, "exec")
        if block.not_run is None:
            exec(code, namespace)
    return namespace


#: What some pages' examples must produce, beyond running.
EXPECTED = {
    "docs/model.md": lambda ns: (ns["users"].shape == (2, 6, 64) and ns["top10"].shape == (2, 10)
                                 and ns["user"].shape == (2, 64)),
    "docs/layers.md": lambda ns: (ns["y"].shape == (2, 10, 64) and ns["y_t"].shape == (2, 64)
                                  and type(ns["state"]).__name__ == "FuXiLinearBlockState"),
    "docs/serving.md": lambda ns: ns["out"].shape == (2, 64) and ns["decoder"].max_users == 4096,
    "docs/operator.md": lambda ns: ns["o"].shape == (2, 100, 4, 32) and ns["state"].shape == (2, 4, 32, 32),
}


def test_the_pages_are_the_ones_the_readme_links():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {m for m in re.findall(r"\]\((docs/[^)#]+\.md)", readme)}
    assert linked and linked <= set(PAGES), f"the README links pages that do not exist: {linked - set(PAGES)}"
    assert set(EXPECTED) <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_runs_or_says_why_not(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block may write files (a snapshot, a checkpoint)
    namespace = run_page(page)
    if page in EXPECTED:
        assert EXPECTED[page](namespace), f"{page}: its examples ran but did not produce what they show"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    """Every relative link and image of a page names a file that exists (anchors are not checked)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    base = (ROOT / page).parent
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z]+:", path):
            continue
        assert (base / path).exists(), f"{page} links {target}, which does not exist"


def test_a_broken_block_fails_and_a_marked_one_is_not_run():
    page = "docs/example.md"
    with pytest.raises(NameError):
        run_page(page, "text\n\n```python\nx = 1\n```\n\n```python\ny = x + undefined_name\n```\n")
    run_page(page, "<!-- not run: needs a GPU -->\n```python\nraise RuntimeError('ran')\n```\n")  # not run
    with pytest.raises(SyntaxError):  # a not-run block is still compiled
        run_page(page, "<!-- not run: needs a GPU -->\n```python\ndef (:\n```\n")
    with pytest.raises(ValueError, match="REASON"):
        python_blocks(page, "<!-- not run:  -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="right above"):
        python_blocks(page, "<!-- not run: stale -->\n\n```python\nx = 1\n```\n")
    [block] = python_blocks(page, "a\n\n```python\nx = 1\n```\n")
    assert block.line == 4 and block.code == "x = 1\n" and block.not_run is None


def _layout_rows(readme: str):
    """The paths each row of the README's layout table names (backticked names ending in ``.py``, ``.md`` or
    ``/``): the row's first path from the repository root, the others too when they hold a ``/``, otherwise
    relative to the folder of the first."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = line.split("|")[1:-1]
        if len(cells) != 2 or cells[0].strip() in ("path", "---"):
            continue
        names = [n for cell in cells for n in re.findall(r"`([^`]+)`", cell) if re.search(r"(\.py|\.md|/)$", n)]
        base = names[0] if names[0].endswith("/") else names[0].rsplit("/", 1)[0] + "/"
        yield [names[0]] + [n if "/" in n.rstrip("/") else base + n for n in names[1:]]


def test_readme_layout_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set()
    for paths in _layout_rows(readme):
        for path in paths:
            matches = list(ROOT.glob(path.rstrip("/")))
            assert matches, f"the README's layout table names {path}, which does not exist"
            named.update(m.relative_to(ROOT).as_posix() for m in matches)
    modules = [p.relative_to(ROOT).as_posix() for folder in ("fuxi_linear", "kernels")
               for p in (ROOT / folder).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [m for m in modules if m not in named]
    assert not missing, f"modules the README's layout table does not name: {missing}"
