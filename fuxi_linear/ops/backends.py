"""The operator's backends and how a call picks one.

``backend``:
  * ``"auto"`` — the Triton kernels when the tensors are on CUDA and Triton imports, otherwise the CPU path
    (PyTorch, :mod:`fuxi_linear.ops.cpu_decay_attention`); on CUDA the fallback warns once per process, with
    the import error;
  * ``"triton"`` — force the kernels (on a CPU this needs ``TRITON_INTERPRET=1`` set before Triton is first
    imported; it is slow but exact, and is how CI checks the kernels); raises ``RuntimeError`` with the import
    error when the kernels cannot be loaded;
  * ``"cpu"`` — force the CPU path (PyTorch on any device: the optimised chunked form, not the readable
    definition, which is :func:`fuxi_linear.ops.recurrent_decay_attention`).

``"reference"`` is the CPU path's former name: still accepted, with a ``DeprecationWarning``.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

__all__ = ["BACKENDS", "DEPRECATED_BACKENDS", "check_backend", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "triton", "cpu")
#: Former backend names -> their names now (accepted with a DeprecationWarning).
DEPRECATED_BACKENDS = {"reference": "cpu"}
#: The result of importing the Triton backend: not tried yet, None (it loads) or the exception it raised.
_NOT_TRIED = object()
_TRITON_IMPORT_RESULT: object = _NOT_TRIED
#: Set once the "auto" fallback on CUDA has warned, so a process warns once, not once per call.
_FALLBACK_WARNED = False


def check_backend(backend: object, stacklevel: int = 2) -> str:
    """``backend`` as one of :data:`BACKENDS`; a deprecated name is mapped to its new one with a
    ``DeprecationWarning`` (``stacklevel`` as :func:`warnings.warn`'s, counted from the caller); anything else
    is a ``ValueError``."""
    if isinstance(backend, str) and backend in DEPRECATED_BACKENDS:
        new = DEPRECATED_BACKENDS[backend]
        warnings.warn(f"backend={backend!r} is deprecated: it is the CPU path, now named backend={new!r}",
                      DeprecationWarning, stacklevel=stacklevel + 1)
        return new
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _triton_import_error() -> Optional[BaseException]:
    """The exception that importing the Triton backend raised, or None when it loads.

    Cached: a failed import is not retried on every call (the fallback path would pay for it each time).
    """
    global _TRITON_IMPORT_RESULT
    if _TRITON_IMPORT_RESULT is _NOT_TRIED:
        try:
            from . import triton_decay_attention  # noqa: F401
        except Exception as err:  # ImportError, or Triton failing to find a driver on a machine without a GPU
            _TRITON_IMPORT_RESULT = err
        else:
            _TRITON_IMPORT_RESULT = None
    return _TRITON_IMPORT_RESULT


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def triton_available() -> bool:
    """True when the Triton backend can run here (Triton imports and the kernels module loads)."""
    return _triton_import_error() is None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to ``"triton"`` or ``"cpu"`` for tensors on ``device``.

    On CUDA a missing backend is never silent: ``"triton"`` raises ``RuntimeError`` carrying the import
    error, and ``"auto"`` warns (``RuntimeWarning``, once per process) that it runs the CPU path.
    Warnings point at the caller of the function that called this one (the public operator functions).
    """
    backend = check_backend(backend, stacklevel=3)
    global _FALLBACK_WARNED
    if backend == "cpu" or (backend == "auto" and not _is_cuda(device)):
        return "cpu"
    err = _triton_import_error()
    if backend == "auto":
        if err is None:
            return "triton"
        if not _FALLBACK_WARNED:
            _FALLBACK_WARNED = True
            warnings.warn(
                "backend='auto' on CUDA falls back to the PyTorch CPU path (much slower) because the Triton "
                f"kernels cannot be loaded: {_describe(err)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return "cpu"
    if err is not None:
        raise RuntimeError(
            f"backend='triton' was requested but the Triton kernels cannot be loaded: {_describe(err)}"
        ) from err
    if not _is_cuda(device) and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 (set before importing triton)"
        )
    return backend
