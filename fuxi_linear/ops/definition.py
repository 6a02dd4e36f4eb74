"""The readable definition of scalar-decay linear attention (SPEC §1), in PyTorch: the oracle of the tests.

Per sequence and head, with log-decay ``g_t <= 0``::

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        (S_{-1} = initial state or 0, S_t in R^{K x V})
    o_t = scale * q_t S_t

* :func:`recurrent_decay_attention` — the recurrence above, one token at a time: the definition;
* :func:`parallel_decay_attention` — the same sum written out, ``o_t = scale * sum_{s<=t} exp(G_t - G_s)
  (q_t . k_s) v_s`` with ``G = cumsum(g)``, a masked T x T matrix (quadratic memory, for tests).

Both are tested against each other and against scalar loops in float64. The fast forms are elsewhere: the CPU
path (:mod:`fuxi_linear.ops.cpu_decay_attention`, all chunks at once) and the Triton kernels.

Layout (the flash-linear-attention layout): ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)``, ``g: (B, T, H)``,
``g_gamma: (H,)``, states ``(N, H, K, V)`` in float32 (float64 for float64 inputs). ``q`` and ``k`` may have
batch size 1 while ``v`` has B: they are then shared by every sequence (the positional channel) and their
gradient is summed over the batch by autograd. Packed variable-length input: ``B = 1`` with
``cu_seqlens: (N+1,)``; the N sequences are independent and each has its own state.

Half-precision inputs are computed in float32; outputs come back in the input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .decay_plan import Output
from .padded_operands import pad_operands, unpad_output
from .validation import check_chunk_inputs

__all__ = ["recurrent_decay_attention", "parallel_decay_attention"]


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
    q, k, v, g, _, h0, index, _ = pad_operands(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    N, T, H, K = q.shape
    S = h0 if h0 is not None else q.new_zeros(N, H, K, v.shape[-1])
    outputs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(scale * torch.einsum("nhk,nhkv->nhv", q[:, t], S))
    o = torch.stack(outputs, dim=1)
    return unpad_output(o, S, index, out_dtype, output_final_state)


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
    q, k, v, g, _, h0, index, _ = pad_operands(q, k, v, g, g_gamma, initial_state, cu_seqlens)
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
    return unpad_output(scale * o, S, index, out_dtype, output_final_state)
