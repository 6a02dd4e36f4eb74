"""The decode step compiled by ``torch.compile`` for CPU tensors, with an eager fallback.

A CPU decode step of a few users is bound by per-operation overhead: eagerly, :func:`~fuxi_linear.decoding.decode_step.
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

from .decode_step import ModelStepOperands, decode_step

__all__ = ["CompiledDecodeStep", "packed_decode_step", "compile_failures", "DEFAULT_OPTIONS"]

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


def packed_decode_step(operands: ModelStepOperands, events: torch.Tensor, retention: torch.Tensor,
                       temporal: torch.Tensor, positional: torch.Tensor, last_timestamp: torch.Tensor,
                       position: torch.Tensor) -> torch.Tensor:
    """:func:`~fuxi_linear.decoding.decode_step.decode_step` (the CPU path's channels) with ``events (4, N)`` int64 =
    the item ids, timestamps, query timestamps and state rows stacked: the compiled graph then has one batch size among
    its inputs instead of four (each symbolic size of a graph's inputs costs a few microseconds per call)."""
    return decode_step(operands, events[0], events[1], events[2], retention, temporal, positional, last_timestamp,
                       position, events[3], backend="cpu")


def _compile(fn: Callable, options: Optional[Dict[str, Any]]) -> Callable:
    """``torch.compile`` of ``fn`` as one graph (a graph break is a failure: it would bring the overhead back)."""
    return torch.compile(fn, fullgraph=True, options=options or None)


class CompiledDecodeStep:
    """Calls :func:`~fuxi_linear.decoding.decode_step.decode_step` (same arguments, CPU tensors, the CPU path's
    channel operator) through ``torch.compile``.

    Compiled lazily, at the first call, as one graph for every batch size above 1 (the events go in as one
    ``(4, N)`` tensor, :func:`packed_decode_step`, with N marked dynamic; a whole state is stepped as the rows
    ``arange(N)`` of itself, so calls with and without ``state_indices`` share the graph). Dynamo compiles
    again for what the graph is specialised on: another dtype, a batch of one user, inference mode on or off,
    the number of torch threads, and the state's pool size P -- once: after a second P it is symbolic too (dynamo's automatic dynamic
    shapes; such a graph costs some 20 us more per call on a small CPU than one with a fixed P).

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
            return decode_step(*args, backend="cpu")
        try:
            if self._compiled is None:
                try:
                    self._compiled = _compile(packed_decode_step, self.options)
                except Exception as err:  # torch.compile itself refused (platform, Python version)
                    raise _CompileUnavailable(err) from err
            return self._compiled(*self._graph_arguments(args))
        except (_CompileUnavailable, *compile_failures()) as err:
            error = err.__cause__ if isinstance(err, _CompileUnavailable) else err
        out = decode_step(*args, backend="cpu")  # raises if the inputs were bad: compiling stays on
        self.failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        warnings.warn(f"FuXiLinear.compile_step: compiling the decode step failed ({self.failure[:500]}); decode "
                      f"steps run eagerly", RuntimeWarning, stacklevel=3)
        return out

    def _graph_arguments(self, args: tuple) -> tuple:
        """The arguments of :func:`packed_decode_step`: the events and the state rows (``arange(N)`` for a
        whole state) as one ``(4, N)`` int64 tensor whose N is marked dynamic (one graph for every batch size
        above 1, with or without ``state_indices``)."""
        operands, items, ts, qts, retention, temporal, positional, last, position, rows = args
        if rows is None:
            rows = self._all_rows(items.shape[0], items.device)
        events = torch.stack([items.long(), ts, qts, rows])
        torch._dynamo.maybe_mark_dynamic(events, 1)
        return operands, events, retention, temporal, positional, last, position

    def _all_rows(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, device)
        rows = self._arange.get(key)
        if rows is None:
            rows = self._arange[key] = torch.arange(n, device=device)
        return rows

    def __getstate__(self) -> Dict[str, Any]:  # a compiled callable does not pickle: compile again after loading
        return {"options": self.options, "failure": self.failure, "_compiled": None, "_arange": {}}


class _CompileUnavailable(Exception):
    """``torch.compile`` raised before compiling anything (carried as ``__cause__``)."""
