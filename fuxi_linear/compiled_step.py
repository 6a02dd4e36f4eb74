"""The decode step compiled by ``torch.compile`` for CPU tensors, with an eager fallback.

A CPU decode step of a few users is bound by per-operation overhead: eagerly, :func:`~fuxi_linear.step_graph.
decode_step` is about a hundred small ATen calls of a few microseconds each around some tens of microseconds of
arithmetic. Compiled, inductor fuses everything between the matrix products (the embedding gathers, temporal
features, layer norms, SiLU, the three channels' state updates and outputs, the gates, the FFN's norm and GLU)
into a few C++ loops. :meth:`fuxi_linear.FuXiLinear.compile_step` switches it on.

Compiling is optional: when ``torch.compile`` is unavailable or fails (no C++ compiler, a platform dynamo does
not support), :class:`CompiledDecodeStep` warns once and runs the step eagerly from then on.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional

import torch

from .step_graph import decode_step

__all__ = ["CompiledDecodeStep", "compile_failures", "DEFAULT_OPTIONS"]

#: Inductor options of the compiled step: the wrapper that calls the kernels in C++ too (about 100 us less
#: Python per step than inductor's Python wrapper on a small CPU).
DEFAULT_OPTIONS: Dict[str, Any] = {"cpp_wrapper": True}


def compile_failures() -> tuple:
    """Exception types that mean "compiling failed" (as opposed to bad inputs, which the eager step reports)."""
    failures: list = [OSError, ImportError]
    try:
        from torch._dynamo.exc import TorchDynamoException  # BackendCompilerFailed, InductorError, Unsupported

        failures.append(TorchDynamoException)
    except ImportError:  # pragma: no cover - every torch >= 2.0 has it
        pass
    return tuple(failures)


def _compile(fn: Callable, options: Optional[Dict[str, Any]]) -> Callable:
    """``torch.compile`` of ``fn`` as one graph (a graph break is a failure: it would bring the overhead back)."""
    return torch.compile(fn, fullgraph=True, options=options or None)


class CompiledDecodeStep:
    """Calls :func:`~fuxi_linear.step_graph.decode_step` (same arguments, CPU tensors, the reference
    channel operator) through ``torch.compile``.

    Compiled lazily, at the first call, as one graph for every batch and pool size above 1 (both are marked
    dynamic; a whole state is stepped as the rows ``arange(N)`` of itself, so calls with and without
    ``state_indices`` share the graph). Dynamo compiles again for what the graph is specialised on: another
    dtype, a batch of one user, inference mode on or off.

    If creating or compiling the graph fails with one of :func:`compile_failures`, the call runs eagerly; if
    that succeeds, the failure was the compiler's: one ``RuntimeWarning`` says so and every later call runs
    eagerly (:attr:`failure` holds the reason). If the eager call fails too, its error (bad input) is raised
    and compiling stays on.
    """

    def __init__(self, options: Optional[Dict[str, Any]] = None):
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.failure: Optional[str] = None  # why calls run eagerly, once compiling has failed
        self._compiled: Optional[Callable] = None
        self._arange: Dict[tuple, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        """True until compiling has failed."""
        return self.failure is None

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.failure is not None:
            return decode_step(*args, backend="reference")
        args = self._graph_arguments(args)
        try:
            if self._compiled is None:
                try:
                    self._compiled = _compile(decode_step, self.options)
                except Exception as err:  # torch.compile itself refused (platform, Python version)
                    raise _CompileUnavailable(err) from err
            return self._compiled(*args, backend="reference")
        except (_CompileUnavailable, *compile_failures()) as err:
            error = err.__cause__ if isinstance(err, _CompileUnavailable) else err
        out = decode_step(*args, backend="reference")  # raises if the inputs were bad: compiling stays on
        self.failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        warnings.warn(f"FuXiLinear.compile_step: compiling the decode step failed ({self.failure[:500]}); decode "
                      f"steps run eagerly", RuntimeWarning, stacklevel=3)
        return out

    def _graph_arguments(self, args: tuple) -> tuple:
        """The arguments in the form one graph serves: contiguous events (a strided column of a batch of
        histories would recompile), state rows always given (``arange(N)`` for a whole state: no second graph),
        the batch size N and the pool size P marked dynamic (one graph for every size above 1)."""
        operands, items, ts, qts, retention, temporal, positional, last, position, rows = args
        items, ts, qts = items.contiguous(), ts.contiguous(), qts.contiguous()
        if rows is None:
            rows = self._all_rows(items.shape[0], items.device)
        for t in (items, ts, qts, rows, last, position):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        for t in (retention, temporal, positional):
            torch._dynamo.maybe_mark_dynamic(t, 1)
        return operands, items, ts, qts, retention, temporal, positional, last, position, rows

    def _all_rows(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, device)
        rows = self._arange.get(key)
        if rows is None:
            with torch.inference_mode(False):  # a normal tensor whatever the caller's mode (no recompile)
                rows = self._arange[key] = torch.arange(n, device=device)
        return rows

    def __getstate__(self) -> Dict[str, Any]:  # a compiled callable does not pickle: compile again after loading
        return {"options": self.options, "failure": self.failure, "_compiled": None, "_arange": {}}


class _CompileUnavailable(Exception):
    """``torch.compile`` raised before compiling anything (carried as ``__cause__``)."""
