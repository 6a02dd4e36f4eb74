"""Triton backend of the decay-attention operator (SPEC §1): ``torch.library`` custom operators, autograd and
the two public functions (imported by :mod:`fuxi_linear.ops.public_api`, which validates inputs first):

* :func:`chunk_decay_attention_triton` — chunked prefill, differentiable in q, k, v, g, g_gamma and
  initial_state;
* :func:`decay_attention_step_triton` — one decode step, state advanced in place.

Both go through custom operators (``torch.ops.fuxi_linear.decay_attention_fwd`` / ``_bwd`` / ``_step``)
registered with :func:`torch.library.custom_op`, with fake (meta) implementations and a registered
autograd formula, so ``torch.compile`` traces them as single graph nodes without a graph break. What each
operator launches, and the switches tests use to force a path (chunk length, split-T, kernel family), are in
:mod:`fuxi_linear.ops.triton_launchers`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .dtypes import compute_dtype
from .triton_launchers import bwd_impl, check_head_dims, fwd_impl, resolve_chunk_size, step_impl

__all__ = ["chunk_decay_attention_triton", "decay_attention_step_triton"]


# ----------------------------------------------------------------------------------------------------------
# Custom operators (torch.compile sees one node each) and autograd
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("fuxi_linear::decay_attention_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], g_gamma: Optional[torch.Tensor],
    scale: float, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(o, final_state)``; the final state is always computed (it costs one K x V write).
    ``chunk_size``: the resolved chunk length (``triton_launchers.resolve_chunk_size``; 0: each kernel's
    configured one), saved for the backward."""
    return fwd_impl(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size)


@_fwd_op.register_fake
def _(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size):
    B, T, H, V = v.shape
    N = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else B
    return torch.empty_like(v, memory_format=torch.contiguous_format), v.new_empty(
        (N, H, q.shape[-1], V), dtype=compute_dtype(v.dtype))


@torch.library.custom_op("fuxi_linear::decay_attention_bwd", mutates_args=())
def _bwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], g_gamma: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], do: torch.Tensor,
    dht: Optional[torch.Tensor], scale: float, chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(dq, dk, dv, dg, dg_gamma, d_initial_state)``; an absent input gets an empty tensor."""
    return bwd_impl(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size)


@_bwd_op.register_fake
def _(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size):
    def like(x):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    return (
        like(q), like(k), like(v),
        like(g) if g is not None else v.new_empty(0),
        like(g_gamma) if g_gamma is not None else v.new_empty(0),
        like(initial_state) if initial_state is not None else v.new_empty(0),
    )


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size = inputs
    ctx.save_for_backward(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    ctx.scale = scale
    ctx.chunk_size = chunk_size


def _fwd_backward(ctx, do, dht):
    q, k, v, g, g_gamma, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dg, dgamma, dh0 = _bwd_op(
        q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, ctx.scale, ctx.chunk_size
    )
    return (
        dq, dk, dv,
        dg if g is not None else None,
        dgamma if g_gamma is not None else None,
        None,
        dh0 if initial_state is not None else None,
        None, None,
    )


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


@torch.library.custom_op("fuxi_linear::decay_attention_step", mutates_args=("state",))
def _step_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, g: Optional[torch.Tensor],
    g_gamma: Optional[torch.Tensor], scale: float, state_indices: Optional[torch.Tensor],
) -> torch.Tensor:
    return step_impl(q, k, v, state, g, g_gamma, scale, state_indices)


@_step_op.register_fake
def _(q, k, v, state, g, g_gamma, scale, state_indices):
    return torch.empty_like(v)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------

def chunk_decay_attention_triton(
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
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunked prefill on the Triton kernels; same contract as ``fuxi_linear.ops.chunk_decay_attention``.

    Inputs are assumed validated (``fuxi_linear.ops.validation.check_chunk_inputs``). ``q, k: (B|1, T, H, K)``,
    ``v: (B, T, H, V)`` (any strides; unit stride on the last axis avoids a copy), ``g: (B, T, H)`` or
    ``g_gamma: (H,)``, ``initial_state: (N, H, K, V)``, ``cu_seqlens: (N+1,)`` with B = 1. ``K <= 128``, any V.
    ``chunk_size`` (power of two >= 16) defaults to ``triton_launchers.DEFAULT_CHUNK_SIZE`` (None: per-kernel
    configured lengths; :func:`~fuxi_linear.ops.triton_launchers.resolve_chunk_size`). Returns
    ``(o (B, T, H, V) contiguous in v's dtype, final_state (N, H, K, V) float32 | None)`` (float64 for float64
    input). Differentiable in q, k, v, g, g_gamma and initial_state.
    """
    chunk_size = resolve_chunk_size(chunk_size)
    check_head_dims(q.shape[-1])
    o, ht = _fwd_op(q, k, v, g, g_gamma, float(scale), initial_state, cu_seqlens, chunk_size)
    return o, (ht if output_final_state else None)


def decay_attention_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    state_indices: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decode step on the Triton kernel; same contract as ``fuxi_linear.ops.decay_attention_step``.

    ``q, k: (N, H, K)``, ``v: (N, H, V)``, ``g: (N, H)`` or ``g_gamma: (H,)``; ``state`` float32/float64
    ``(N, H, K, V)`` or a pool ``(P, H, K, V)`` with distinct ``state_indices: (N,)``. The state is advanced
    in place (any strides; nothing is allocated but the output) and returned with ``o: (N, H, V)``. Not
    differentiable.
    """
    o = _step_op(q, k, v, state, g, g_gamma, float(scale), state_indices)
    return o, state
