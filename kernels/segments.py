"""Split-T kernels: long sequences cut into segments that separate programs process in parallel.

With ``E_s`` the state entering segment ``s`` (``E_0`` = initial state) and ``G_s`` the segment's total
log-decay, the recurrence over a whole segment is affine: ``E_{s+1} = exp(G_s) E_s + U_s`` where ``U_s`` is the
segment's state from a zero start. The gradient runs the mirror image backwards: with ``D_s`` the gradient
w.r.t. the state at the end of segment ``s`` (``D_last`` = d final state),
``D_{s-1} = exp(G_s) D_s + W_s`` with ``W_s = scale * sum_{t in s} exp(B_t - B_{start(s)-1}) q_t^T do_t``.

* :func:`segment_summary_kernel` — ``U_s`` (``REVERSE=False``: x = k, y = v) or ``W_s`` (``REVERSE=True``:
  x = q, y = do), plus ``G_s``, for every segment, in parallel. It reads the segment's x, y and g once.
* :func:`segment_scan_kernel` — one program per (sequence, head, V-block) runs the short recurrence over its
  segments (a few K x BV tiles each): ``E_s`` for every segment and the final state (forward), or ``D_s``
  and ``d initial_state`` (reverse).

The main kernels then run every segment as an independent program that starts from ``E_s`` (or ``D_s``).
Decays are in log2 units (``exp2``); see :mod:`fuxi_linear.kernels.common` for the decay representation.
"""
import triton
import triton.language as tl

from .common import (NO_DECAY, TOKEN_DECAY, chunk_decay, decay_diff, decay_value, head_log2_decay, sequence_rows,
                     tf32_round, tile_indices, work_head_vblock, work_item)

__all__ = ["segment_summary_kernel", "segment_scan_kernel"]


@triton.jit(do_not_specialize=["sx_b", "sy_b", "sg_b", "T", "L", "NS"])
def segment_summary_kernel(
    x, y, g, g_gamma, summary, seg_decay, cu_seqlens, seg_first, seg_seq,
    sx_b, sx_t, sx_h, sy_b, sy_t, sy_h, sg_b, sg_t, sg_h,
    scale, T, L, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid ``(n_work * H * NV,)``, program ``(w * H + h) * NV + v``.

    x: ``(., T, H, K)``, y: ``(., T, H, V)`` (strided rows); writes ``summary[w, h]`` ``(K, V)`` block in the
    accumulation dtype and, from V-block 0, ``seg_decay[w, h]`` = ``G_s`` in log2 units.
    """
    NV: tl.constexpr = (V + BV - 1) // BV
    w, i_h, i_v = work_head_vblock(NV, H)
    ACC: tl.constexpr = summary.dtype.element_ty
    n, bos, seq_len, t_begin, t_end = work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN, True)

    o_i, o_k, o_v, m_k, m_v, m_kv, _ = tile_indices(i_v, K, V, BT, BK, BV)
    gamma2 = head_log2_decay(g_gamma, i_h, DECAY, ACC)
    p_x0 = sequence_rows(x, n, bos, sx_b, sx_t) + i_h * sx_h
    p_y0 = sequence_rows(y, n, bos, sy_b, sy_t) + i_h * sy_h
    p_g0 = g  # g is None unless DECAY == TOKEN_DECAY
    if DECAY == TOKEN_DECAY:
        p_g0 = sequence_rows(g, n, bos, sg_b, sg_t) + i_h * sg_h

    b_u = tl.zeros([BK, BV], dtype=ACC)
    b_total = tl.sum(tl.zeros([BT], dtype=ACC), axis=0)
    n_chunks = tl.cdiv(t_end - t_begin, BT)
    for i_c in range(0, n_chunks):
        if REVERSE:
            t0 = t_begin + (n_chunks - 1 - i_c) * BT
        else:
            t0 = t_begin + i_c * BT
        n_valid = tl.minimum(t_end - t0, BT)
        m_t = o_i < n_valid
        b_x = tl.load(p_x0 + t0 * sx_t + o_i[:, None] * sx_t + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.).to(ACC)
        b_y = tl.load(p_y0 + t0 * sy_t + o_i[:, None] * sy_t + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.).to(ACC)
        if DECAY != NO_DECAY:
            hi, lo, hl, ll = chunk_decay(p_g0, t0, sg_t, n_valid, BT, DECAY, ACC)
            b_last = decay_value(hl, ll, gamma2, DECAY)
            b_total += b_last
            b_u = b_u * tl.exp2(b_last)
            if REVERSE:
                b_x = b_x * tl.exp2(decay_value(hi, lo, gamma2, DECAY))[:, None]
            else:
                b_x = b_x * tl.exp2(decay_diff(hl, ll, hi, lo, gamma2, DECAY))[:, None]
        b_u += tl.dot(tl.trans(tf32_round(b_x, PRECISION)), tf32_round(b_y, PRECISION), input_precision=PRECISION)
    if REVERSE:
        b_u = b_u * scale
    p_s = summary + w * (H * K * V) + i_h * (K * V) + o_k[:, None] * V + o_v[None, :]
    tl.store(p_s, b_u, mask=m_kv)
    if i_v == 0:
        tl.store(seg_decay + w * H + i_h, b_total)


@triton.jit(do_not_specialize=["NS"])
def segment_scan_kernel(
    summary, seg_decay, boundary, h_init, h_final, seg_first, NS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
):
    """Grid ``(N * H * NV,)``, program ``(n * H + h) * NV + v``: the recurrence over sequence n's segments.

    Forward: ``boundary[w] = E_s`` (state entering segment s), ``h_final[n] = E_NS`` (the final state).
    Reverse: ``boundary[w] = D_s`` (gradient w.r.t. the state at the end of s), ``h_final[n] = d E_0``.
    ``h_init[n]`` starts the recurrence (initial state / d final state) when ``USE_INIT``, else zeros.
    Every (K, V) tensor is indexed ``[row, h]`` and contiguous; ``seg_decay`` is ``(n_work, H)`` log2 units.
    """
    NV: tl.constexpr = (V + BV - 1) // BV
    n, i_h, i_v = work_head_vblock(NV, H)  # the grid of the main kernels, over sequences
    ACC: tl.constexpr = summary.dtype.element_ty
    if IS_VARLEN:
        w0 = tl.load(seg_first + n).to(tl.int64)
        count = tl.load(seg_first + n + 1).to(tl.int64) - w0
    else:
        w0 = n * NS
        count = n * 0 + NS
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    o_kv = i_h * (K * V) + o_k[:, None] * V + o_v[None, :]

    b_e = tl.zeros([BK, BV], dtype=ACC)
    if USE_INIT:
        b_e += tl.load(h_init + n * (H * K * V) + o_kv, mask=m_kv, other=0.).to(ACC)
    for i in range(0, count):
        if REVERSE:
            w = w0 + count - 1 - i
        else:
            w = w0 + i
        b_u = tl.load(summary + w * (H * K * V) + o_kv, mask=m_kv, other=0.)
        b_d = tl.load(seg_decay + w * H + i_h)
        tl.store(boundary + w * (H * K * V) + o_kv, b_e, mask=m_kv)
        b_e = b_e * tl.exp2(b_d) + b_u
    if STORE_FINAL:
        tl.store(h_final + n * (H * K * V) + o_kv, b_e, mask=m_kv)
