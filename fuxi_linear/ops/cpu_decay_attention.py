"""The CPU path of the operator (``backend="cpu"``): PyTorch forms written for speed, the same contract as the
Triton kernels.

* :func:`chunk_decay_attention_cpu` — the chunked form, all chunks at once through a
  :class:`~fuxi_linear.ops.decay_plan.DecayAttentionPlan` (one chunk is the parallel form); differentiable by
  autograd;
* :func:`decay_attention_step_cpu` — one decode step, the state advanced in place.

The readable definition they are tested against is :mod:`fuxi_linear.ops.definition`. Layout and dtypes as
there: ``q, k: (B, T, H, K)`` (batch 1: shared), ``v: (B, T, H, V)``, ``g: (B, T, H)`` or ``g_gamma: (H,)``,
states ``(N, H, K, V)`` float32 (float64 for float64 inputs), packed input with ``cu_seqlens``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..utils import check_int
from .decay_plan import Output, prepare_decay_attention
from .padded_operands import pad_operands, unpad_output
from .validation import check_chunk_inputs, check_step_inputs

__all__ = ["chunk_decay_attention_cpu", "decay_attention_step_cpu"]


def chunk_decay_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> Output:
    """Chunked form (chunk length C = ``chunk_size``), with chunk-local cumulative decay ``b``::

        o_t    = scale * (sum_{s<=t in chunk} exp(b_t - b_s)(q_t . k_s) v_s + exp(b_t) q_t S_prev)
        S_next = exp(b_C) S_prev + sum_s exp(b_C - b_s) k_s^T v_s

    All chunks are computed at once (:class:`~fuxi_linear.ops.decay_plan.DecayAttentionPlan`); C = T is the
    parallel form. Every exponent is <= 0 for ``g <= 0``. Shapes as in the module docstring; differentiable by
    autograd.
    ``chunk_size=None`` picks C for speed on a CPU (:func:`~fuxi_linear.ops.decay_plan.auto_chunk_size`).
    """
    check_chunk_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    check_int("chunk_size", chunk_size, allow_none=True)
    out_dtype = v.dtype
    q, k, v, g, g_gamma, h0, index, lengths = pad_operands(q, k, v, g, g_gamma, initial_state, cu_seqlens,
                                                           dense_decay=False)
    plan = prepare_decay_attention(q, k, g=g, g_gamma=g_gamma, scale=scale, lengths=lengths, chunk_size=chunk_size,
                                   final_state=output_final_state, initial_state=h0 is not None,
                                   value_dim=v.shape[-1])
    o, S = plan.apply(v, h0, output_final_state)
    return unpad_output(o, S, index, out_dtype, output_final_state)


def decay_attention_step_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    state_indices: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decode step: ``S <- exp(g) S + k^T v; o = scale q S``, updating ``state`` in place.

    Args:
        q, k: ``(N, H, K)``; v: ``(N, H, V)``; g: ``(N, H)`` or g_gamma: ``(H,)`` log-decays.
        state: ``(N, H, K, V)`` float32/float64, or a pool ``(P, H, K, V)`` with ``state_indices: (N,)``
            naming the row of each sequence.
    Returns:
        ``(o: (N, H, V) in v.dtype, state)`` — the same ``state`` tensor, advanced in place (the state
        update is not differentiable; use the prefill forms for gradients).
    """
    check_step_inputs(q, k, v, state, g, g_gamma, scale, state_indices)
    cdt = state.dtype
    N, H, K = q.shape
    rows = state_indices.long() if state_indices is not None else None
    S = state[rows] if rows is not None else state
    if g is not None:
        decay = torch.exp(g.to(cdt))[..., None, None]
    elif g_gamma is not None:
        decay = torch.exp(g_gamma.to(cdt)).view(1, H, 1, 1)
    else:
        decay = 1.0
    S_new = decay * S + k.to(cdt)[..., :, None] * v.to(cdt)[..., None, :]
    o = scale * torch.einsum("nhk,nhkv->nhv", q.to(cdt), S_new)
    with torch.no_grad():
        if rows is not None:
            state[rows] = S_new.detach()
        else:
            state.copy_(S_new.detach())
    return o.to(v.dtype), state
