"""The package's structure: its import graph has no circles and no import from a lower floor up, and no module
is longer than a reader can take in.

The graph is read from the sources with ``ast`` (nothing is imported): every ``import`` / ``from ... import``
of a ``fuxi_linear`` module anywhere in a file counts -- at the top, inside a function (a lazy import still
needs its target to be importable without a circle), under ``if TYPE_CHECKING:`` (a type named across a circle
is a circle in the design). Importing ``fuxi_linear.a.b`` also runs ``fuxi_linear/a/__init__.py``, so it is an
edge to the package ``fuxi_linear.a`` too, unless the importer lives inside ``fuxi_linear.a`` (Python has
initialised that package before the importer runs). The top package ``fuxi_linear`` is the ancestor of every
module and is left out of those implicit edges; an explicit ``from fuxi_linear import X`` of a name (not a
module) is an edge to it.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450

#: The floors, lowest first. A module may import modules of its own floor or of a lower one, never of a higher
#: one. A module belongs to the floor of its longest listed prefix (names relative to ``fuxi_linear``; the top
#: package itself is ``""``).
FLOORS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("helpers", ("utils", "fault_injection")),
    ("kernels", ("kernels",)),
    ("operator", ("ops",)),
    ("model inputs, caches and configuration",
     ("config", "derived_cache", "history_inputs", "user_rows", "embedding_scoring_loss")),
    ("data and evaluation", ("data", "evaluation")),
    ("layers", ("layers",)),
    ("decoding", ("decoding",)),
    ("model", ("model",)),
    ("the package's names", ("",)),
    ("models by name", ("models",)),
    ("serving and training", ("serving", "training")),
    ("bench", ("bench",)),
    ("demo", ("end_to_end_demo",)),
    ("command line", ("cli", "__main__")),
)


def package_modules() -> Dict[str, Tuple[Path, bool]]:
    """Dotted name -> (file, is a package) of every module of the installed package (``kernels/`` installs as
    ``fuxi_linear.kernels``)."""
    modules = {}
    for folder, package in ((ROOT / "fuxi_linear", "fuxi_linear"), (ROOT / "kernels", "fuxi_linear.kernels")):
        for path in sorted(folder.rglob("*.py")):
            parts = [package] + list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph(modules: Dict[str, Tuple[Path, bool]]) -> Dict[str, Dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    graph: Dict[str, Dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        edges: Dict[str, int] = {}

        def add(target: str, line: int) -> None:
            # the module itself, then every package between it and fuxi_linear that the importer is not inside
            parts = target.split(".")
            for k in range(len(parts), 1, -1):
                candidate = ".".join(parts[:k])
                if candidate == name or (name + ".").startswith(candidate + "."):
                    break
                if candidate in modules:
                    edges.setdefault(candidate, line)

        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target != "fuxi_linear" and not target.startswith("fuxi_linear."):
                    continue
                names_not_modules = [a.name for a in node.names if f"{target}.{a.name}" not in modules]
                for a in node.names:
                    if f"{target}.{a.name}" in modules:
                        add(f"{target}.{a.name}", node.lineno)
                if names_not_modules:
                    if target == "fuxi_linear":
                        edges.setdefault("fuxi_linear", node.lineno)
                    else:
                        add(target, node.lineno)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fuxi_linear."):
                        add(a.name, node.lineno)
        edges.pop(name, None)
        graph[name] = edges
    return graph


def floor_of(module: str) -> int:
    relative = module[len("fuxi_linear."):] if module != "fuxi_linear" else ""
    best, best_len = None, -1
    for level, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            matches = relative == prefix or (prefix and relative.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    return best


def find_cycle(graph: Dict[str, Dict[str, int]]) -> List[str]:
    """One cycle of the graph (its modules, the first repeated at the end), or [] when it is acyclic."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_every_module_has_a_floor():
    unplaced = [m for m in package_modules() if floor_of(m) is None]
    assert not unplaced, f"modules on no floor (add them to FLOORS): {unplaced}"


def test_no_import_goes_up_a_floor():
    modules = package_modules()
    upward = []
    for module, edges in import_graph(modules).items():
        for target, line in edges.items():
            if floor_of(target) > floor_of(module):
                upward.append(f"{modules[module][0].relative_to(ROOT)}:{line} ({FLOORS[floor_of(module)][0]}) "
                              f"imports {target} ({FLOORS[floor_of(target)][0]})")
    assert not upward, "imports from a lower floor up:\n" + "\n".join(upward)


def test_no_import_circles():
    cycle = find_cycle(import_graph(package_modules()))
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_graph_reader_sees_what_the_test_relies_on():
    """The reader finds lazy, TYPE_CHECKING and package-relative imports, the implicit package edge, and a
    planted circle; floors are assigned by the longest prefix."""
    modules = package_modules()
    graph = import_graph(modules)
    assert "fuxi_linear.training" in graph["fuxi_linear.cli"]  # `from .training import train` inside a function
    assert "fuxi_linear.ops.triton_decay_attention" in graph["fuxi_linear.ops.backends"]  # `from . import x`
    assert "fuxi_linear.decoding" in graph["fuxi_linear.model"]  # implicit: decoding/__init__ runs first
    assert "fuxi_linear.ops" not in graph["fuxi_linear.ops.backends"]  # its own package is initialised already
    assert floor_of("fuxi_linear.kernels.chunk_fwd") < floor_of("fuxi_linear.ops.public_api") \
        < floor_of("fuxi_linear.layers.block") < floor_of("fuxi_linear.model") < floor_of("fuxi_linear.cli")
    assert floor_of("fuxi_linear") == floor_of("fuxi_linear.model") + 1
    planted = {name: dict(edges) for name, edges in graph.items()}
    planted["fuxi_linear.ops.dtypes"]["fuxi_linear.model"] = 1
    assert find_cycle(planted)


@pytest.mark.parametrize("folder", ["fuxi_linear", "kernels"])
def test_no_module_is_longer_than_450_lines(folder):
    long = {p.relative_to(ROOT).as_posix(): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"
