"""Chunked prefill backward of scalar-decay linear attention, any head size (the forward's tiling).

Nothing from the forward is stored: two independent kernels recompute what they need, each walking the chunks
of one work item (sequence, or segment with its boundary state from :mod:`fuxi_linear.kernels.segments`):

* :func:`decay_attn_bwd_dq_kernel` walks forward carrying the state ``S`` (as the forward does) and produces
  ``dq = scale * ((do v^T * M) k + (do S^T) * exp(b))``;
* :func:`decay_attn_bwd_dkv_kernel` walks backward carrying ``dS`` (the gradient w.r.t. the state at the
  chunk's end) and produces ``dk = (scale do v^T * M)^T q + (v dS^T) * exp(b_last - b)``,
  ``dv = (scale q k^T * M)^T do + (k dS) * exp(b_last - b)`` and ``d initial_state``,

with ``M_ij = exp(b_i - b_j) [i >= j]``. The decay gradient needs no pass of its own: with ``B_t`` the
cumulative log-decay, ``dB_t = q_t . dq_t - k_t . dk_t`` (plus ``<dS_final, S_final>`` at a sequence's last
token) and ``dg_t = sum_{u >= t} dB_u``. The two kernels write the per-token dot products ``q_t . dq_t`` and
``k_t . dk_t`` (of their V-block; the terms are linear in the V-blocks, so partials add) while dq and dk are
still in registers; the launcher forms ``dB`` and its reverse cumulative sum per sequence afterwards in
float64 (``dB`` is a difference of nearly cancelling terms, summed over the whole sequence). No scratch is
read back inside a kernel, so there is no barrier.

dq and dk are float32 (the accumulation dtype). When several programs contribute to one row (q/k shared by
the batch, or more than one V-block: ``ATOMIC``) they are added with float atomics into a zeroed buffer
instead of being written as per-program partial sums; otherwise stored.
"""
import triton
import triton.language as tl

from .common import (NO_DECAY, TOKEN_DECAY, add_boundary_state, chunk_decay, decay_diff, decay_value, head_log2_decay,
                     sequence_rows, tf32_round, tile_indices, token_row, work_head_vblock, work_item)

__all__ = ["decay_attn_bwd_dq_kernel", "decay_attn_bwd_dkv_kernel"]


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "sdo_b", "sdq_b", "T", "TT", "L", "NS"])
def decay_attn_bwd_dq_kernel(
    q, k, v, g, g_gamma, do, h_in, dq, qdq, h_out, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, sdo_b, sdo_t, sdo_h,
    sdq_b, sdq_t, sdq_h,
    scale, T, TT, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid ``(n_work * H * NV,)`` as the forward. ``h_in``: initial state (``USE_H0``) or, with ``SPLIT``,
    the state entering each segment. Writes dq ``(Bq, T, H, K)`` float32 (added when ``ATOMIC``), the
    per-token ``q . dq`` of its V-block into ``qdq (NV, TT, H)`` float32 (with a decay; ``TT`` rows of v's
    token axis) and, with ``STORE_FINAL``, the final state into ``h_out (N, H, K, V)``."""
    NV: tl.constexpr = (V + BV - 1) // BV
    w, i_h, i_v = work_head_vblock(NV, H)
    ACC: tl.constexpr = dq.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)

    o_i, o_k, o_v, m_k, m_v, m_kv, causal = tile_indices(i_v, K, V, BT, BK, BV)
    gamma2 = head_log2_decay(g_gamma, i_h, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t) + i_h * sq_h
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t) + i_h * sk_h
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t) + i_h * sv_h
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t) + i_h * sg_h
    p_do0 = sequence_rows(do, n, bos, sdo_b, sdo_t) + i_h * sdo_h
    p_dq0 = sequence_rows(dq, n, bos, sdq_b, sdq_t) + i_h * sdq_h
    p_qdq0 = qdq  # None unless DECAY != NO_DECAY
    if DECAY != NO_DECAY:
        p_qdq0 = qdq + i_v * TT * H + token_row(n, bos, T, IS_VARLEN) * H + i_h
    o_kv = i_h * (K * V) + o_k[:, None] * V + o_v[None, :]
    b_s = add_boundary_state(tl.zeros([BK, BV], dtype=ACC), h_in, w, n, o_kv, m_kv, H * K * V, SPLIT, USE_H0)

    for t0 in range(t_begin, t_end, BT):
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tf32_round(tl.load(p_k0 + t0 * sk_t + o_i[:, None] * sk_t + o_k[None, :], mask=m_tk, other=0.),
                         PRECISION)
        b_v = tf32_round(tl.load(p_v0 + t0 * sv_t + o_i[:, None] * sv_t + o_v[None, :], mask=m_tv, other=0.),
                         PRECISION)
        b_do = tf32_round(tl.load(p_do0 + t0 * sdo_t + o_i[:, None] * sdo_t + o_v[None, :], mask=m_tv, other=0.),
                          PRECISION)

        b_da = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION).to(ACC)  # do_i . v_j
        b_dqs = tl.dot(b_do.to(ACC), tl.trans(tf32_round(b_s, PRECISION)), input_precision=PRECISION)  # do S^T
        b_ks = b_k.to(ACC)
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = chunk_decay(p_g0, t0, sg_t, n_valid, BT, DECAY, ACC)
            d_ij = decay_diff(hi[:, None], lo[:, None], hi[None, :], lo[None, :], gamma2, DECAY)
            b_da = b_da * tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_dqs = b_dqs * tl.exp2(decay_value(hi, lo, gamma2, DECAY))[:, None]
        else:
            b_da = tl.where(causal, b_da, 0.)
        b_dq = (tl.dot(tf32_round(b_da, PRECISION), b_ks, input_precision=PRECISION) + b_dqs) * scale
        p_dq = p_dq0 + t0 * sdq_t + o_i[:, None] * sdq_t + o_k[None, :]
        if ATOMIC:
            tl.atomic_add(p_dq, b_dq, mask=m_tk, sem="relaxed")
        else:
            tl.store(p_dq, b_dq, mask=m_tk)
        if DECAY != NO_DECAY:
            b_q = tl.load(p_q0 + t0 * sq_t + o_i[:, None] * sq_t + o_k[None, :], mask=m_tk, other=0.).to(ACC)
            tl.store(p_qdq0 + (t0 + o_i) * H, tl.sum(b_q * b_dq, axis=1), mask=m_t)
            b_s = b_s * tl.exp2(decay_value(hl, ll, gamma2, DECAY))
            b_ks = b_ks * tl.exp2(decay_diff(hl, ll, hi, lo, gamma2, DECAY))[:, None]
        b_s += tl.dot(tl.trans(tf32_round(b_ks, PRECISION)), b_v.to(ACC), input_precision=PRECISION)

    if STORE_FINAL:
        tl.store(h_out + n * (H * K * V) + o_kv, b_s, mask=m_kv)


@triton.jit(do_not_specialize=["sq_b", "sk_b", "sv_b", "sg_b", "sdo_b", "sdk_b", "sdv_b", "T", "TT", "L", "NS"])
def decay_attn_bwd_dkv_kernel(
    q, k, v, g, g_gamma, do, dh_in, dk, dv, kdk, dh0, cu_seqlens, seg_first, seg_seq,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h, sdo_b, sdo_t, sdo_h,
    sdk_b, sdk_t, sdk_h, sdv_b, sdv_t, sdv_h,
    scale, T, TT, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_DHT: tl.constexpr, USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid ``(n_work * H * NV,)`` as the forward. ``dh_in``: d final state ``(N, H, K, V)`` (``USE_DHT``) or,
    with ``SPLIT``, the gradient w.r.t. the state at the end of each segment. Writes dk ``(Bq, T, H, K)``
    float32 (added when ``ATOMIC``), dv ``(B, T, H, V)`` in v's dtype, the per-token ``k . dk`` of its
    V-block into ``kdk (NV, TT, H)`` (with a decay) and, unless ``SPLIT`` (the reverse segment scan has it
    then), ``d initial_state`` into ``dh0 (N, H, K, V)`` (``USE_H0``)."""
    NV: tl.constexpr = (V + BV - 1) // BV
    w, i_h, i_v = work_head_vblock(NV, H)
    ACC: tl.constexpr = dk.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, SPLIT)
    n_chunks = tl.cdiv(t_end - t_begin, BT)

    o_i, o_k, o_v, m_k, m_v, m_kv, causal = tile_indices(i_v, K, V, BT, BK, BV)
    gamma2 = head_log2_decay(g_gamma, i_h, DECAY, ACC)

    p_q0 = sequence_rows(q, n, bos, sq_b, sq_t) + i_h * sq_h
    p_k0 = sequence_rows(k, n, bos, sk_b, sk_t) + i_h * sk_h
    p_v0 = sequence_rows(v, n, bos, sv_b, sv_t) + i_h * sv_h
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t) + i_h * sg_h
    p_do0 = sequence_rows(do, n, bos, sdo_b, sdo_t) + i_h * sdo_h
    p_dk0 = sequence_rows(dk, n, bos, sdk_b, sdk_t) + i_h * sdk_h
    p_dv0 = sequence_rows(dv, n, bos, sdv_b, sdv_t) + i_h * sdv_h
    p_kdk0 = kdk  # None unless DECAY != NO_DECAY
    if DECAY != NO_DECAY:
        p_kdk0 = kdk + i_v * TT * H + token_row(n, bos, T, IS_VARLEN) * H + i_h
    o_kv = i_h * (K * V) + o_k[:, None] * V + o_v[None, :]
    b_ds = add_boundary_state(tl.zeros([BK, BV], dtype=ACC), dh_in, w, n, o_kv, m_kv, H * K * V, SPLIT, USE_DHT)

    for i_r in range(0, n_chunks):
        t0 = t_begin + (n_chunks - 1 - i_r) * BT
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tf32_round(tl.load(p_q0 + t0 * sq_t + o_i[:, None] * sq_t + o_k[None, :], mask=m_tk, other=0.),
                         PRECISION)
        b_k = tf32_round(tl.load(p_k0 + t0 * sk_t + o_i[:, None] * sk_t + o_k[None, :], mask=m_tk, other=0.),
                         PRECISION)
        b_v = tf32_round(tl.load(p_v0 + t0 * sv_t + o_i[:, None] * sv_t + o_v[None, :], mask=m_tv, other=0.),
                         PRECISION)
        b_do = tf32_round(tl.load(p_do0 + t0 * sdo_t + o_i[:, None] * sdo_t + o_v[None, :], mask=m_tv, other=0.),
                          PRECISION)
        b_qs = b_q.to(ACC)
        b_kc = b_k.to(ACC)
        # one (BT, BT) matrix at a time: dA -> dk, then A -> dv (keeps register pressure down)
        b_da = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION).to(ACC) * scale  # scale do_i . v_j
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = chunk_decay(p_g0, t0, sg_t, n_valid, BT, DECAY, ACC)
            d_ij = decay_diff(hi[:, None], lo[:, None], hi[None, :], lo[None, :], gamma2, DECAY)
            b_m = tl.exp2(tl.where(causal, d_ij, float("-inf")))
            b_da = b_da * b_m
        else:
            b_da = tl.where(causal, b_da, 0.)
        b_dk = tl.dot(tl.trans(tf32_round(b_da, PRECISION)), b_qs, input_precision=PRECISION)
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION).to(ACC) * scale  # scale q_i . k_j
        if DECAY != NO_DECAY:
            b_a = b_a * b_m
        else:
            b_a = tl.where(causal, b_a, 0.)
        b_dv = tl.dot(tl.trans(tf32_round(b_a, PRECISION)), b_do.to(ACC), input_precision=PRECISION)
        b_dst = tf32_round(b_ds, PRECISION)
        b_dk_s = tl.dot(b_v.to(ACC), tl.trans(b_dst), input_precision=PRECISION)
        b_dv_s = tl.dot(b_kc, b_dst, input_precision=PRECISION)
        if DECAY != NO_DECAY:
            b_kd = tl.exp2(decay_diff(hl, ll, hi, lo, gamma2, DECAY))
            b_dk += b_dk_s * b_kd[:, None]
            b_dv += b_dv_s * b_kd[:, None]
            b_qs = b_qs * tl.exp2(decay_value(hi, lo, gamma2, DECAY))[:, None]
        else:
            b_dk += b_dk_s
            b_dv += b_dv_s
        p_dk = p_dk0 + t0 * sdk_t + o_i[:, None] * sdk_t + o_k[None, :]
        if ATOMIC:
            tl.atomic_add(p_dk, b_dk, mask=m_tk, sem="relaxed")
        else:
            tl.store(p_dk, b_dk, mask=m_tk)
        tl.store(p_dv0 + t0 * sdv_t + o_i[:, None] * sdv_t + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)
        if DECAY != NO_DECAY:
            tl.store(p_kdk0 + (t0 + o_i) * H, tl.sum(b_kc * b_dk, axis=1), mask=m_t)
            b_ds = b_ds * tl.exp2(decay_value(hl, ll, gamma2, DECAY))
        b_ds += scale * tl.dot(tl.trans(tf32_round(b_qs, PRECISION)), b_do.to(ACC), input_precision=PRECISION)

    if USE_H0 and not SPLIT:
        tl.store(dh0 + n * (H * K * V) + o_kv, b_ds, mask=m_kv)
