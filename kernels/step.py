"""One decode step of scalar-decay linear attention, the state advanced in place (SPEC §1).

``S <- exp(g) S + k^T v``, ``o = scale q S``; one program per (sequence, head, V-block), the state addressed
through its own strides (a pool row ``state_indices[n]``, or row n).
"""
import triton
import triton.language as tl

from .common import HEAD_DECAY, TOKEN_DECAY

__all__ = ["decay_attn_step_kernel"]


@triton.jit
def decay_attn_step_kernel(
    q, k, v, g, g_gamma, state, state_indices, o,
    scale, stride_sn, stride_sh, stride_sk, stride_sv,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_INDICES: tl.constexpr,
):
    """Grid ``(N*H*NV,)`` as the prefill: ``S <- exp(g) S + k^T v`` in place, ``o = scale q S``.

    q, k: ``(N, H, K)``, v, o: ``(N, H, V)``, g: ``(N, H)``, g_gamma: ``(H,)``, contiguous; ``state`` any
    strides, row ``state_indices[n]`` (or n). Rows named twice in ``state_indices`` race: pass distinct rows.
    """
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)
    i_nh = pid // NV
    i_v = pid % NV
    i_n = i_nh // H
    i_h = i_nh % H
    ACC: tl.constexpr = state.dtype.element_ty
    if USE_INDICES:
        row = tl.load(state_indices + i_n).to(tl.int64)
    else:
        row = i_n
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_s = state + row * stride_sn + i_h * stride_sh + o_k[:, None] * stride_sk + o_v[None, :] * stride_sv
    b_s = tl.load(p_s, mask=m_kv, other=0.).to(ACC)
    b_q = tl.load(q + i_nh * K + o_k, mask=m_k, other=0.).to(ACC)
    b_k = tl.load(k + i_nh * K + o_k, mask=m_k, other=0.).to(ACC)
    b_v = tl.load(v + i_nh * V + o_v, mask=m_v, other=0.).to(ACC)
    if DECAY == TOKEN_DECAY:
        b_s = b_s * tl.exp(tl.load(g + i_nh).to(ACC))
    elif DECAY == HEAD_DECAY:
        b_s = b_s * tl.exp(tl.load(g_gamma + i_h).to(ACC))
    b_s += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_q[:, None] * b_s, axis=0) * scale
    tl.store(p_s, b_s.to(state.dtype.element_ty), mask=m_kv)
    tl.store(o + i_nh * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
