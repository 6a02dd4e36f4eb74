"""Triton kernel of a FuXi-Linear block's decode step: the three channel states in one launch.

A block's decode step advances up to three scalar-decay linear-attention states per user (retention,
temporal retention, linear positional; SPEC §1-4) and reads one output row from each. Per channel, user n
and head h::

    S <- exp(g) S + k_scale * k^T v          (in place; g per (user, head), per head, or absent)
    o  = scale * (q S)

The channels differ only in their sizes (retention: H heads of dqk x D/H; temporal: 2Ht heads of 2 x
D/2Ht; positional: 1 head of P x D) and their decay, so one generic tile routine, :func:`_channel_step`,
serves all three, specialised by compile-time sizes. :func:`fused_block_step_kernel` splits one 1-D grid
into three consecutive program ranges, one per channel (``NUM_CHANNELS`` of them are used), and every
program runs the routine on a ``(BR, BK, BV)`` tile: ``BR`` (user, head) rows of ``BK x BV`` state.

Program sizing: a step is a pure state stream (each state element is read once and written once, a few
flops each), so every program is given about the same amount of state, ``TILE`` elements. A retention
head of 32 x 32 makes two rows per program; the temporal heads (2 x 8 at D=128) are batched ``BR = 128``
(user, head) rows to a program instead of one tiny tile each; the positional head (32 x 128) is split into
V-blocks. Nothing here is keyed on N: a new batch size never recompiles.

Layouts: ``q, k: (N, H, K)``, ``v: (N, H, V)`` with each user's ``H x K`` (``H x V``) block contiguous and any
user stride (so q, k, v may be column slices of one projection output); ``g: (N, H)`` with unit head stride
and any user stride; ``g_gamma: (H,)``. The state is ``(P, H, K, V)`` with any strides,
row ``state_indices[n]`` (or n) for user n: rows named twice race, so they must be distinct. The outputs
of all channels go to one ``(N, sum_c H_c V_c)`` buffer ``o``, channel c at column ``OCOL_c``.

Not fused, on purpose: the block's per-column gains after the operator (the retention heads' inclusive decay,
``alpha o + beta v``), its three output LayerNorms and the u-gate. They read and write ``(N, 3D)`` values --
a few percent of the ``2 x`` state bytes a step streams (at D=128: 1.5 KiB against 66 KiB per user and block)
-- so fusing them saves one or two small launches (nothing inside a CUDA graph) while the norms would need
every head of a user in one program: a few large programs per user instead of many balanced ones.

Accumulation is in the state's dtype (float32, or float64); bf16/fp16 inputs are converted on load.
Products are elementwise multiplies and sums (a matrix-vector product per head), no ``tl.dot``.
Program ids and row offsets are int64.
"""
import triton
import triton.language as tl

from .common import HEAD_DECAY, TOKEN_DECAY

__all__ = ["fused_block_step_kernel"]


@triton.jit
def _channel_step(
    pid, N, state_indices, o, stride_on,
    q, k, v, g, g_gamma, state,
    stride_qn, stride_kn, stride_vn, stride_gn,
    stride_sn, stride_sh, stride_sk, stride_sv,
    scale, k_scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BR: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, OCOL: tl.constexpr, USE_INDICES: tl.constexpr,
):
    """One ``(BR, BK, BV)`` tile of one channel: (user, head) rows ``r = n * H + h`` of block ``pid // NV``,
    V-block ``pid % NV``. ``DECAY``: a ``DecayMode`` value (``TOKEN_DECAY``: ``g`` per (user, head),
    ``HEAD_DECAY``: ``g_gamma`` per head)."""
    NV: tl.constexpr = (V + BV - 1) // BV
    i_v = pid % NV
    rows = (pid // NV) * BR + tl.arange(0, BR).to(tl.int64)
    m_r = rows < N * H
    i_n = rows // H
    i_h = rows % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    ACC: tl.constexpr = state.dtype.element_ty
    if USE_INDICES:
        s_row = tl.load(state_indices + i_n, mask=m_r, other=0).to(tl.int64)
    else:
        s_row = i_n

    m_rk = m_r[:, None] & m_k[None, :]
    m_rv = m_r[:, None] & m_v[None, :]
    m_s = m_rk[:, :, None] & m_v[None, None, :]
    b_q = tl.load(q + i_n[:, None] * stride_qn + i_h[:, None] * K + o_k[None, :], mask=m_rk, other=0.).to(ACC)
    b_k = tl.load(k + i_n[:, None] * stride_kn + i_h[:, None] * K + o_k[None, :], mask=m_rk, other=0.).to(ACC)
    b_v = tl.load(v + i_n[:, None] * stride_vn + i_h[:, None] * V + o_v[None, :], mask=m_rv, other=0.).to(ACC)
    p_s = (state + s_row[:, None, None] * stride_sn + i_h[:, None, None] * stride_sh
           + o_k[None, :, None] * stride_sk + o_v[None, None, :] * stride_sv)
    b_s = tl.load(p_s, mask=m_s, other=0.).to(ACC)
    if DECAY == TOKEN_DECAY:
        b_g = tl.load(g + i_n * stride_gn + i_h, mask=m_r, other=0.).to(ACC)
        b_s = b_s * tl.exp(b_g)[:, None, None]
    elif DECAY == HEAD_DECAY:
        b_g = tl.load(g_gamma + i_h, mask=m_r, other=0.).to(ACC)
        b_s = b_s * tl.exp(b_g)[:, None, None]
    b_s += (b_k * k_scale)[:, :, None] * b_v[:, None, :]
    tl.store(p_s, b_s.to(state.dtype.element_ty), mask=m_s)

    b_o = tl.sum(b_q[:, :, None] * b_s, axis=1) * scale  # (BR, BV)
    p_o = o + i_n[:, None] * stride_on + OCOL + i_h[:, None] * V + o_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_rv)


@triton.jit
def fused_block_step_kernel(
    N, state_indices, o, stride_on, END0, END1,
    # channel 0
    q0, k0, v0, g0, gamma0, s0,
    stride_q0, stride_k0, stride_v0, stride_g0, stride_sn0, stride_sh0, stride_sk0, stride_sv0, scale0, kscale0,
    # channel 1
    q1, k1, v1, g1, gamma1, s1,
    stride_q1, stride_k1, stride_v1, stride_g1, stride_sn1, stride_sh1, stride_sk1, stride_sv1, scale1, kscale1,
    # channel 2
    q2, k2, v2, g2, gamma2, s2,
    stride_q2, stride_k2, stride_v2, stride_g2, stride_sn2, stride_sh2, stride_sk2, stride_sv2, scale2, kscale2,
    H0: tl.constexpr, K0: tl.constexpr, V0: tl.constexpr, BR0: tl.constexpr, BK0: tl.constexpr,
    BV0: tl.constexpr, DECAY0: tl.constexpr, OCOL0: tl.constexpr,
    H1: tl.constexpr, K1: tl.constexpr, V1: tl.constexpr, BR1: tl.constexpr, BK1: tl.constexpr,
    BV1: tl.constexpr, DECAY1: tl.constexpr, OCOL1: tl.constexpr,
    H2: tl.constexpr, K2: tl.constexpr, V2: tl.constexpr, BR2: tl.constexpr, BK2: tl.constexpr,
    BV2: tl.constexpr, DECAY2: tl.constexpr, OCOL2: tl.constexpr,
    NUM_CHANNELS: tl.constexpr, USE_INDICES: tl.constexpr,
):
    """Grid ``(END_last,)``: programs ``[0, END0)`` run channel 0, ``[END0, END1)`` channel 1, the rest
    channel 2 (channels beyond ``NUM_CHANNELS`` are absent: their pointers may be None). Channel c's arguments
    are the names of :func:`_channel_step` with the suffix c (``q0``, ``stride_sn0``, ``DECAY0``, ...)."""
    pid = tl.program_id(0).to(tl.int64)
    if pid < END0:
        _channel_step(pid, N, state_indices, o, stride_on,
                      q0, k0, v0, g0, gamma0, s0,
                      stride_q0, stride_k0, stride_v0, stride_g0, stride_sn0, stride_sh0, stride_sk0, stride_sv0,
                      scale0, kscale0, H0, K0, V0, BR0, BK0, BV0, DECAY0, OCOL0, USE_INDICES)
    if NUM_CHANNELS > 1:
        if pid >= END0:
            if pid < END1:
                _channel_step(pid - END0, N, state_indices, o, stride_on,
                              q1, k1, v1, g1, gamma1, s1,
                              stride_q1, stride_k1, stride_v1, stride_g1,
                              stride_sn1, stride_sh1, stride_sk1, stride_sv1,
                              scale1, kscale1, H1, K1, V1, BR1, BK1, BV1, DECAY1, OCOL1, USE_INDICES)
    if NUM_CHANNELS > 2:
        if pid >= END1:
            _channel_step(pid - END1, N, state_indices, o, stride_on,
                          q2, k2, v2, g2, gamma2, s2,
                          stride_q2, stride_k2, stride_v2, stride_g2, stride_sn2, stride_sh2, stride_sk2, stride_sv2,
                          scale2, kscale2, H2, K2, V2, BR2, BK2, BV2, DECAY2, OCOL2, USE_INDICES)
