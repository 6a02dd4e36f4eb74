"""Triton kernels of scalar-decay linear attention (SPEC §1).

Per sequence and head::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t        o_t = scale * q_t S_t

One kernel family, three kernels, each parameterised by compile-time switches rather than copied:

* :func:`decay_attn_fwd_kernel` — chunked prefill forward. One program per (sequence, head, V-block) walks
  the chunks of its sequence in order and keeps the ``K x BV`` state in registers (K is tiny for FuXi: 2 or
  32), so v is read once (q, k once per V-block; the V-blocks of one head are neighbouring programs, so the
  repeats mostly hit L2) and o and the final state written once: no chunk-state tensor in memory.
* :func:`decay_attn_bwd_kernel` — prefill backward, same programs. A forward sweep recomputes the entering
  state of every chunk and produces dq (and ``q . dq`` per token for the decay gradient); a reverse sweep
  carries ``dS`` and produces dk, dv, the per-token decay gradient (a reverse cumulative sum carried across
  chunks), the per-head decay gradient and ``d initial_state``. Nothing from the forward is stored.
* :func:`decay_attn_step_kernel` — one decode step, state updated in place (optionally through a pool
  index), one program per (sequence, head, V-block).

Compile-time switches (``tl.constexpr``): the head sizes ``H, K, V`` and their padded blocks ``BK, BV`` (at
least 16, so ``tl.dot`` works for K=2 or V=8: padded rows/columns are loaded masked as 0 and never stored),
the chunk length ``BT``, ``DECAY`` (0 none, 1 per-token ``g``, 2 per-head ``g_gamma``), ``USE_H0``,
``USE_DHT``, ``IS_VARLEN`` (``cu_seqlens``), ``SHARED_QK`` (q/k of batch size 1 read with batch stride 0) and
``PRECISION`` (``tl.dot`` input precision of the float32 products). The sequence length ``T`` is a runtime
argument that is never specialised, so a new T never recompiles. Program ids and every base offset are int64.

Numerics: the chunk-local cumulative log-decay ``b`` is an fp32 (fp64 for fp64 input) cumulative sum, and
every exponent is a difference ``b_i - b_j`` with ``i >= j``, ``b_i`` or ``b_last - b_j``, so it is <= 0 for
``g <= 0``; the upper triangle is replaced by ``-inf`` with ``tl.where`` before ``exp``. Padding rows of a
partial chunk load ``g = 0``, so ``b`` at the chunk's last row equals ``b`` at its last valid token.
Accumulation is in the state's dtype (float32, or float64 for float64 input); the per-token scalars of the
decay gradient in float64. Products with float32 operands run at ``PRECISION`` ("tf32" for half inputs, with
the operands rounded to nearest TF32 first; "tf32x3" or "ieee" for float32; "ieee" for float64).
"""
import triton
import triton.language as tl

__all__ = ["decay_attn_fwd_kernel", "decay_attn_bwd_kernel", "decay_attn_step_kernel"]


@triton.jit
def _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr, SHARED_QK: tl.constexpr):
    """(first row of the sequence in v's token axis, first row in q/k's token axis, sequence length)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        bos_qk = bos
        seq_len = eos - bos
    else:
        bos = i_n * T
        seq_len = T + bos * 0  # int64 like bos
        if SHARED_QK:
            bos_qk = bos * 0
        else:
            bos_qk = bos
    return bos, bos_qk, seq_len


@triton.jit
def _chunk_log_decay(g, gamma, bos, i_h, t0, seq_len, H: tl.constexpr, BT: tl.constexpr, DECAY: tl.constexpr,
                     ACC: tl.constexpr):
    """Chunk-local inclusive cumulative log-decay ``b`` (BT,) and its value at the chunk's last row."""
    o_i = tl.arange(0, BT)
    m_t = (t0 + o_i) < seq_len
    if DECAY == 1:
        b_g = tl.load(g + (bos + t0 + o_i) * H + i_h, mask=m_t, other=0.).to(ACC)
    else:
        b_g = tl.where(m_t, gamma, 0.).to(ACC)
    b_b = tl.cumsum(b_g, axis=0)
    b_last = tl.sum(tl.where(o_i == BT - 1, b_b, 0.), axis=0)
    return b_b, b_last


@triton.jit
def _tf32(x, PRECISION: tl.constexpr):
    """Round a float32 ``tl.dot`` operand to TF32 (nearest) when the product runs in TF32: the tensor cores
    truncate, a bias that rounding first removes. Values already in TF32 (half-precision data) are unchanged."""
    if PRECISION == "tf32":
        x = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return x


@triton.jit(do_not_specialize=["T"])
def decay_attn_fwd_kernel(
    q, k, v, g, g_gamma, h0, o, ht, cu_seqlens,
    scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, IS_VARLEN: tl.constexpr, SHARED_QK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid ``(N*H*NV,)``, ``NV = cdiv(V, BV)``, program ``(n*H + h)*NV + v``: the V-blocks of one
    (sequence, head) are neighbours, so they run together and share q/k reads in L2 (and no grid axis limit).
    Writes the ``o`` rows of its (sequence, head, V-block) and ``ht``."""
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)
    i_nh = pid // NV
    i_v = pid % NV
    i_n = i_nh // H
    i_h = i_nh % H
    ACC: tl.constexpr = ht.dtype.element_ty
    bos, bos_qk, seq_len = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN, SHARED_QK)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    causal = o_i[:, None] >= o_i[None, :]
    gamma = 0.
    if DECAY == 2:
        gamma = tl.load(g_gamma + i_h).to(ACC)

    p_q0 = q + (bos_qk * H + i_h) * K
    p_k0 = k + (bos_qk * H + i_h) * K
    p_v0 = v + (bos * H + i_h) * V
    p_o0 = o + (bos * H + i_h) * V
    p_s = i_nh * K * V + o_k[:, None] * V + o_v[None, :]

    b_s = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        b_s += tl.load(h0 + p_s, mask=m_kv, other=0.).to(ACC)

    for i_c in range(0, tl.cdiv(seq_len, BT)):
        t0 = i_c * BT
        o_t = t0 + o_i
        m_t = o_t < seq_len
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(p_q0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)
        b_k = tl.load(p_k0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)
        b_v = tl.load(p_v0 + o_t[:, None] * (H * V) + o_v[None, :], mask=m_tv, other=0.).to(ACC)

        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION).to(ACC)  # (BT, BT) q_i . k_j
        b_qs = b_q.to(ACC)
        b_ks = b_k.to(ACC)
        if DECAY > 0:
            b_b, b_last = _chunk_log_decay(g, gamma, bos, i_h, t0, seq_len, H, BT, DECAY, ACC)
            b_a = b_a * tl.exp(tl.where(causal, b_b[:, None] - b_b[None, :], float("-inf")))
            b_qs = b_qs * tl.exp(b_b)[:, None]
            b_ks = b_ks * tl.exp(b_last - b_b)[:, None]
        else:
            b_a = tl.where(causal, b_a, 0.)
        b_o = tl.dot(_tf32(b_a, PRECISION), b_v, input_precision=PRECISION)
        b_o += tl.dot(_tf32(b_qs, PRECISION), _tf32(b_s, PRECISION), input_precision=PRECISION)
        tl.store(p_o0 + o_t[:, None] * (H * V) + o_v[None, :], (b_o * scale).to(o.dtype.element_ty), mask=m_tv)

        if DECAY > 0:
            b_s = b_s * tl.exp(b_last)
        b_s += tl.dot(tl.trans(_tf32(b_ks, PRECISION)), b_v, input_precision=PRECISION)

    tl.store(ht + p_s, b_s, mask=m_kv)


@triton.jit(do_not_specialize=["T", "TT"])
def decay_attn_bwd_kernel(
    q, k, v, g, g_gamma, h0, do, dht,
    dq, dk, dv, dg, dgamma, dh0, dqq, cu_seqlens,
    scale, T, TT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    SHARED_QK: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid ``(N*H*NV,)`` as the forward; ``TT`` = rows of v's token axis (B*T, or T packed).

    Outputs:
      dq, dk: ``(NV, TT, H, K)`` in the accumulation dtype, partial sums over the V-blocks (summed, and for
        shared q/k summed over the batch, by the caller); dv: ``(TT, H, V)`` in v's dtype;
      dg: ``(NV, TT, H)`` float64, partial per-token log-decay gradient (DECAY == 1);
      dgamma: ``(N*H, NV)`` float64, partial per-head gradient (DECAY == 2);
      dh0: ``(N, H, K, V)`` in the accumulation dtype (USE_H0);
      dqq: ``(NV, TT, H)`` float64 scratch (DECAY > 0).

    Decay gradient: with ``B_t`` the cumulative log-decay, ``dB_t = q_t . dq_t - k_t . dk_t`` (plus
    ``<dS_final, S_final>`` at the last token) and ``dg_t = sum_{u >= t} dB_u``. The forward sweep stores
    ``q_t . dq_t`` in ``dqq``; the reverse sweep reads it back after a barrier (other threads of this program
    wrote it). Every term is linear in the V-block, so V-block partials simply add up. ``dB`` is a difference
    of two large, nearly cancelling terms, then summed over the whole sequence, so these per-token scalars are
    formed and accumulated in float64 (a few scalar operations per token: negligible next to the products).
    """
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)
    i_nh = pid // NV
    i_v = pid % NV
    i_n = i_nh // H
    i_h = i_nh % H
    ACC: tl.constexpr = dq.dtype.element_ty
    bos, bos_qk, seq_len = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN, SHARED_QK)
    n_chunks = tl.cdiv(seq_len, BT)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    causal = o_i[:, None] >= o_i[None, :]
    gamma = 0.
    if DECAY == 2:
        gamma = tl.load(g_gamma + i_h).to(ACC)

    p_q0 = q + (bos_qk * H + i_h) * K
    p_k0 = k + (bos_qk * H + i_h) * K
    p_v0 = v + (bos * H + i_h) * V
    p_do0 = do + (bos * H + i_h) * V
    p_dv0 = dv + (bos * H + i_h) * V
    p_dq0 = dq + (i_v * TT * H + bos * H + i_h) * K
    p_dk0 = dk + (i_v * TT * H + bos * H + i_h) * K
    if DECAY > 0:
        p_dqq0 = dqq + i_v * TT * H + bos * H + i_h
    if DECAY == 1:
        p_dg0 = dg + i_v * TT * H + bos * H + i_h
    p_s = i_nh * K * V + o_k[:, None] * V + o_v[None, :]

    # ---- forward sweep: entering state of each chunk -> dq (and q . dq) ----
    b_s = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        b_s += tl.load(h0 + p_s, mask=m_kv, other=0.).to(ACC)
    for i_c in range(0, n_chunks):
        t0 = i_c * BT
        o_t = t0 + o_i
        m_t = o_t < seq_len
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(p_k0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)
        b_v = tl.load(p_v0 + o_t[:, None] * (H * V) + o_v[None, :], mask=m_tv, other=0.)
        b_do = tl.load(p_do0 + o_t[:, None] * (H * V) + o_v[None, :], mask=m_tv, other=0.)

        b_da = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION).to(ACC)  # do_i . v_j
        b_ks = b_k.to(ACC)
        b_dqs = tl.dot(b_do.to(ACC), tl.trans(_tf32(b_s, PRECISION)), input_precision=PRECISION)  # do_i S^T
        if DECAY > 0:
            b_b, b_last = _chunk_log_decay(g, gamma, bos, i_h, t0, seq_len, H, BT, DECAY, ACC)
            b_da = b_da * tl.exp(tl.where(causal, b_b[:, None] - b_b[None, :], float("-inf")))
            b_dqs = b_dqs * tl.exp(b_b)[:, None]
        else:
            b_da = tl.where(causal, b_da, 0.)
        b_dq = (tl.dot(_tf32(b_da, PRECISION), b_ks, input_precision=PRECISION) + b_dqs) * scale
        if DECAY > 0:
            b_ks = b_ks * tl.exp(b_last - b_b)[:, None]
        tl.store(p_dq0 + o_t[:, None] * (H * K) + o_k[None, :], b_dq, mask=m_tk)
        if DECAY > 0:
            b_q = tl.load(p_q0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.).to(ACC)
            tl.store(p_dqq0 + o_t * H, tl.sum(b_q.to(tl.float64) * b_dq.to(tl.float64), axis=1), mask=m_t)
            b_s = b_s * tl.exp(b_last)
        b_s += tl.dot(tl.trans(_tf32(b_ks, PRECISION)), b_v.to(ACC), input_precision=PRECISION)

    # b_s is now the final state (this V-block): it enters the decay gradient at the last token
    b_ds = tl.zeros([BK, BV], dtype=ACC)
    b_carry = tl.sum(tl.sum(b_ds, axis=1), axis=0).to(tl.float64)  # float64 scalar 0
    if USE_DHT:
        b_ds += tl.load(dht + p_s, mask=m_kv, other=0.).to(ACC)
        if DECAY > 0:
            b_carry += tl.sum(tl.sum(b_ds.to(tl.float64) * b_s.to(tl.float64), axis=1), axis=0)
    b_dgamma = b_carry * 0
    # the reverse sweep reads back the q . dq that this program's threads stored above
    tl.debug_barrier()

    # ---- reverse sweep: dS carried backwards -> dk, dv, dg, dgamma, dh0 ----
    for i_r in range(0, n_chunks):
        t0 = (n_chunks - 1 - i_r) * BT
        o_t = t0 + o_i
        m_t = o_t < seq_len
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(p_q0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)
        b_k = tl.load(p_k0 + o_t[:, None] * (H * K) + o_k[None, :], mask=m_tk, other=0.)
        b_v = tl.load(p_v0 + o_t[:, None] * (H * V) + o_v[None, :], mask=m_tv, other=0.)
        b_do = tl.load(p_do0 + o_t[:, None] * (H * V) + o_v[None, :], mask=m_tv, other=0.)

        b_qs = b_q.to(ACC)
        b_kc = b_k.to(ACC)
        # one (BT, BT) matrix at a time: dA -> dk, then A -> dv (keeps register pressure down)
        b_da = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION).to(ACC) * scale  # scale do_i . v_j
        if DECAY > 0:
            b_b, b_last = _chunk_log_decay(g, gamma, bos, i_h, t0, seq_len, H, BT, DECAY, ACC)
            b_m = tl.exp(tl.where(causal, b_b[:, None] - b_b[None, :], float("-inf")))
            b_da = b_da * b_m
        else:
            b_da = tl.where(causal, b_da, 0.)
        b_dk = tl.dot(tl.trans(_tf32(b_da, PRECISION)), b_qs, input_precision=PRECISION)
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION).to(ACC) * scale  # scale q_i . k_j
        if DECAY > 0:
            b_a = b_a * b_m
        else:
            b_a = tl.where(causal, b_a, 0.)
        b_dv = tl.dot(tl.trans(_tf32(b_a, PRECISION)), b_do.to(ACC), input_precision=PRECISION)
        b_dst = _tf32(b_ds, PRECISION)
        b_dk_s = tl.dot(b_v.to(ACC), tl.trans(b_dst), input_precision=PRECISION)
        b_dv_s = tl.dot(b_kc, b_dst, input_precision=PRECISION)
        if DECAY > 0:
            b_kd = tl.exp(b_last - b_b)
            b_dk += b_dk_s * b_kd[:, None]
            b_dv += b_dv_s * b_kd[:, None]
            b_qs = b_qs * tl.exp(b_b)[:, None]
        else:
            b_dk += b_dk_s
            b_dv += b_dv_s
        tl.store(p_dk0 + o_t[:, None] * (H * K) + o_k[None, :], b_dk, mask=m_tk)
        tl.store(p_dv0 + o_t[:, None] * (H * V) + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)

        if DECAY > 0:
            b_qdq = tl.load(p_dqq0 + o_t * H, mask=m_t, other=0.)
            b_db = tl.where(m_t, b_qdq - tl.sum(b_kc.to(tl.float64) * b_dk.to(tl.float64), axis=1), 0.)
            if DECAY == 1:
                b_dgc = tl.cumsum(b_db, axis=0, reverse=True) + b_carry
                b_carry += tl.sum(b_db, axis=0)
                tl.store(p_dg0 + o_t * H, b_dgc, mask=m_t)
            else:
                # sum_t dg_t = sum_u (u + 1) dB_u: one weighted sum, no running carry to round
                b_dgamma += tl.sum((o_t + 1).to(tl.float64) * b_db, axis=0)
            b_ds = b_ds * tl.exp(b_last)
        b_ds += scale * tl.dot(tl.trans(_tf32(b_qs, PRECISION)), b_do.to(ACC), input_precision=PRECISION)

    if USE_H0:
        tl.store(dh0 + p_s, b_ds, mask=m_kv)
    if DECAY == 2:
        # the final-state term enters dg_t of every token of the sequence
        tl.store(dgamma + pid, b_dgamma + b_carry * seq_len.to(tl.float64))


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
    if DECAY == 1:
        b_s = b_s * tl.exp(tl.load(g + i_nh).to(ACC))
    elif DECAY == 2:
        b_s = b_s * tl.exp(tl.load(g_gamma + i_h).to(ACC))
    b_s += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_q[:, None] * b_s, axis=0) * scale
    tl.store(p_s, b_s.to(state.dtype.element_ty), mask=m_kv)
    tl.store(o + i_nh * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
