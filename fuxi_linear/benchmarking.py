"""Deprecated: the benchmark is the package :mod:`fuxi_linear.bench` (its flags are in :mod:`fuxi_linear.cli`).

``import fuxi_linear.benchmarking`` still gives the names it used to hold, and warns once.
"""
import warnings

from .bench import *  # noqa: F401,F403
from .bench import __all__ as _bench_names
from .cli import add_bench_arguments, bench_settings_from_args as settings_from_args, run_bench_command  # noqa: F401

warnings.warn("fuxi_linear.benchmarking is deprecated: import from fuxi_linear.bench (flags: fuxi_linear.cli)",
              DeprecationWarning, stacklevel=2)

__all__ = list(_bench_names) + ["add_bench_arguments", "settings_from_args", "run_bench_command"]
