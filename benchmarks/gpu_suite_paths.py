"""Run the GPU suite straight from a checkout: this repository's ``fuxi_linear`` (and its ``kernels/`` folder as
``fuxi_linear.kernels``) is imported whether or not the package is installed.

The GPU machine has no network, so ``pip install -e .`` is not a given there; and a package installed from
elsewhere must not be what the suite measures. Importing nothing heavy here (no torch), so the pytest
subprocess can call :func:`use_source_tree` before its ``conftest.py`` sets ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
KERNELS_DIR = REPO_ROOT / "kernels"
KERNELS_PACKAGE = "fuxi_linear.kernels"


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Maps the package ``fuxi_linear.kernels`` to ``REPO_ROOT/kernels`` (setup.py's ``package_dir`` does the
    same for an install); its submodules are then found through the package's ``__path__`` as usual."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != KERNELS_PACKAGE:
            return None
        return importlib.util.spec_from_file_location(
            fullname, KERNELS_DIR / "__init__.py", submodule_search_locations=[str(KERNELS_DIR)]
        )


def use_source_tree() -> None:
    """Put the repository first on ``sys.path`` and resolve ``fuxi_linear.kernels`` to its ``kernels/``.

    Idempotent; call it before the first import of ``fuxi_linear``.
    """
    root = str(REPO_ROOT)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    if not any(isinstance(f, _SourceKernelsFinder) for f in sys.meta_path):
        # First, ahead of an editable install's finder that may point at another checkout.
        sys.meta_path.insert(0, _SourceKernelsFinder())


#: Code for ``python -c`` that makes a child interpreter import this checkout, then runs pytest with argv.
PYTEST_BOOTSTRAP = (
    "import sys; sys.path.insert(0, {bench!r}); import gpu_suite_paths; gpu_suite_paths.use_source_tree(); "
    "import pytest; raise SystemExit(pytest.main(sys.argv[1:]))"
).format(bench=str(BENCH_DIR))
