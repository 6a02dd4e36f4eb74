"""The errors the numerical tests measured, and the bounds each test is held to.

Every comparison of a computed result with its reference in the numerical tests (kernels against the float64
math, the CPU path against the float64 recurrence, the decode step against a longer prefill, ...) goes through
:func:`check_errors`::

    check_errors({"o": rel_rms(o, o_ref), "final_state": rel_rms(ht, ht_ref)})

The bound of each quantity of each test is ``BOUND_FACTOR`` times the error that very comparison measured
(``measured_errors.json`` beside this file, keyed by the pytest id, e.g. ``test_kernels.py::test_x[g]``), at
least :data:`FLOOR`, rounded up to two significant digits. So a change that makes any result a few times less
accurate fails the test that measures it, while the tests stay deterministic on a CPU (same inputs, same
interpreter, same numbers) and keep some room for a GPU's other summation order.

Re-measure after a change that legitimately moves the errors (new inputs, a new test, a more or less accurate
algorithm) with ``python tests/measure_errors.py``: it runs the numerical test files with recording on, writes
the file and prints the table; commit the file with the change that moved the numbers (the diff shows which).

Recording: with ``FUXI_RECORD_ERRORS=<path>`` in the environment every checked error is appended to that file
(one JSON object per line) and no bound is applied (the measuring run). With ``FUXI_REPORT_ERRORS=<path>`` the
bounds apply as usual and every error is appended with its bound (the GPU suite's ``tests`` section writes them
into its JSON). On a CUDA GPU, a test can pass its own provisional bounds (``cuda_bounds``): half-precision
kernels run other code there than under the CPU interpreter (which computes bf16 in float32), and GPU-only tests
have no CPU measurement; the first GPU run's report is what their bounds are then set from.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import pytest
import torch

MEASURED_FILE = Path(__file__).with_name("measured_errors.json")
RECORD_ENV = "FUXI_RECORD_ERRORS"
REPORT_ENV = "FUXI_REPORT_ERRORS"
#: bound = BOUND_FACTOR x measured error (rounded up to two significant digits)
BOUND_FACTOR = 8.0
#: no bound below this: a comparison that measured (nearly) nothing, e.g. two float64 forms that agree to the last
#: bit, still allows a few float64 roundings of O(1) data
FLOOR = 1e-15

_measured: Optional[Dict[str, Dict[str, float]]] = None


def current_test() -> str:
    """``file.py::test_name[params]`` of the running test (from ``PYTEST_CURRENT_TEST``)."""
    raw = os.environ.get("PYTEST_CURRENT_TEST")
    if not raw:
        raise RuntimeError("check_errors runs inside a pytest test only")
    nodeid = raw.rsplit(" (", 1)[0]  # "tests/test_x.py::test_y[p] (call)"
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest}"


def measured_errors() -> Dict[str, Dict[str, float]]:
    global _measured
    if _measured is None:
        _measured = json.loads(MEASURED_FILE.read_text())["errors"] if MEASURED_FILE.exists() else {}
    return _measured


def bound_from(measured: float) -> float:
    """``BOUND_FACTOR x measured`` (at least :data:`FLOOR`), rounded up to two significant digits."""
    b = max(BOUND_FACTOR * measured, FLOOR)
    unit = 10.0 ** (math.floor(math.log10(b)) - 1)
    return math.ceil(b / unit - 1e-9) * unit


def bound_of(test: str, name: str) -> float:
    recorded = measured_errors().get(test, {})
    if name not in recorded:
        pytest.fail(f"no measured error recorded for {test} / {name}: run `python tests/measure_errors.py` and "
                    f"commit tests/{MEASURED_FILE.name}", pytrace=False)
    return bound_from(recorded[name])


def check_errors(errors: Mapping[str, float], tags: Optional[Mapping[str, str]] = None,
                 cuda_bounds: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Asserts every ``errors[name]`` (a relative or absolute error this test computed) is within its bound.

    ``tags`` (e.g. dtype and decay mode) go into the record, for the summary table. ``cuda_bounds``: on a CUDA
    machine, explicit bounds (``{"default": x, name: y}``) instead of the recorded ones. Returns the bounds.
    """
    test = current_test()
    errors = {n: float(e) for n, e in errors.items()}
    for n, e in errors.items():
        if not math.isfinite(e):
            pytest.fail(f"{test}: error {n} is {e}", pytrace=False)
    record_path = os.environ.get(RECORD_ENV)
    if record_path:
        with open(record_path, "a") as f:
            for n, e in errors.items():
                f.write(json.dumps({"test": test, "name": n, "error": e, "tags": dict(tags or {})}) + "\n")
        return {}
    recorded = measured_errors().get(test, {})
    if cuda_bounds is not None and torch.cuda.is_available():
        bounds = {n: cuda_bounds.get(n, cuda_bounds["default"]) for n in errors}
    else:
        bounds = {n: bound_of(test, n) for n in errors}
    report_path = os.environ.get(REPORT_ENV)
    if report_path:
        with open(report_path, "a") as f:
            for n, e in errors.items():
                f.write(json.dumps({"test": test, "name": n, "error": e, "bound": bounds[n],
                                    "cpu_measured": recorded.get(n), "tags": dict(tags or {})}) + "\n")
    bad = {n: f"{e:.3g} > {bounds[n]:.3g}" for n, e in errors.items() if not e <= bounds[n]}
    if bad:
        detail = ", ".join(f"{n}: {why} (measured {recorded.get(n, float('nan')):.3g})" for n, why in bad.items())
        pytest.fail(f"{test}: errors above their bounds: {detail}; all errors: "
                    + ", ".join(f"{n}={e:.3g}" for n, e in errors.items()), pytrace=False)
    return bounds


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (the norm of ``a - b`` itself where ``b`` is all zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    den = float(b.norm())
    return float((a - b).norm()) / (den if den > 0 else 1.0)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0
