"""The README's model example runs as written."""
import pathlib
import re


def test_readme_model_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["users"].shape == (2, 6, 64) and namespace["top10"].shape == (2, 10)


def test_readme_layers_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    example = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (2, 10, 64) and namespace["y_t"].shape == (2, 64)
    assert type(namespace["state"]).__name__ == "FuXiLinearBlockState"


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
    root = pathlib.Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    named = set()
    for paths in _layout_rows(readme):
        for path in paths:
            matches = list(root.glob(path.rstrip("/")))
            assert matches, f"the README's layout table names {path}, which does not exist"
            named.update(m.relative_to(root).as_posix() for m in matches)
    modules = [p.relative_to(root).as_posix() for folder in ("fuxi_linear", "kernels")
               for p in (root / folder).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [m for m in modules if m not in named]
    assert not missing, f"modules the README's layout table does not name: {missing}"
