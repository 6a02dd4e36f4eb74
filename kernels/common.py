"""JIT helpers shared by the prefill kernels: which tokens a program owns, and the chunk-local decay.

Work items. A program works on one *work item* of one head (and V-block): a whole sequence, or, when long
sequences are split across programs (``SPLIT``), one *segment* of ``L`` tokens of it (``L`` a multiple of the
chunk length). Work item ``w`` is sequence ``w`` when not split; when split it is segment ``w % NS`` of
sequence ``w // NS`` (every sequence has ``T`` tokens and ``NS = cdiv(T, L)`` segments), or for packed input
(``IS_VARLEN``) the segment ``w - seg_first[n]`` of sequence ``n = seg_seq[w]``.

Addressing. Every tensor is addressed through its own (batch, token, head) strides with a unit stride on the
last axis, so strided views (q/k/v sliced out of one projection) are read in place. The batch stride is given
in token rows (``stride(0) / stride(1)``: T for a ``(B, T, ...)`` tensor, 0 for packed input and for q/k
shared by every sequence), so a sequence starts at ``(n * s_b + bos) * s_t`` elements: the batch stride changes
with T and is never specialised, while the token stride (``H * K`` or a projection's width, T-independent) keeps
telling the compiler how rows are aligned. Row offsets are int64 (program ids, sequence starts and chunk starts
are int64 scalars).

Decay. Inside a chunk the kernels use the cumulative log-decay ``b_i = sum_{r <= i} g_r``, in log2 units (g is
multiplied by log2(e) once, so every exponential is one ``exp2``). Products need ``exp(b_i - b_j)``: a float32
cumulative sum followed by a difference loses the difference to cancellation once ``|b|`` is large (strong
decays: g = -20 makes ``|b|`` reach hundreds within a chunk, and the float32 rounding of ``b_i`` alone is then
~1e-5 absolute). So the cumulative sum is formed in float64 and split as ``b = hi + lo`` (``hi`` its float32
rounding, ``lo`` the float32 residual); ``b_i - b_j = (hi_i - hi_j) + (lo_i - lo_j)`` is then accurate to a few
float32 ulps *of the difference*. A per-head decay needs no sums at all: ``b_i = gamma * c_i`` with ``c_i`` an
exact token count, and ``b_i - b_j = gamma * (c_i - c_j)``. Rows past the end of the data behave as ``g = 0``,
so the value at the chunk's last row is the value at its last valid token.
"""
import triton
import triton.language as tl

from .decay_mode import DecayMode

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)
#: The values of the kernels' ``DECAY`` constexpr (:class:`~fuxi_linear.kernels.decay_mode.DecayMode`), named
#: for the comparisons in the kernels; compared at compile time, so each mode compiles only its own code.
NO_DECAY = tl.constexpr(DecayMode.NONE.value)
TOKEN_DECAY = tl.constexpr(DecayMode.PER_TOKEN.value)
HEAD_DECAY = tl.constexpr(DecayMode.PER_HEAD.value)


@triton.jit
def work_item(w, cu_seqlens, seg_first, seg_seq, T, L, NS, IS_VARLEN: tl.constexpr, SPLIT: tl.constexpr):
    """Work item ``w`` (int64) -> ``(n, bos, seq_len, t_begin, t_end)``: the sequence ``n``, the first row
    ``bos`` of that sequence in the packed token axis (0 when not packed), its length, and the tokens
    ``[t_begin, t_end)`` (positions within the sequence) this program owns. All int64."""
    if SPLIT:
        if IS_VARLEN:
            n = tl.load(seg_seq + w).to(tl.int64)
            s = w - tl.load(seg_first + n).to(tl.int64)
        else:
            n = w // NS
            s = w % NS
    else:
        n = w
        s = w * 0
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        seq_len = tl.load(cu_seqlens + n + 1).to(tl.int64) - bos
    else:
        bos = n * 0
        seq_len = n * 0 + T
    if SPLIT:
        t_begin = s * L
        t_end = tl.minimum(t_begin + L, seq_len)
    else:
        t_begin = n * 0
        t_end = seq_len
    return n, bos, seq_len, t_begin, t_end


@triton.jit
def token_row(n, bos, T, IS_VARLEN: tl.constexpr):
    """Row of sequence n's first token in a flat ``(B*T)`` or packed token axis (per-token scratch buffers)."""
    if IS_VARLEN:
        return bos
    else:
        return n * T


@triton.jit
def cumulative_log2_decay(b_g, ACC: tl.constexpr):
    """``(hi, lo)`` of ``b = cumsum(g) * log2(e)`` along axis 0 (the chunk's rows) of the loaded ``b_g``: the
    sum in float64, ``hi`` its rounding to ACC, ``lo`` the residual (0 when ACC is float64)."""
    b64 = tl.cumsum(b_g.to(tl.float64) * LOG2E, axis=0)
    hi = b64.to(ACC)
    lo = (b64 - hi.to(tl.float64)).to(ACC)
    return hi, lo


@triton.jit
def last_row(x, is_last):
    """The row of ``x`` (along axis 0) where ``is_last`` holds, by a masked sum (exact: one term)."""
    return tl.sum(tl.where(is_last, x, 0.), axis=0)


@triton.jit
def chunk_decay(g_seq, t0, stride_t, n_valid, BT: tl.constexpr, DECAY: tl.constexpr, ACC: tl.constexpr):
    """Cumulative log2-decay of one chunk of one head as ``(hi, lo, hi_last, lo_last)``, each ``(BT,)``/scalar.

    ``g_seq`` points at the sequence's first row of g (this head; unused unless ``TOKEN_DECAY``), the chunk
    starts at token ``t0``, rows ``>= n_valid`` count as ``g = 0``.
    ``TOKEN_DECAY`` (per-token g): ``b = hi + lo``. ``HEAD_DECAY``: ``hi = min(i + 1, n_valid)`` exact counts,
    ``lo = 0``, ``b = gamma2 * hi``. The ``*_last`` scalars are the values at the last valid token.
    """
    o_i = tl.arange(0, BT)
    m_t = o_i < n_valid
    if DECAY == TOKEN_DECAY:
        hi, lo = cumulative_log2_decay(tl.load(g_seq + t0 * stride_t + o_i * stride_t, mask=m_t, other=0.), ACC)
    else:
        hi = tl.minimum(o_i + 1, n_valid).to(ACC)
        lo = tl.zeros([BT], dtype=ACC)
    is_last = o_i == BT - 1
    return hi, lo, last_row(hi, is_last), last_row(lo, is_last)


@triton.jit
def decay_diff(hi_a, lo_a, hi_b, lo_b, gamma2, DECAY: tl.constexpr):
    """``b_a - b_b`` (log2 units, broadcasting) from the representation of :func:`chunk_decay`."""
    if DECAY == HEAD_DECAY:
        return gamma2 * (hi_a - hi_b)
    else:
        return (hi_a - hi_b) + (lo_a - lo_b)


@triton.jit
def decay_value(hi, lo, gamma2, DECAY: tl.constexpr):
    """``b`` itself (log2 units): a sum of same-signed terms, so no cancellation."""
    if DECAY == HEAD_DECAY:
        return gamma2 * hi
    else:
        return hi + lo


@triton.jit
def tf32_round(x, PRECISION: tl.constexpr):
    """Round a float32 ``tl.dot`` operand to TF32 (nearest) when the product runs in TF32: the tensor cores
    truncate, a bias that rounding first removes. Only float32 tensors change (half-precision data is exact in
    TF32 and is multiplied in its own dtype)."""
    if PRECISION == "tf32" and x.dtype == tl.float32:
        x = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return x


# ---------------------------------------------------------------------------------------------- prologue
# The kernels' shared set-up: which program is which, tile offsets and masks, row pointers and the state a
# work item starts from. Inlined helpers that compile to the same registers as the code written out in each
# kernel (checked per variant with ``python -m fuxi_linear.kernels.resources``). The tile pointers of the
# loads in the chunk loops stay written out: the same arithmetic in a helper cost a register in a tl.load.

@triton.jit
def work_head_vblock(NV: tl.constexpr, H: tl.constexpr):
    """``(w, i_h, i_v)`` (int64) of this program in the general kernels' grid: program ``(w * H + i_h) * NV +
    i_v`` is V-block ``i_v`` of head ``i_h`` of work item ``w``."""
    pid = tl.program_id(0).to(tl.int64)
    i_v = pid % NV
    i_wh = pid // NV
    i_h = i_wh % H
    return i_wh // H, i_h, i_v


@triton.jit
def tile_indices(i_v, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks of a general kernel's tiles: chunk rows ``o_i (BT,)``, key columns ``o_k (BK,)`` and
    V-block ``i_v``'s value columns ``o_v (BV,)``; the masks ``m_k``, ``m_v`` of the real columns, ``m_kv`` of
    the ``(BK, BV)`` state block, and the causal ``(BT, BT)`` mask ``i >= j``."""
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    return o_i, o_k, o_v, m_k, m_v, m_k[:, None] & m_v[None, :], o_i[:, None] >= o_i[None, :]


@triton.jit
def head_log2_decay(g_gamma, i_h, DECAY: tl.constexpr, ACC: tl.constexpr):
    """Head ``i_h``'s per-head log-decay in log2 units (``HEAD_DECAY``); 0 (unused) otherwise."""
    gamma2 = 0.
    if DECAY == HEAD_DECAY:
        gamma2 = tl.load(g_gamma + i_h).to(ACC) * LOG2E
    return gamma2


@triton.jit
def sequence_rows(x, n, bos, s_b, s_t):
    """Pointer to the first token of sequence ``n`` (batch row ``n``, or packed row ``bos``) of a tensor with
    batch stride ``s_b`` token rows and token stride ``s_t`` elements; add ``head * s_h`` for one head."""
    return x + (n * s_b + bos) * s_t


@triton.jit
def add_boundary_state(b_s, h_in, w, n, o_s, m_s, HKV: tl.constexpr, SPLIT: tl.constexpr, USE: tl.constexpr):
    """``b_s`` plus the state a work item starts from: with ``SPLIT`` the boundary state of work item ``w``
    (``h_in (n_work, H, K, V)``), else sequence ``n``'s given state when ``USE`` (``h_in (N, H, K, V)``).
    ``o_s``/``m_s``: offsets (within one ``H * K * V`` block, ``HKV``) and mask of the program's state tile."""
    if SPLIT:
        b_s += tl.load(h_in + w * HKV + o_s, mask=m_s, other=0.).to(b_s.dtype)
    elif USE:
        b_s += tl.load(h_in + n * HKV + o_s, mask=m_s, other=0.).to(b_s.dtype)
    return b_s
