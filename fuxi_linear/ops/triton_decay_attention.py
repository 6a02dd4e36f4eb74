"""Triton backend of the decay-attention operator (SPEC §1): launchers, autograd and ``torch.library`` ops.

Public functions (imported by :mod:`fuxi_linear.ops.decay_attention`, which validates inputs first):

* :func:`chunk_decay_attention_triton` — chunked prefill, differentiable in q, k, v, g, g_gamma and
  initial_state;
* :func:`decay_attention_step_triton` — one decode step, state advanced in place.

Both go through custom operators (``torch.ops.fuxi_linear.decay_attention_fwd`` / ``_bwd`` / ``_step``)
registered with :func:`torch.library.custom_op`, with fake (meta) implementations and a registered
autograd formula, so ``torch.compile`` traces them as single graph nodes without a graph break.

Kernels live in ``fuxi_linear.kernels.decay_attention`` (see its docstring for the design).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton

from fuxi_linear.kernels.decay_attention import (
    decay_attn_bwd_kernel,
    decay_attn_fwd_kernel,
    decay_attn_step_kernel,
)

__all__ = ["chunk_decay_attention_triton", "decay_attention_step_triton", "DEFAULT_CHUNK_SIZE"]

#: Chunk length used when ``chunk_size`` is not given (read at call time; tests lower it to keep the
#: Triton interpreter fast). Must be a power of two >= 16.
DEFAULT_CHUNK_SIZE = 64
#: Test hook: when True every output buffer is allocated filled with NaN, so an element a kernel fails to
#: write shows up as NaN instead of as whatever memory happened to hold.
POISON_OUTPUTS = False
#: ``tl.dot`` precision of float32 inputs: None follows ``torch.get_float32_matmul_precision()`` (see
#: :func:`_precision`); "ieee" forces exact float32 products (slow on a GPU: tests use it for 1e-5 checks).
FP32_DOT_PRECISION: Optional[str] = None

#: Largest q/k head dim: the whole K fits one block (K = 2 or 32 in FuXi); beyond 128 the chunk tiles of q and
#: k no longer fit an H100's shared memory with two pipeline stages. V is split into blocks: any V works.
MAX_K = 128
# Launch configuration: fixed (no autotuning, nothing keyed on B or T). Chosen from sm_90 compiles (register
# and shared-memory use); not yet tuned by measurement on a GPU.
_NUM_WARPS = 4
_NUM_STAGES = 2


def _new(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision of the products with float32 operands (ignored by the CPU interpreter).

    float64 input: "ieee" (fp64 products). float32 input: follows torch's global float32 matmul precision:
    "highest" (torch's default) gives "tf32x3" (three TF32 tensor-core products, about float32 accuracy; plain
    "ieee" float32 products of 64 x 64 tiles spill heavily on sm_90), "high"/"medium" give "tf32". Half inputs:
    the chunk matrices and the state are float32 and multiply bf16/fp16 data that TF32 holds exactly, so
    "tf32" (10-bit mantissa on the float32 side, float32 accumulation).
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        if FP32_DOT_PRECISION is not None:
            return FP32_DOT_PRECISION
        return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"


def _blocks(K: int, V: int) -> Tuple[int, int]:
    if K > MAX_K:
        raise ValueError(f"the Triton kernels support q/k head dims K <= {MAX_K}, got K={K}")
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    return BK, BV


def _decay_mode(g, g_gamma) -> int:
    return 1 if g is not None else (2 if g_gamma is not None else 0)


def _check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size!r}")
    return chunk_size


def _contig(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.contiguous()


# ----------------------------------------------------------------------------------------------------------
# Launchers (plain functions on real tensors)
# ----------------------------------------------------------------------------------------------------------

def _interpreted_bf16(v: torch.Tensor) -> bool:
    """bfloat16 under the Triton interpreter (CPU tensors), whose ``tl.dot`` multiplies bfloat16 bit patterns
    as integers (Triton 3.9): such calls run on float32 copies, which is exact for the products."""
    return v.dtype == torch.bfloat16 and v.device.type == "cpu"


def _fwd_impl(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size):
    if _interpreted_bf16(v):
        o, ht = _fwd_impl(q.float(), k.float(), v.float(), g, g_gamma, scale, initial_state, cu_seqlens, chunk_size)
        return o.to(v.dtype), ht
    q, k, v, g, g_gamma, initial_state = map(_contig, (q, k, v, g, g_gamma, initial_state))
    B, T, H, V = v.shape
    K = q.shape[-1]
    N = cu_seqlens.numel() - 1 if cu_seqlens is not None else B
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    o = _new((B, T, H, V), v.dtype, v.device)
    ht = _new((N, H, K, V), _acc_dtype(v.dtype), v.device)
    decay_attn_fwd_kernel[(N * H * NV,)](
        q, k, v, g, g_gamma, initial_state, o, ht, cu_seqlens,
        float(scale), T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV,
        DECAY=_decay_mode(g, g_gamma), USE_H0=initial_state is not None, IS_VARLEN=cu_seqlens is not None,
        SHARED_QK=q.shape[0] != B, PRECISION=_precision(v.dtype),
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )
    return o, ht


def _bwd_impl(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size):
    if _interpreted_bf16(v):
        grads = _bwd_impl(
            q.float(), k.float(), v.float(), g, g_gamma, initial_state, cu_seqlens, do.float(), dht, scale, chunk_size
        )
        return tuple(x.to(v.dtype) for x in grads[:3]) + grads[3:]
    q, k, v, g, g_gamma, initial_state, do, dht = map(_contig, (q, k, v, g, g_gamma, initial_state, do, dht))
    B, T, H, V = v.shape
    K = q.shape[-1]
    N = cu_seqlens.numel() - 1 if cu_seqlens is not None else B
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    acc = _acc_dtype(v.dtype)
    dev = v.device
    mode = _decay_mode(g, g_gamma)
    shared = q.shape[0] != B
    dq = _new((NV, B, T, H, K), acc, dev)
    dk = _new((NV, B, T, H, K), acc, dev)
    dv = _new((B, T, H, V), v.dtype, dev)
    # the decay gradients are accumulated in float64 (see the kernel's docstring)
    dg = _new((NV, B, T, H), torch.float64, dev) if mode == 1 else None
    dqq = _new((NV, B, T, H), torch.float64, dev) if mode > 0 else None  # scratch of the kernel
    dgamma = _new((N, H, NV), torch.float64, dev) if mode == 2 else None
    dh0 = _new((N, H, K, V), acc, dev) if initial_state is not None else None
    decay_attn_bwd_kernel[(N * H * NV,)](
        q, k, v, g, g_gamma, initial_state, do, dht,
        dq, dk, dv, dg, dgamma, dh0, dqq, cu_seqlens,
        float(scale), T, B * T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV,
        DECAY=mode, USE_H0=initial_state is not None, USE_DHT=dht is not None,
        IS_VARLEN=cu_seqlens is not None, SHARED_QK=shared, PRECISION=_precision(v.dtype),
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )
    # V-block partial sums (and the batch sum of shared q/k); free views when NV == 1 and not shared
    dq = dq.sum(0) if NV > 1 else dq[0]
    dk = dk.sum(0) if NV > 1 else dk[0]
    if shared:
        dq = dq.sum(0, keepdim=True)
        dk = dk.sum(0, keepdim=True)
    dq = dq.to(q.dtype)
    dk = dk.to(k.dtype)
    # absent inputs get distinct empty tensors (a custom op's outputs may not alias one another)
    dg_out = (dg.sum(0) if NV > 1 else dg[0]).to(g.dtype) if mode == 1 else v.new_empty(0)
    dgamma_out = dgamma.sum((0, 2)).to(g_gamma.dtype) if mode == 2 else v.new_empty(0)
    dh0_out = dh0.to(initial_state.dtype) if initial_state is not None else v.new_empty(0)
    return dq, dk, dv, dg_out, dgamma_out, dh0_out


def _step_impl(q, k, v, state, g, g_gamma, scale, state_indices):
    q, k, v, g, g_gamma, state_indices = map(_contig, (q, k, v, g, g_gamma, state_indices))
    N, H, V = v.shape
    K = q.shape[-1]
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    o = _new((N, H, V), v.dtype, v.device)
    decay_attn_step_kernel[(N * H * NV,)](
        q, k, v, g, g_gamma, state, state_indices, o,
        float(scale), *state.stride(),
        H=H, K=K, V=V, BK=BK, BV=BV, DECAY=_decay_mode(g, g_gamma),
        USE_INDICES=state_indices is not None, num_warps=1 if BK * BV <= 1024 else 4,
    )
    return o


# ----------------------------------------------------------------------------------------------------------
# Custom operators (torch.compile sees one node each) and autograd
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("fuxi_linear::decay_attention_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], g_gamma: Optional[torch.Tensor],
    scale: float, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(o, final_state)``; the final state is always computed (it costs one K x V write)."""
    return _fwd_impl(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size)


@_fwd_op.register_fake
def _(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size):
    B, T, H, V = v.shape
    N = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else B
    return torch.empty_like(v), v.new_empty((N, H, q.shape[-1], V), dtype=_acc_dtype(v.dtype))


@torch.library.custom_op("fuxi_linear::decay_attention_bwd", mutates_args=())
def _bwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], g_gamma: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], do: torch.Tensor,
    dht: Optional[torch.Tensor], scale: float, chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(dq, dk, dv, dg, dg_gamma, d_initial_state)``; an absent input gets an empty tensor."""
    return _bwd_impl(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size)


@_bwd_op.register_fake
def _(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size):
    return (
        torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
        torch.empty_like(g) if g is not None else v.new_empty(0),
        torch.empty_like(g_gamma) if g_gamma is not None else v.new_empty(0),
        torch.empty_like(initial_state) if initial_state is not None else v.new_empty(0),
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
    return _step_impl(q, k, v, state, g, g_gamma, scale, state_indices)


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
    ``v: (B, T, H, V)``, ``g: (B, T, H)`` or ``g_gamma: (H,)``, ``initial_state: (N, H, K, V)``,
    ``cu_seqlens: (N+1,)`` with B = 1. ``K <= 128``, any V. ``chunk_size`` (power of two >= 16) defaults to
    :data:`DEFAULT_CHUNK_SIZE`. Returns ``(o like v, final_state (N, H, K, V) float32 | None)`` (float64
    for float64 input). Differentiable in q, k, v, g, g_gamma and initial_state.
    """
    chunk_size = _check_chunk_size(DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size)
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
