"""Prefill forward and backward for tiny heads (the temporal channel: 16 heads, K = 2, V = 8).

The general kernels put one head in a program and multiply on tensor cores, which need every dimension >= 16:
for K = 2, V = 8 that pads q/k 8x and v 2x, and builds a 64 x 64 decay tile (4096 exponentials) per chunk for
8 outputs per row. Here instead:

* ``HB`` heads per program, loaded as ``(BT, HB, K)`` / ``(BT, HB, V)`` tiles (a token's heads are
  contiguous, so each row is one contiguous run of ``HB * K`` or ``HB * V`` elements);
* every product is a broadcast multiply and a sum over the tiny axis on the CUDA cores (``q k^T`` is 2 FMAs
  per pair for K = 2), nothing is padded beyond the next power of two of K and V;
* short chunks (``BT = 16``): the decay tile is ``BT x BT`` per head, so about ``BT + 2`` exponentials
  (``exp2`` of log2-scaled decays) per token and head instead of 66, and the intra-chunk work per token
  (``~BT (2K + 2V)`` FMAs) stays small next to the inter-chunk work (``4 K V``).

Per chunk and head the math is the general kernels' (see :mod:`fuxi_linear.kernels.chunk_fwd` and
:mod:`fuxi_linear.kernels.chunk_bwd`): the same decay representation, work items, boundary states from
:mod:`fuxi_linear.kernels.segments` when a sequence is split, and per-token ``q . dq`` / ``k . dk`` scalars
for the decay gradient. Shapes inside: ``(BT, BT, HB)`` pair tiles, ``(HB, K, V)`` states.
"""
import triton
import triton.language as tl

from .common import (HEAD_DECAY, LOG2E, NO_DECAY, TOKEN_DECAY, add_boundary_state, cumulative_log2_decay, decay_diff,
                     decay_value, last_row, sequence_rows, token_row, work_item)

__all__ = ["small_heads_fwd_kernel", "small_heads_bwd_dq_kernel", "small_heads_bwd_dkv_kernel"]


@triton.jit
def _chunk_decay_heads(g_seq, t0, sg_t, sg_h, o_h, m_h, n_valid, BT: tl.constexpr, HB: tl.constexpr,
                       DECAY: tl.constexpr, ACC: tl.constexpr):
    """``(hi, lo)`` ``(BT, HB)`` and their last rows ``(HB,)`` of the chunk's cumulative log2-decay (as
    :func:`fuxi_linear.kernels.common.chunk_decay`, for HB heads at once)."""
    o_i = tl.arange(0, BT)
    m_t = o_i < n_valid
    if DECAY == TOKEN_DECAY:
        b_g = tl.load(g_seq + t0 * sg_t + o_i[:, None] * sg_t + o_h[None, :] * sg_h, mask=m_t[:, None] & m_h[None, :],
                      other=0.)
        hi, lo = cumulative_log2_decay(b_g, ACC)
    else:
        hi = tl.broadcast_to(tl.minimum(o_i + 1, n_valid).to(ACC)[:, None], [BT, HB])
        lo = tl.zeros([BT, HB], dtype=ACC)
    is_last = (o_i == BT - 1)[:, None]
    return hi, lo, last_row(hi, is_last), last_row(lo, is_last)


@triton.jit
def _work_head_block(H: tl.constexpr, HB: tl.constexpr):
    """``(w, o_h)`` of this program: program ``w * cdiv(H, HB) + b`` is head block ``b`` (heads ``o_h (HB,)``)
    of work item ``w`` (int64)."""
    NHB: tl.constexpr = (H + HB - 1) // HB
    pid = tl.program_id(0).to(tl.int64)
    return pid // NHB, (pid % NHB) * HB + tl.arange(0, HB)


@triton.jit
def _tile_indices_heads(o_h, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks of a head block's tiles: rows ``o_i``, key and value elements ``o_k``, ``o_v``, the
    masks of real heads ``m_h`` and elements ``m_k``, ``m_v``, the causal ``(BT, BT, 1)`` mask, and the
    offsets ``o_s`` / mask ``m_s`` of the ``(HB, BK, BV)`` states within one ``H * K * V`` block."""
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_h = o_h < H
    m_k = o_k < K
    m_v = o_v < V
    causal = (o_i[:, None] >= o_i[None, :])[:, :, None]
    o_s = o_h[:, None, None] * (K * V) + o_k[None, :, None] * V + o_v[None, None, :]
    m_s = m_h[:, None, None] & m_k[None, :, None] & m_v[None, None, :]
    return o_i, o_k, o_v, m_h, m_k, m_v, causal, o_s, m_s


@triton.jit
def _heads_log2_decay(g_gamma, o_h, m_h, HB: tl.constexpr, DECAY: tl.constexpr, ACC: tl.constexpr):
    """Per-head log-decays of heads ``o_h`` in log2 units ``(HB,)`` (``HEAD_DECAY``); zeros otherwise."""
    gamma2 = tl.zeros([HB], dtype=ACC)
    if DECAY == HEAD_DECAY:
        gamma2 = tl.load(g_gamma + o_h, mask=m_h, other=0.).to(ACC) * LOG2E
    return gamma2


@triton.jit
def _rows(base, t0, s_t, s_h, o_i, o_h, o_x, m_t, m_h, m_x):
    """Pointers and mask of a ``(BT, HB, X)`` tile: rows t0 + o_i, heads o_h, last-axis elements o_x."""
    p = base + t0 * s_t + o_i[:, None, None] * s_t + o_h[None, :, None] * s_h + o_x[None, None, :]
    return p, m_t[:, None, None] & m_h[None, :, None] & m_x[None, None, :]


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "so_b", "T", "L", "NS"])
def small_heads_fwd_kernel(
    q, k, v, g, g_gamma, h_in, o, h_out, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, so_b, so_t, so_h,
    scale, T, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, HB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, SPLIT: tl.constexpr,
):
    """Grid ``(n_work * cdiv(H, HB),)``, program ``w * cdiv(H, HB) + head block``. Arguments as
    :func:`fuxi_linear.kernels.chunk_fwd.decay_attn_fwd_kernel` (``BK, BV``: K, V padded to powers of two)."""
    w, o_h = _work_head_block(H, HB)
    ACC: tl.constexpr = h_out.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)

    o_i, o_k, o_v, m_h, m_k, m_v, causal, o_s, m_s = _tile_indices_heads(o_h, H, K, V, BT, BK, BV)
    gamma2 = _heads_log2_decay(g_gamma, o_h, m_h, HB, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t)
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t)
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t)
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t)
    p_o0 = sequence_rows(o, n, bos, so_b, so_t)
    b_s = add_boundary_state(tl.zeros([HB, BK, BV], dtype=ACC), h_in, w, n, o_s, m_s, H * K * V, SPLIT,
                             USE_H0)

    for t0 in range(t_begin, t_end, BT):
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        p, m = _rows(p_q0, t0, sq_t, sq_h, o_i, o_h, o_k, m_t, m_h, m_k)
        b_q = tl.load(p, mask=m, other=0.).to(ACC)
        p, m = _rows(p_k0, t0, sk_t, sk_h, o_i, o_h, o_k, m_t, m_h, m_k)
        b_k = tl.load(p, mask=m, other=0.).to(ACC)
        p, m_tv = _rows(p_v0, t0, sv_t, sv_h, o_i, o_h, o_v, m_t, m_h, m_v)
        b_v = tl.load(p, mask=m_tv, other=0.).to(ACC)

        b_a = tl.sum(b_q[:, None, :, :] * b_k[None, :, :, :], axis=3)  # (BT, BT, HB) q_i . k_j
        b_qs = b_q
        b_ks = b_k
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = _chunk_decay_heads(p_g0, t0, sg_t, sg_h, o_h, m_h, n_valid, BT, HB, DECAY, ACC)
            d_ij = decay_diff(hi[:, None, :], lo[:, None, :], hi[None, :, :], lo[None, :, :], gamma2[None, None, :],
                              DECAY)
            b_a = b_a * tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_qs = b_q * tl.exp2(decay_value(hi, lo, gamma2[None, :], DECAY))[:, :, None]
            b_ks = b_k * tl.exp2(decay_diff(hl[None, :], ll[None, :], hi, lo, gamma2[None, :], DECAY))[:, :, None]
        else:
            b_a = tl.where(causal, b_a, 0.)
        b_o = tl.sum(b_a[:, :, :, None] * b_v[None, :, :, :], axis=1)  # (BT, HB, V)
        b_o += tl.sum(b_qs[:, :, :, None] * b_s[None, :, :, :], axis=2)
        p, _ = _rows(p_o0, t0, so_t, so_h, o_i, o_h, o_v, m_t, m_h, m_v)
        tl.store(p, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)

        if DECAY != NO_DECAY:
            b_s = b_s * tl.exp2(decay_value(hl, ll, gamma2, DECAY))[:, None, None]
        b_s += tl.sum(b_ks[:, :, :, None] * b_v[:, :, None, :], axis=0)

    if not SPLIT:
        tl.store(h_out + n * (H * K * V) + o_s, b_s, mask=m_s)


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "sdo_b", "sdq_b", "T", "TT", "L", "NS"])
def small_heads_bwd_dq_kernel(
    q, k, v, g, g_gamma, do, h_in, dq, qdq, h_out, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, sdo_b, sdo_t, sdo_h,
    sdq_b, sdq_t, sdq_h,
    scale, T, TT, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, HB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC: tl.constexpr,
):
    """Grid as :func:`small_heads_fwd_kernel`; outputs as
    :func:`fuxi_linear.kernels.chunk_bwd.decay_attn_bwd_dq_kernel` (``qdq`` is ``(1, TT, H)``)."""
    w, o_h = _work_head_block(H, HB)
    ACC: tl.constexpr = dq.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)

    o_i, o_k, o_v, m_h, m_k, m_v, causal, o_s, m_s = _tile_indices_heads(o_h, H, K, V, BT, BK, BV)
    gamma2 = _heads_log2_decay(g_gamma, o_h, m_h, HB, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t)
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t)
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t)
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t)
    p_do0 = sequence_rows(do, n, bos, sdo_b, sdo_t)
    p_dq0 = sequence_rows(dq, n, bos, sdq_b, sdq_t)
    p_qdq0 = qdq  # None unless DECAY != NO_DECAY
    if DECAY != NO_DECAY:
        p_qdq0 = qdq + token_row(n, bos, T, IS_VARLEN) * H
    b_s = add_boundary_state(tl.zeros([HB, BK, BV], dtype=ACC), h_in, w, n, o_s, m_s, H * K * V, SPLIT,
                             USE_H0)

    for t0 in range(t_begin, t_end, BT):
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        p, m_tk = _rows(p_k0, t0, sk_t, sk_h, o_i, o_h, o_k, m_t, m_h, m_k)
        b_k = tl.load(p, mask=m_tk, other=0.).to(ACC)
        p, m_tv = _rows(p_v0, t0, sv_t, sv_h, o_i, o_h, o_v, m_t, m_h, m_v)
        b_v = tl.load(p, mask=m_tv, other=0.).to(ACC)
        p, _ = _rows(p_do0, t0, sdo_t, sdo_h, o_i, o_h, o_v, m_t, m_h, m_v)
        b_do = tl.load(p, mask=m_tv, other=0.).to(ACC)

        b_da = tl.sum(b_do[:, None, :, :] * b_v[None, :, :, :], axis=3)  # (BT, BT, HB) do_i . v_j
        b_dqs = tl.sum(b_do[:, :, None, :] * b_s[None, :, :, :], axis=3)  # (BT, HB, K) do S^T
        b_ks = b_k
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = _chunk_decay_heads(p_g0, t0, sg_t, sg_h, o_h, m_h, n_valid, BT, HB, DECAY, ACC)
            d_ij = decay_diff(hi[:, None, :], lo[:, None, :], hi[None, :, :], lo[None, :, :], gamma2[None, None, :],
                              DECAY)
            b_da = b_da * tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_dqs = b_dqs * tl.exp2(decay_value(hi, lo, gamma2[None, :], DECAY))[:, :, None]
        else:
            b_da = tl.where(causal, b_da, 0.)
        b_dq = (tl.sum(b_da[:, :, :, None] * b_k[None, :, :, :], axis=1) + b_dqs) * scale  # (BT, HB, K)
        p, _ = _rows(p_dq0, t0, sdq_t, sdq_h, o_i, o_h, o_k, m_t, m_h, m_k)
        if ATOMIC:
            tl.atomic_add(p, b_dq, mask=m_tk, sem="relaxed")
        else:
            tl.store(p, b_dq, mask=m_tk)
        if DECAY != NO_DECAY:
            p, _ = _rows(p_q0, t0, sq_t, sq_h, o_i, o_h, o_k, m_t, m_h, m_k)
            b_q = tl.load(p, mask=m_tk, other=0.).to(ACC)
            tl.store(p_qdq0 + (t0 + o_i)[:, None] * H + o_h[None, :], tl.sum(b_q * b_dq, axis=2),
                     mask=m_t[:, None] & m_h[None, :])
            b_s = b_s * tl.exp2(decay_value(hl, ll, gamma2, DECAY))[:, None, None]
            b_ks = b_k * tl.exp2(decay_diff(hl[None, :], ll[None, :], hi, lo, gamma2[None, :], DECAY))[:, :, None]
        b_s += tl.sum(b_ks[:, :, :, None] * b_v[:, :, None, :], axis=0)

    if STORE_FINAL:
        tl.store(h_out + n * (H * K * V) + o_s, b_s, mask=m_s)


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "sdo_b", "sdk_b", "sdv_b", "T", "TT", "L", "NS"])
def small_heads_bwd_dkv_kernel(
    q, k, v, g, g_gamma, do, dh_in, dk, dv, kdk, dh0, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, sdo_b, sdo_t, sdo_h,
    sdk_b, sdk_t, sdk_h, sdv_b, sdv_t, sdv_h,
    scale, T, TT, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, HB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_DHT: tl.constexpr, USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC: tl.constexpr,
):
    """Grid as :func:`small_heads_fwd_kernel`; outputs as
    :func:`fuxi_linear.kernels.chunk_bwd.decay_attn_bwd_dkv_kernel` (``kdk`` is ``(1, TT, H)``)."""
    w, o_h = _work_head_block(H, HB)
    ACC: tl.constexpr = dk.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)
    n_chunks = tl.cdiv(t_end - t_begin, BT)

    o_i, o_k, o_v, m_h, m_k, m_v, causal, o_s, m_s = _tile_indices_heads(o_h, H, K, V, BT, BK, BV)
    gamma2 = _heads_log2_decay(g_gamma, o_h, m_h, HB, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t)
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t)
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t)
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t)
    p_do0 = sequence_rows(do, n, bos, sdo_b, sdo_t)
    p_dk0 = sequence_rows(dk, n, bos, sdk_b, sdk_t)
    p_dv0 = sequence_rows(dv, n, bos, sdv_b, sdv_t)
    p_kdk0 = kdk  # None unless DECAY != NO_DECAY
    if DECAY != NO_DECAY:
        p_kdk0 = kdk + token_row(n, bos, T, IS_VARLEN) * H
    b_ds = add_boundary_state(tl.zeros([HB, BK, BV], dtype=ACC), dh_in, w, n, o_s, m_s, H * K * V, SPLIT,
                             USE_DHT)

    for i_r in range(0, n_chunks):
        t0 = t_begin + (n_chunks - 1 - i_r) * BT
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        p, m_tk = _rows(p_q0, t0, sq_t, sq_h, o_i, o_h, o_k, m_t, m_h, m_k)
        b_q = tl.load(p, mask=m_tk, other=0.).to(ACC)
        p, _ = _rows(p_k0, t0, sk_t, sk_h, o_i, o_h, o_k, m_t, m_h, m_k)
        b_k = tl.load(p, mask=m_tk, other=0.).to(ACC)
        p, m_tv = _rows(p_v0, t0, sv_t, sv_h, o_i, o_h, o_v, m_t, m_h, m_v)
        b_v = tl.load(p, mask=m_tv, other=0.).to(ACC)
        p, _ = _rows(p_do0, t0, sdo_t, sdo_h, o_i, o_h, o_v, m_t, m_h, m_v)
        b_do = tl.load(p, mask=m_tv, other=0.).to(ACC)

        b_da = tl.sum(b_do[:, None, :, :] * b_v[None, :, :, :], axis=3) * scale  # (BT, BT, HB) do_i . v_j
        b_a = tl.sum(b_q[:, None, :, :] * b_k[None, :, :, :], axis=3) * scale  # q_i . k_j
        b_qs = b_q
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = _chunk_decay_heads(p_g0, t0, sg_t, sg_h, o_h, m_h, n_valid, BT, HB, DECAY, ACC)
            d_ij = decay_diff(hi[:, None, :], lo[:, None, :], hi[None, :, :], lo[None, :, :], gamma2[None, None, :],
                              DECAY)
            b_m = tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_da = b_da * b_m
            b_a = b_a * b_m
        else:
            b_da = tl.where(causal, b_da, 0.)
            b_a = tl.where(causal, b_a, 0.)
        b_dk = tl.sum(b_da[:, :, :, None] * b_q[:, None, :, :], axis=0)  # (BT, HB, K): sum over rows i
        b_dv = tl.sum(b_a[:, :, :, None] * b_do[:, None, :, :], axis=0)  # (BT, HB, V)
        b_dk_s = tl.sum(b_v[:, :, None, :] * b_ds[None, :, :, :], axis=3)  # v dS^T
        b_dv_s = tl.sum(b_k[:, :, :, None] * b_ds[None, :, :, :], axis=2)  # k dS
        if DECAY != NO_DECAY:
            b_kd = tl.exp2(decay_diff(hl[None, :], ll[None, :], hi, lo, gamma2[None, :], DECAY))[:, :, None]
            b_dk += b_dk_s * b_kd
            b_dv += b_dv_s * b_kd
            b_qs = b_q * tl.exp2(decay_value(hi, lo, gamma2[None, :], DECAY))[:, :, None]
        else:
            b_dk += b_dk_s
            b_dv += b_dv_s
        p, _ = _rows(p_dk0, t0, sdk_t, sdk_h, o_i, o_h, o_k, m_t, m_h, m_k)
        if ATOMIC:
            tl.atomic_add(p, b_dk, mask=m_tk, sem="relaxed")
        else:
            tl.store(p, b_dk, mask=m_tk)
        p, _ = _rows(p_dv0, t0, sdv_t, sdv_h, o_i, o_h, o_v, m_t, m_h, m_v)
        tl.store(p, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        if DECAY != NO_DECAY:
            tl.store(p_kdk0 + (t0 + o_i)[:, None] * H + o_h[None, :], tl.sum(b_k * b_dk, axis=2),
                     mask=m_t[:, None] & m_h[None, :])
            b_ds = b_ds * tl.exp2(decay_value(hl, ll, gamma2, DECAY))[:, None, None]
        b_ds += scale * tl.sum(b_qs[:, :, :, None] * b_do[:, :, None, :], axis=0)

    if USE_H0 and not SPLIT:
        tl.store(dh0 + n * (H * K * V) + o_s, b_ds, mask=m_s)
