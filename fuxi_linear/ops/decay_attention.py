"""Public entry points of the decay-attention operator, with backend dispatch.

``backend``:
  * ``"auto"`` — the Triton kernels when the tensors are on CUDA and Triton imports, otherwise the
    PyTorch reference (the CPU path); on CUDA the fallback warns once per process, with the import error;
  * ``"triton"`` — force the kernels (on a CPU this needs ``TRITON_INTERPRET=1`` set before Triton is
    first imported; it is slow but exact, and is how CI checks the kernels); raises ``RuntimeError`` with the
    import error when the kernels cannot be loaded;
  * ``"reference"`` — force the chunked PyTorch reference.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import torch

from .reference import chunk_decay_attention_reference, decay_attention_step_reference
from .validation import check_chunk_inputs, check_step_inputs

BACKENDS = ("auto", "triton", "reference")
#: The result of importing the Triton backend: not tried yet, None (it loads) or the exception it raised.
_NOT_TRIED = object()
_TRITON_IMPORT_RESULT: object = _NOT_TRIED
#: Set once the "auto" fallback on CUDA has warned, so a process warns once, not once per call.
_FALLBACK_WARNED = False


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
    """Map ``backend`` to ``"triton"`` or ``"reference"`` for tensors on ``device``.

    On CUDA a missing backend is never silent: ``"triton"`` raises ``RuntimeError`` carrying the import
    error, and ``"auto"`` warns (``RuntimeWarning``, once per process) that it runs the PyTorch reference.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    global _FALLBACK_WARNED
    if backend == "reference" or (backend == "auto" and not _is_cuda(device)):
        return "reference"
    err = _triton_import_error()
    if backend == "auto":
        if err is None:
            return "triton"
        if not _FALLBACK_WARNED:
            _FALLBACK_WARNED = True
            warnings.warn(
                "backend='auto' on CUDA falls back to the PyTorch reference (much slower) because the Triton "
                f"kernels cannot be loaded: {_describe(err)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"
    if err is not None:
        raise RuntimeError(
            f"backend='triton' was requested but the Triton kernels cannot be loaded: {_describe(err)}"
        ) from err
    if not _is_cuda(device) and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 (set before importing triton)"
        )
    return backend


def chunk_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal scalar-decay linear attention over whole sequences (prefill), SPEC §1.

    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``.

    Args:
        q, k: ``(B, T, H, K)`` float16/bfloat16/float32/float64; batch size 1 shares q/k with every sequence.
        v: ``(B, T, H, V)``, same dtype as q.
        g: optional per-token log-decay ``(B, T, H)`` (<= 0); or g_gamma: per-head log-decay ``(H,)``.
        scale: multiplies the output (FuXi uses 1.0).
        initial_state: optional ``(N, H, K, V)``; N = B, or the number of packed sequences.
        output_final_state: also return the state after each sequence's last token.
        cu_seqlens: optional ``(N+1,)`` int offsets of packed sequences (then B must be 1).
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.
    Returns:
        ``o: (B, T, H, V)`` in v's dtype, and ``final_state: (N, H, K, V)`` float32 (float64 for float64
        input) or None.
    """
    backend = resolve_backend(backend, v.device if isinstance(v, torch.Tensor) else torch.device("cpu"))
    if backend == "triton":
        check_chunk_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
        from .triton_decay_attention import chunk_decay_attention_triton

        return chunk_decay_attention_triton(
            q, k, v, g=g, g_gamma=g_gamma, scale=float(scale), initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    # The reference computes half inputs in float32, as the kernels accumulate in float32; an enclosing autocast
    # would run its products in bf16 and round the states, so it is switched off here.
    with torch.autocast(v.device.type if isinstance(v, torch.Tensor) else "cpu", enabled=False):
        return chunk_decay_attention_reference(
            q, k, v, g=g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )


def decay_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    backend: str = "auto",
    state_indices: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decode step per sequence: ``S <- exp(g) S + k^T v``, ``o = scale * q S``.

    Args:
        q, k: ``(N, H, K)``; v: ``(N, H, V)``; g: ``(N, H)`` or g_gamma: ``(H,)`` log-decays (or neither).
        state: float32 ``(N, H, K, V)``, or a pool ``(P, H, K, V)`` addressed by ``state_indices: (N,)``.
    Returns:
        ``(o: (N, H, V) in v's dtype, state)``: ``state`` is advanced in place and returned.
    """
    backend = resolve_backend(backend, v.device if isinstance(v, torch.Tensor) else torch.device("cpu"))
    if backend == "triton":
        check_step_inputs(q, k, v, state, g, g_gamma, scale, state_indices)
        from .triton_decay_attention import decay_attention_step_triton

        return decay_attention_step_triton(
            q, k, v, state, g=g, g_gamma=g_gamma, scale=float(scale), state_indices=state_indices
        )
    return decay_attention_step_reference(
        q, k, v, state, g=g, g_gamma=g_gamma, scale=scale, state_indices=state_indices
    )
