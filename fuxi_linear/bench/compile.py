"""The compiled regime of the benchmark: every model's prefill and decode through ``torch.compile``.

* decode: each model's own ``compile_step()`` (:meth:`fuxi_linear.FuXiLinear.compile_step`,
  :meth:`fuxi_linear.models.baselines.SequentialRecommenderBase.compile_step`): one inductor graph per model for every
  history length;
* prefill: ``torch.compile(model.prefill)`` (:class:`CompiledPrefill`), one graph per length (its input
  checks read values on the host, so they stay eager, before the graph).

Compiling happens in an untimed call before any timing (:func:`prime`), whose outputs are then compared
with the eager call's (:func:`disagreement`); a model whose compile fails, or whose compiled call computes
something else, is reported as failed and not timed, never timed eagerly in its place. While a compiled run is on,
:func:`compile_config` raises dynamo's recompile limit (each length compiles its own prefill graph) and makes
hitting it an error rather than a silent fall back to eager code.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple

import torch

from ..decoding.compiled_step import compile_failures

#: Graphs dynamo may compile per function before it refuses (each benchmarked length compiles a prefill graph).
RECOMPILE_LIMIT = 64


def failure_types() -> Tuple[type, ...]:
    """Exceptions that mean "compiling failed" (not a bad input): :func:`fuxi_linear.decoding.compiled_step.
    compile_failures` and dynamo's recompile-limit error."""
    extra: tuple = ()
    try:
        from torch._dynamo.exc import FailOnRecompileLimitHit

        extra = (FailOnRecompileLimitHit,)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(compile_failures()) + extra


@contextlib.contextmanager
def compile_config(enabled: bool) -> Iterator[None]:
    """Dynamo settings of a compiled run: a recompile limit above the lengths of a run, and an error (rather
    than eager code) when it is hit. Nothing changes when ``enabled`` is False."""
    if not enabled:
        yield
        return
    import torch._dynamo.config as config

    patch = {"recompile_limit": RECOMPILE_LIMIT} if hasattr(config, "recompile_limit") else \
        {"cache_size_limit": RECOMPILE_LIMIT}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        patch["fail_on_recompile_limit_hit"] = True
    with config.patch(**patch), warnings.catch_warnings():
        # FuXi-Linear's CPU path builds its constant index tensors through functools.lru_cache'd helpers of
        # sizes, device and dtype: dynamo traces the helper itself, which is what a graph needs, and says so
        # once per helper; not something a benchmark's reader can act on
        warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a `functools.lru_cache`")
        yield


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (to see what a call compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledPrefill:
    """``model.prefill`` through ``torch.compile`` (inductor, default options): called as
    ``fn(*history, **kwargs)`` like ``model.prefill``. Graph breaks are allowed (the input checks read values
    on the host). Every length compiles its own static graph (``dynamic=False``): left to dynamo, the second
    length compiles a graph with a symbolic T instead, whose generic code ran SASRec's prefill at T=256 3.6x
    slower than the static graph (22 vs 6 ms; CPU, 1 thread) -- and slower than eager."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._compiled = torch.compile(model.prefill, dynamic=False)

    def __call__(self, *args: Any, **kwargs: Any):
        return self._compiled(*args, **kwargs)


@dataclass
class CompileRecord:
    """What an untimed first call compiled: wall seconds, graphs compiled, and why it failed (None: it did
    not)."""

    seconds: float
    graphs: int
    failure: Optional[str] = None


def prime(call: Callable[[], Any], decode_model: Optional[torch.nn.Module] = None) -> CompileRecord:
    """Run ``call`` once, untimed, so that what it compiles is compiled before the timing.

    A compile failure (:func:`failure_types`) is returned in the record, not raised; other errors (a bad
    input, out of memory) propagate. ``decode_model``: a model whose ``compile_step`` falls back to eager steps
    with a warning instead of raising; its ``compiled_step.failure`` is read after the call.
    """
    before, start = graphs_compiled(), time.perf_counter()
    failure = None
    try:
        call()
    except failure_types() as err:
        failure = describe_failure(err)
    if failure is None and decode_model is not None:
        failure = step_compile_failure(decode_model)
    return CompileRecord(seconds=time.perf_counter() - start, graphs=graphs_compiled() - before, failure=failure)


#: How far a compiled call's outputs may be from the eager call's before the compile counts as failed (per
#: dtype: rtol, atol). Measured on a CPU, float32: prefill user vectors 9e-8 apart, states 2e-7 relative
#: (every model, T = 64 and 256); a miscompile is orders of magnitude off.
AGREEMENT = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-8, 1e-10), torch.bfloat16: (3e-2, 1e-2),
             torch.float16: (1e-2, 1e-3)}


def disagreement(compiled: Any, eager: Any) -> Optional[str]:
    """None when the tensors of two outputs (a tensor, a tuple, a state or cache: ``.tensors()``) agree --
    floating tensors within :data:`AGREEMENT` of their dtype, the others exactly; else what differs."""
    a, b = _tensors(compiled), _tensors(eager)
    if len(a) != len(b):
        return f"the compiled call returned {len(a)} tensors, the eager call {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"output tensor {i}: {x.dtype} {tuple(x.shape)} compiled, {y.dtype} {tuple(y.shape)} eager"
        if x.is_floating_point():
            rtol, atol = AGREEMENT.get(x.dtype, AGREEMENT[torch.float32])
            if not torch.allclose(x, y, rtol=rtol, atol=atol):
                worst = (x.double() - y.double()).abs().max().item()
                return f"output tensor {i} differs from the eager call's by up to {worst:.3g}"
        elif not torch.equal(x, y):
            return f"output tensor {i} ({x.dtype}) differs from the eager call's"
    return None


def _tensors(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "tensors"):
        return list(out.tensors())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def step_compile_failure(model: torch.nn.Module) -> Optional[str]:
    """Why ``model``'s compiled decode step runs eagerly (None while it runs compiled, or was never asked to)."""
    compiled = getattr(model, "compiled_step", None)
    return None if compiled is None or compiled.active else (compiled.failure or "compiling failed")


def describe_failure(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]
