"""Deprecated: ``fuxi-linear demo`` lives in :mod:`fuxi_linear.bench.demo` (its flags in :mod:`fuxi_linear.cli`).

``import fuxi_linear.demo`` still gives the names it used to hold, and warns once.
"""
import warnings

from .bench.demo import DemoSettings, read_table, run_demo  # noqa: F401
from .cli import add_demo_arguments, run_demo_command  # noqa: F401

warnings.warn("fuxi_linear.demo is deprecated: import from fuxi_linear.bench.demo (flags: fuxi_linear.cli)",
              DeprecationWarning, stacklevel=2)

__all__ = ["DemoSettings", "run_demo", "read_table", "add_demo_arguments", "run_demo_command"]
