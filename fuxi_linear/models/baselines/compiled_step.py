"""The KV-cache baselines' decode step compiled by ``torch.compile`` for CPU caches, with an eager fallback.

A CPU decode step of a few users is mostly per-operation overhead (the embedding, every block's projections,
layer norms, the cache writes, the masked attention over M cached slots, the FFN): eagerly some tens to a
hundred ATen calls. :meth:`fuxi_linear.models.baselines.SequentialRecommenderBase.compile_step` runs
:meth:`~fuxi_linear.models.baselines.SequentialRecommenderBase.decode_step` as one inductor graph instead, for the
same reason and in the same way as FuXi-Linear's :mod:`fuxi_linear.decoding.compiled_step`, so that a benchmark can
time every model in one regime.

One graph serves every history length: the attended slots M, the cache's capacity C and the batch N are
symbolic sizes (marked dynamic before the first call), so a step whose M grows by one per event, or a cache of
another capacity, does not compile again.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ...decoding.compiled_step import compile_failures

__all__ = ["CompiledKVStep", "DEFAULT_OPTIONS"]

#: Inductor options: the C++ wrapper around the kernels (less Python per call), as FuXi-Linear's step.
DEFAULT_OPTIONS: Dict[str, Any] = {"cpp_wrapper": True}

#: Dimensions marked dynamic per argument of ``decode_step`` (item_ids, timestamps, query_timestamps, keys,
#: values, lengths, cached_timestamps, slots): N everywhere, C of the cache tensors, M of the slots.
_DYNAMIC_DIMS: Tuple[Tuple[int, ...], ...] = ((0,), (0,), (0,), (1, 3), (1, 3), (0,), (0, 1), (0,))


class CompiledKVStep:
    """Calls a baseline's ``decode_step`` (a bound method; same arguments) through ``torch.compile``.

    Compiled lazily at the first call as one graph (``fullgraph``: a graph break would bring the overhead
    back). If creating or compiling the graph fails with one of
    :func:`fuxi_linear.decoding.compiled_step.compile_failures`, the call runs eagerly; if that succeeds the failure was
    the compiler's: one ``RuntimeWarning`` says so and every later call runs eagerly (:attr:`failure` holds the
    reason, :attr:`active` turns False). If the eager call fails too, its error is raised and compiling stays
    on.
    """

    def __init__(self, options: Optional[Dict[str, Any]] = None):
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.failure: Optional[str] = None
        self._compiled: Optional[Callable] = None

    @property
    def active(self) -> bool:
        """True until compiling has failed."""
        return self.failure is None

    def __call__(self, step: Callable[..., torch.Tensor], args: tuple) -> torch.Tensor:
        if self.failure is not None:
            return step(*args)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(step, fullgraph=True, options=self.options or None)
            for tensor, dims in zip(args, _DYNAMIC_DIMS):
                if tensor is not None:
                    for d in dims:
                        torch._dynamo.maybe_mark_dynamic(tensor, d)
            return self._compiled(*args)
        except compile_failures() as err:
            error = err
        except Exception as err:  # torch.compile itself refused (platform, Python version) before tracing
            if self._compiled is not None:
                raise
            error = err
        out = step(*args)  # raises if the inputs were bad: compiling stays on
        self.failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        warnings.warn(f"compile_step: compiling the KV-cache decode step failed ({self.failure[:500]}); decode "
                      f"steps run eagerly", RuntimeWarning, stacklevel=3)
        return out

    def __getstate__(self) -> Dict[str, Any]:  # a compiled callable neither copies nor pickles: compile again
        return {"options": self.options, "failure": self.failure, "_compiled": None}
