"""Chunked prefill forward of scalar-decay linear attention (SPEC §1), any head size (K <= 128, any V).

Per sequence and head ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``. One program per
(work item, head, V-block) walks the chunks of its sequence or segment in order with the ``K x BV`` state in
registers, so q, k, v are read once (q/k once per V-block: the V-blocks of one head are neighbouring programs
and share those reads in L2) and o written once; no chunk-state tensor goes to memory. Per chunk of ``BT``
rows with local cumulative decay ``b`` (:mod:`fuxi_linear.kernels.common`)::

    o     = scale * ((q k^T * exp(b_i - b_j) [i >= j]) v + (q * exp(b)) S)
    S_new = exp(b_last) S + (k * exp(b_last - b))^T v

Products run on ``tl.dot`` (tensor cores) with ``PRECISION`` for float32 operands; K and V are padded to
blocks of at least 16 with masked loads, padded rows/columns are never stored.
"""
import triton
import triton.language as tl

from .common import (NO_DECAY, TOKEN_DECAY, add_boundary_state, chunk_decay, decay_diff, decay_value, head_log2_decay,
                     sequence_rows, tf32_round, tile_indices, work_head_vblock, work_item)

__all__ = ["decay_attn_fwd_kernel"]


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "so_b", "T", "L", "NS"])
def decay_attn_fwd_kernel(
    q, k, v, g, g_gamma, h_in, o, h_out, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, so_b, so_t, so_h,
    scale, T, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid ``(n_work * H * NV,)``, program ``(w * H + h) * NV + v``.

    q, k: ``(Bq, T, H, K)``, v: ``(B, T, H, V)``, g: ``(B, T, H)`` (any row strides, unit last stride),
    g_gamma: ``(H,)``. ``h_in``: the initial state ``(N, H, K, V)`` (``USE_H0``), or with ``SPLIT`` the state
    entering each segment ``(n_work, H, K, V)``. Writes ``o`` rows of its tokens and, unless ``SPLIT`` (the
    segment scan has it then), the final state ``h_out (N, H, K, V)`` in the accumulation dtype.
    DECAY: a :class:`~fuxi_linear.kernels.decay_mode.DecayMode` value (``NO_DECAY``, ``TOKEN_DECAY``: ``g``,
    ``HEAD_DECAY``: ``g_gamma``).
    """
    NV: tl.constexpr = (V + BV - 1) // BV
    w, i_h, i_v = work_head_vblock(NV, H)
    ACC: tl.constexpr = h_out.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)

    o_i, o_k, o_v, m_k, m_v, m_kv, causal = tile_indices(i_v, K, V, BT, BK, BV)
    gamma2 = head_log2_decay(g_gamma, i_h, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t) + i_h * sq_h
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t) + i_h * sk_h
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t) + i_h * sv_h
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t) + i_h * sg_h
    p_o0 = sequence_rows(o, n, bos, so_b, so_t) + i_h * so_h
    o_kv = i_h * (K * V) + o_k[:, None] * V + o_v[None, :]

    b_s = add_boundary_state(tl.zeros([BK, BV], dtype=ACC), h_in, w, n, o_kv, m_kv, H * K * V, SPLIT, USE_H0)

    for t0 in range(t_begin, t_end, BT):
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tf32_round(tl.load(p_q0 + t0 * sq_t + o_i[:, None] * sq_t + o_k[None, :], mask=m_tk, other=0.),
                         PRECISION)
        b_k = tf32_round(tl.load(p_k0 + t0 * sk_t + o_i[:, None] * sk_t + o_k[None, :], mask=m_tk, other=0.),
                         PRECISION)
        b_v = tf32_round(tl.load(p_v0 + t0 * sv_t + o_i[:, None] * sv_t + o_v[None, :], mask=m_tv, other=0.)
                         .to(ACC), PRECISION)

        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION).to(ACC)  # (BT, BT) q_i . k_j
        b_qs = b_q.to(ACC)
        b_ks = b_k.to(ACC)
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = chunk_decay(p_g0, t0, sg_t, n_valid, BT, DECAY, ACC)
            d_ij = decay_diff(hi[:, None], lo[:, None], hi[None, :], lo[None, :], gamma2, DECAY)
            b_a = b_a * tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_qs = b_qs * tl.exp2(decay_value(hi, lo, gamma2, DECAY))[:, None]
            b_ks = b_ks * tl.exp2(decay_diff(hl, ll, hi, lo, gamma2, DECAY))[:, None]
        else:
            b_a = tl.where(causal, b_a, 0.)
        b_o = tl.dot(tf32_round(b_a, PRECISION), b_v, input_precision=PRECISION)
        b_o += tl.dot(tf32_round(b_qs, PRECISION), tf32_round(b_s, PRECISION), input_precision=PRECISION)
        tl.store(p_o0 + t0 * so_t + o_i[:, None] * so_t + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
                 mask=m_tv)

        if DECAY != NO_DECAY:
            b_s = b_s * tl.exp2(decay_value(hl, ll, gamma2, DECAY))
        b_s += tl.dot(tl.trans(tf32_round(b_ks, PRECISION)), b_v, input_precision=PRECISION)

    if not SPLIT:
        tl.store(h_out + n * (H * K * V) + o_kv, b_s, mask=m_kv)
