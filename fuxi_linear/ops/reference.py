"""Pure-PyTorch reference of scalar-decay linear attention (SPEC §1), readable as the math.

Per sequence and head, with log-decay ``g_t <= 0``::

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        (S_{-1} = initial state or 0, S_t in R^{K x V})
    o_t = scale * q_t S_t

Three forms compute the same thing and are tested against each other in float64:

* :func:`recurrent_decay_attention` — the recurrence above, one token at a time (the definition);
* :func:`parallel_decay_attention` — ``o_t = scale * sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s`` with
  ``G = cumsum(g)``, a masked T x T matrix (quadratic memory, for tests);
* :func:`chunk_decay_attention_reference` — the chunked form used as the CPU path, computed through a
  :class:`~fuxi_linear.ops.decay_plan.DecayAttentionPlan` (all chunks at once; one chunk is the parallel form).

Layout (the flash-linear-attention layout): ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)``, ``g: (B, T, H)``,
``g_gamma: (H,)``, states ``(N, H, K, V)`` in float32 (float64 for float64 inputs). ``q`` and ``k`` may have
batch size 1 while ``v`` has B: they are then shared by every sequence (the positional channel) and their
gradient is summed over the batch by autograd. Packed variable-length input: ``B = 1`` with
``cu_seqlens: (N+1,)``; the N sequences are independent and each has its own state.

Half-precision inputs are computed in float32; outputs come back in the input dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .decay_plan import Output, prepare_decay_attention
from .dtypes import compute_dtype
from ..utils import check_int
from .validation import check_chunk_inputs, check_step_inputs

__all__ = [
    "recurrent_decay_attention",
    "parallel_decay_attention",
    "chunk_decay_attention_reference",
    "decay_attention_step_reference",
]



def _prepare(q, k, v, g, g_gamma, initial_state, cu_seqlens, dense_decay=True):
    """Common normalisation: compute dtype, per-token log-decay, packed -> padded.

    Returns padded ``q, k: (N, T, H, K)``, ``v: (N, T, H, V)``, ``g``, ``g_gamma``, ``h0`` and, when packed,
    the ``(seq_index, pos_index)`` pair that maps the packed rows back and the sequence lengths ``(N,)``
    (else None, None). ``dense_decay`` (the recurrent and parallel forms): q/k are broadcast to the batch and
    ``g`` is always a tensor ``(N or 1, T, H)`` (``g_gamma`` None); otherwise shared q/k keep batch 1 and a
    per-head or absent decay stays as it is.
    """
    B, T, H, _ = v.shape
    cdt = compute_dtype(v.dtype)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    if g is not None:
        g = g.to(cdt)
    if g_gamma is not None:
        g_gamma = g_gamma.to(cdt)
    if dense_decay:
        # A decay shared by all sequences keeps batch size 1, so the decay tensors are built once, not per sequence.
        if g is None:
            g = g_gamma.view(1, 1, H).expand(1, T, H) if g_gamma is not None else v.new_zeros(1, T, H)
        g_gamma = None
        if q.shape[0] != B:  # shared q/k: broadcast as a view, autograd sums the gradient over the batch
            q = q.expand(B, *q.shape[1:])
            k = k.expand(B, *k.shape[1:])
    h0 = initial_state.to(cdt) if initial_state is not None else None
    if cu_seqlens is None:
        return q, k, v, g, g_gamma, h0, None, None
    # Pad each packed segment into its own row; padding is k = v = 0 and g = 0 (decay 1), so a row's state
    # after its padding equals its state at its last real token.
    cu = cu_seqlens.to(device=v.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    N, Tmax = lengths.numel(), int(lengths.max())
    seq_index = torch.repeat_interleave(torch.arange(N, device=v.device), lengths)
    pos_index = torch.arange(T, device=v.device) - cu[:-1][seq_index]

    def pad(x):
        if x is None:
            return None
        out = x.new_zeros(N, Tmax, *x.shape[2:])
        return out.index_put((seq_index, pos_index), x[0])

    return pad(q), pad(k), pad(v), pad(g), g_gamma, h0, (seq_index, pos_index), lengths


def _finish(o, final_state, index, out_dtype, output_final_state) -> Output:
    if index is not None:
        o = o[index].unsqueeze(0)
    o = o.to(out_dtype)
    return o, (final_state if output_final_state else None)


def recurrent_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Output:
    """The recurrence ``S_t = exp(g_t) S_{t-1} + k_t^T v_t; o_t = scale q_t S_t``, one token per step.

    Shapes as in the module docstring; returns ``(o: like v, final_state: (N, H, K, V) or None)``.
    """
    check_chunk_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    out_dtype = v.dtype
    q, k, v, g, _, h0, index, _ = _prepare(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    N, T, H, K = q.shape
    S = h0 if h0 is not None else q.new_zeros(N, H, K, v.shape[-1])
    outputs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(scale * torch.einsum("nhk,nhkv->nhv", q[:, t], S))
    o = torch.stack(outputs, dim=1)
    return _finish(o, S, index, out_dtype, output_final_state)


def parallel_decay_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Output:
    """``o_t = scale * (sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) q_t S_init)``, ``G = cumsum(g)``.

    Quadratic in T; shapes as in the module docstring.
    """
    check_chunk_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    out_dtype = v.dtype
    q, k, v, g, _, h0, index, _ = _prepare(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    T = q.shape[1]
    G = g.cumsum(1).transpose(1, 2)  # (N, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    # exponents of masked pairs are replaced before exp, so they can neither overflow nor leak a gradient
    diff = torch.where(causal, G[..., :, None] - G[..., None, :], torch.full_like(G[..., :1, None], -float("inf")))
    A = torch.einsum("nthk,nshk->nhts", q, k) * torch.exp(diff)
    o = torch.einsum("nhts,nshv->nthv", A, v)
    k_to_end = k * torch.exp(G[..., -1:] - G).transpose(1, 2)[..., None]
    S = torch.einsum("nshk,nshv->nhkv", k_to_end, v)
    if h0 is not None:
        o = o + torch.einsum("nthk,nhkv->nthv", q * torch.exp(G).transpose(1, 2)[..., None], h0)
        S = S + torch.exp(G[..., -1])[..., None, None] * h0
    return _finish(scale * o, S, index, out_dtype, output_final_state)


def chunk_decay_attention_reference(
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

    All chunks are computed at once (:class:`DecayAttentionPlan`); C = T is the parallel form. Every exponent
    is <= 0 for ``g <= 0``. Shapes as in the module docstring; differentiable by autograd.
    ``chunk_size=None`` picks C for speed on a CPU (:func:`auto_chunk_size`).
    """
    check_chunk_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    check_int("chunk_size", chunk_size, allow_none=True)
    out_dtype = v.dtype
    q, k, v, g, g_gamma, h0, index, lengths = _prepare(q, k, v, g, g_gamma, initial_state, cu_seqlens,
                                                       dense_decay=False)
    plan = prepare_decay_attention(q, k, g=g, g_gamma=g_gamma, scale=scale, lengths=lengths, chunk_size=chunk_size,
                                   final_state=output_final_state, initial_state=h0 is not None,
                                   value_dim=v.shape[-1])
    o, S = plan.apply(v, h0, output_final_state)
    return _finish(o, S, index, out_dtype, output_final_state)


def decay_attention_step_reference(
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
