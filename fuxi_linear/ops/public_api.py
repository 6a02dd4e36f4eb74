"""The operator's public functions: :func:`chunk_decay_attention` (prefill, differentiable) and
:func:`decay_attention_step` (one decode step, in place). Each picks a backend (:mod:`fuxi_linear.ops.backends`)
and hands the call to it: the Triton kernels (:mod:`fuxi_linear.ops.triton_decay_attention`, inputs validated
here first) or the CPU path (:mod:`fuxi_linear.ops.cpu_decay_attention`, which validates its own).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .backends import resolve_backend
from .cpu_decay_attention import chunk_decay_attention_cpu, decay_attention_step_cpu
from .validation import check_chunk_inputs, check_step_inputs

__all__ = ["chunk_decay_attention", "decay_attention_step"]


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
        backend: ``"auto"``, ``"triton"`` or ``"cpu"`` (:mod:`fuxi_linear.ops.backends`).
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
    # The CPU path computes half inputs in float32, as the kernels accumulate in float32; an enclosing autocast
    # would run its products in bf16 and round the states, so it is switched off here.
    with torch.autocast(v.device.type if isinstance(v, torch.Tensor) else "cpu", enabled=False):
        return chunk_decay_attention_cpu(
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
    return decay_attention_step_cpu(
        q, k, v, state, g=g, g_gamma=g_gamma, scale=scale, state_indices=state_indices
    )
