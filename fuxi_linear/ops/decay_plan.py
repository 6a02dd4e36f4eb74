"""The CPU path of the decay-attention operator: a plan that prepares the q/k/decay half once and applies it to
any number of value tensors, all chunks at once (SPEC §1's chunked form; one chunk is the parallel form).

:func:`prepare_decay_attention` builds a :class:`DecayAttentionPlan` from ``q, k`` and the decay (per token:
:class:`_TokenDecay`, cumulative sums in float64; per head: :class:`HeadDecay`, from integer offsets);
:meth:`DecayAttentionPlan.apply` multiplies values in. The CPU backend's operator
(:func:`fuxi_linear.ops.cpu_decay_attention.chunk_decay_attention_cpu`) and the channels' prefill
(:mod:`fuxi_linear.ops.channel_prefill`) run on it. Layout and shapes as in :mod:`fuxi_linear.ops.definition`.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from .dtypes import cast

__all__ = ["DecayAttentionPlan", "HeadDecay", "Output", "auto_chunk_size", "prepare_decay_attention"]

Output = Tuple[torch.Tensor, Optional[torch.Tensor]]


#: Chunk lengths of the CPU path, by head size (from timings on a 2-core CPU, see ``benchmarks/RESULTS.md``): a
#: chunk costs C x C score entries per token and head against K x V state entries, so heads with a small state
#: want short chunks and wide heads longer ones. A sequence no longer than its chunk is computed in the
#: parallel form (one masked T x T score matrix per head, no chunk states).
SMALL_STATE_CHUNK = 32
WIDE_STATE_CHUNK = 64
#: Chunks are computed in batched segments whose score tensor stays below this many elements (a few MiB:
#: cache-sized on a CPU) and that hold at most :data:`MAX_SEGMENT_CHUNKS` chunks; segments run one after
#: the other, carrying the state.
SEGMENT_ELEMENTS = 1 << 20
MAX_SEGMENT_CHUNKS = 16


def auto_chunk_size(K: int, V: int) -> int:
    """Chunk length C of the CPU path for heads of key width K and value width V (a sequence of at most C
    tokens runs in the parallel form)."""
    return SMALL_STATE_CHUNK if K * V <= 64 else WIDE_STATE_CHUNK


@functools.lru_cache(maxsize=64)
def _offsets(n: int, device: torch.device, dtype: torch.dtype):
    """Cached index tensors for a chunk (or a segment's chunks) of n positions, read-only and shared by every
    call: ``above (n, n)`` bool (s > t: masked), ``dist (n, n)`` = t - s, ``steps (n,)`` = 1..n and the causal
    mask as 0/1 ``ones (n, n)`` in ``dtype``. Always normal tensors (never inference tensors, which autograd
    could not save), whichever mode the first call ran in."""
    with torch.inference_mode(False):
        above = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
        idx = torch.arange(n, device=device, dtype=dtype)
        return above, idx[:, None] - idx[None, :], idx + 1, (~above).to(dtype)


@functools.lru_cache(maxsize=64)
def _steps_to_end(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cached ``n - 1 - s`` for s = 0..n-1 (``dtype``, read-only; a normal tensor, as :func:`_offsets`)."""
    with torch.inference_mode(False):
        return torch.arange(n - 1, -1, -1, device=device, dtype=dtype)


#: Log-decays below this are clamped before exp: exp(-80) ~ 2e-35 is already nothing next to float32 rounding,
#: and a CPU's vectorised exp leaves its fast path for arguments below about -88 (float32 underflow) or -inf,
#: running ~10x slower there; the temporal channel's clamped decays (-20 per step) reach that range within a chunk.
MIN_LOG_DECAY = -80.0


def _decay_exp(log_decay: torch.Tensor) -> torch.Tensor:
    """``exp`` of log-decays (<= 0), clamped at :data:`MIN_LOG_DECAY`."""
    return torch.exp(log_decay.clamp(min=MIN_LOG_DECAY))


def _masked_exp(diff: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``exp(diff)`` where ``diff <= 0`` is a log-decay, times the 0/1 mask ``keep`` (0 past the causal edge, where
    ``diff`` may be positive: clamped to 0 first, so nothing overflows and no NaN reaches a gradient). A float
    mask: multiplying by it is several times faster on a CPU than ``masked_fill`` with a broadcast bool mask."""
    return torch.exp(diff.clamp(MIN_LOG_DECAY, 0.0)) * keep


class _TokenDecay:
    """Per-token log-decay ``g (Bd, T, H)``: everything from ``G_t = sum_{r<=t} g_r`` in float64 ``(Bd, H, T)``,
    which keeps differences exact to float32 accuracy at any length (even for heads whose log-decay sits at its
    clamp, -20 per step, for thousands of steps); results in the compute dtype ``cdt``."""

    def __init__(self, g: torch.Tensor, cdt: torch.dtype):
        self.G = g.transpose(1, 2).double().cumsum(-1)
        self.batch, self.cdt = g.shape[0], cdt

    def chunks(self, start: int, stop: int, nc: int, C: int, with_states: bool) -> dict:
        """Decay factors of the chunks of ``[start, start + nc C)`` (padding past ``stop`` does not decay):
        ``intra (Bd, H, nc, C, C)`` = exp(b_t - b_s) for s <= t; with states also ``into`` = exp(b_t),
        ``out_of`` = exp(b_C - b_s) ``(Bd, H, nc, C)``, ``mix (Bd, H, nc, nc)``, ``carry (Bd, H, nc)`` (see
        :class:`_Segment`)."""
        G = self.G
        Gs = G[..., start:stop] if (start, stop) != (0, G.shape[-1]) else G
        if nc * C > stop - start:
            Gs = torch.nn.functional.pad(Gs, (0, nc * C - (stop - start)), mode="replicate")
        Gc = Gs.unflatten(-1, (nc, C))  # (Bd, H, nc, C)
        before = G[..., start - 1:start] if start > 0 else None  # G before the segment (None: 0)
        if nc == 1 and start == 0:
            b = Gc
        else:  # G before each chunk, subtracted: the chunk-local cumulative log-decay
            if before is None:
                chunk_start = torch.nn.functional.pad(Gc[..., :-1, -1], (1, 0))
            else:
                chunk_start = torch.cat([before, Gc[..., :-1, -1]], dim=-1) if nc > 1 else before  # (Bd, H, nc)
            b = Gc - chunk_start.unsqueeze(-1)
        # Every difference is taken in float64, then cast: b reaches hundreds within a chunk when decays are
        # strong (-20 per step), and a float32 difference of two such values loses ~1e-5 of the weight
        # exp(b_t - b_s) of nearby tokens, the weights that matter.
        cdt = self.cdt
        out = {"intra": _masked_exp(cast(b[..., :, None] - b[..., None, :], cdt), _offsets(C, b.device, cdt)[3])}
        if with_states:
            ends = Gc[..., -1]  # Gamma_c
            out["mix"] = _masked_exp(cast(ends[..., :, None] - ends[..., None, :], cdt), _offsets(nc, b.device, cdt)[3])
            # only for a state entering the segment
            out["carry"] = lambda: _decay_exp(cast(ends if before is None else ends - before, cdt))
            out["into"] = _decay_exp(cast(b, cdt))
            out["out_of"] = _decay_exp(cast(b[..., -1:] - b, cdt))
        return out

    def to_last(self, last: Optional[torch.Tensor]) -> torch.Tensor:
        """``exp(G_{L-1} - G_s) [s < L]`` ``(Bf, H, T)`` for the last tokens ``last (B,)`` (None: T - 1)."""
        G = self.G
        if last is None:
            return _decay_exp(cast(G[..., -1:] - G, self.cdt))
        G_last = G.expand(last.numel(), -1, -1).gather(-1, last.view(-1, 1, 1).expand(-1, G.shape[1], 1))
        keep = (torch.arange(G.shape[-1], device=G.device) <= last.view(-1, 1, 1)).to(self.cdt)
        return _masked_exp(cast(G_last - G, self.cdt), keep)

    def log_decay_to_last(self, last: Optional[torch.Tensor]) -> torch.Tensor:
        """``G_{L-1}`` ``(Bf, H)`` float64 (the decay of an initial state)."""
        G = self.G
        return G[..., -1] if last is None else G.expand(last.numel(), -1, -1).gather(
            -1, last.view(-1, 1, 1).expand(-1, G.shape[1], 1)).squeeze(-1)


class HeadDecay:
    """One log-decay per head ``gamma (H,)`` over T tokens: ``G_t - G_s = gamma (t - s)``, the same in every
    chunk, built from cached integer offsets (batch 1 and chunk axis 1: broadcast). Its factors are computed
    once per instance, so one instance can serve every prefill with the same decay and length (see
    :func:`fuxi_linear.derived_cache.inference_cache`)."""

    def __init__(self, g_gamma: torch.Tensor, T: int, cdt: torch.dtype):
        self.gamma = cast(g_gamma, cdt)
        self.T, self.batch, self.cdt = T, 1, cdt
        self._memo = {}

    def chunks(self, start: int, stop: int, nc: int, C: int, with_states: bool) -> dict:
        key = (nc, C, with_states)
        if key not in self._memo:
            self._memo[key] = self._chunks(nc, C, with_states)
        return self._memo[key]

    def _chunks(self, nc: int, C: int, with_states: bool) -> dict:
        gam = self.gamma[:, None]
        _, dist, steps, keep = _offsets(C, gam.device, self.cdt)
        out = {"intra": _masked_exp(gam[..., None] * dist, keep)[None, :, None]}  # (1, H, 1, C, C)
        if with_states:
            _, dist_c, steps_c, keep_c = _offsets(nc, gam.device, self.cdt)
            out["into"] = _decay_exp(gam * steps)[None, :, None]  # (1, H, 1, C)
            out["out_of"] = _decay_exp(gam * (C - steps))[None, :, None]
            out["mix"] = _masked_exp((C * gam[..., None]) * dist_c, keep_c)[None]  # (1, H, nc, nc)
            out["carry"] = lambda: _decay_exp((C * gam) * steps_c)[None]  # (1, H, nc)
        return out

    def to_last(self, last: Optional[torch.Tensor]) -> torch.Tensor:
        if last is None:  # (1, H, T)
            if "to_last" not in self._memo:
                steps = _steps_to_end(self.T, self.gamma.device, self.cdt)
                self._memo["to_last"] = _decay_exp(self.gamma.unsqueeze(-1) * steps).unsqueeze(0)
            return self._memo["to_last"]
        pos = torch.arange(self.T, device=self.gamma.device, dtype=self.cdt)
        back = cast(last, self.cdt)[:, None] - pos  # (B, T): L - 1 - s
        return _masked_exp(self.gamma[:, None] * back[:, None], (back >= 0).to(self.cdt)[:, None])  # (B, H, T)

    def log_decay_to_last(self, last: Optional[torch.Tensor]) -> torch.Tensor:
        length = self.T if last is None else (last + 1).double()[:, None]
        return (self.gamma.double() * length).reshape(-1, self.gamma.shape[0])


class _Segment:
    """``nc`` consecutive chunks of length C starting at token ``start``, all computed at once.

    ``scores (Bs, H, nc, C, C)``: ``scale (q_t . k_s) exp(b_t - b_s)`` for ``s <= t`` in the chunk, else 0
    (``b``: chunk-local cumulative log-decay). When states are needed (several chunks or a state entering the
    segment): ``query_in (Bs, H, nc, C, K) = scale q_t exp(b_t)`` reads the state entering each chunk,
    ``key_out (Bs, H, nc, K, C) = (k_s exp(b_C - b_s))^T`` writes the state leaving it, ``mix (Bd, H, nc, nc)
    = exp(Gamma_c - Gamma_c')`` (c' <= c) sums the chunks' own contributions into the state after chunk c,
    and ``carry() -> (Bd, H, nc) = exp(Gamma_c - Gamma_start)`` decays the state entering the segment (built on
    demand: most segments have none; ``Gamma_c``: G at the end of chunk c). No decay: ``mix``/``carry`` are None
    (plain sums).
    """

    def __init__(self, start, nc, scores, query_in, key_out, mix, carry):
        self.start, self.nc = start, nc
        self.scores, self.query_in, self.key_out, self.mix, self.carry = scores, query_in, key_out, mix, carry

    def states(self, vc: torch.Tensor, S_in: Optional[torch.Tensor], carry: bool = True):
        """For chunked values ``vc (B, H, nc, C, V)``: the states entering each chunk ``(B, H, nc, K, V)`` and
        the state after the segment ``(B, H, K, V)`` (None unless ``carry``)."""
        K, V = self.key_out.shape[-2], vc.shape[-1]
        own = (self.key_out @ vc).flatten(-2)  # (B, H, nc, K*V): each chunk's contribution at its end
        ends = own.cumsum(2) if self.mix is None else self.mix @ own
        if S_in is not None:
            S_flat = S_in.flatten(-2)[:, :, None]  # (B, H, 1, K*V)
            ends = ends + (S_flat if self.carry is None else self.carry()[..., None] * S_flat)
            entering = torch.cat([S_flat, ends[:, :, :-1]], dim=2)
        else:  # nothing enters the first chunk
            entering = torch.nn.functional.pad(ends[:, :, :-1], (0, 0, 1, 0))
        entering = entering.unflatten(-1, (K, V))
        return entering, (ends[:, :, -1].unflatten(-1, (K, V)) if carry else None)


class DecayAttentionPlan:
    """The q/k/decay half of the operator, prepared once and applied to any number of value tensors.

    The CPU path splits ``o = f(q, k, g) v`` in two: :func:`prepare_decay_attention` builds everything that
    depends on q, k and the decay, :meth:`apply` multiplies values in. The model prepares its temporal
    channel (q, k and decay shared by every block) once per forward. Pieces (see :class:`_Segment` for the
    chunked outputs):

    * ``segments``: the chunked form of the outputs; one chunk (C >= T) is the parallel form;
    * ``final_key (Bf, H, K, T) = (k_s exp(G_{L-1} - G_s) [s < L])^T``: the state after each sequence's last
      token ``L - 1`` (``lengths``, default T) in one product, exact for right-padded sequences of any length;
    * ``last_query (B, H, K) = scale q_{L-1}``: the output at the last token only, from the final state.

    Bs, Bd, Bf are 1 where q/k and the decay are shared by the batch (positional channel, per-head decay).
    """

    def __init__(self, T, C, segments, final_key, last_query, decay, last):
        self.T, self.C = T, C
        self.segments, self.final_key, self.last_query = segments, final_key, last_query
        self._decay, self._last = decay, last

    def final_state(self, vh: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
        """State after each sequence's last token, ``(B, H, K, V)``, for head-major values ``vh (B, H, T, V)``."""
        S = self.final_key @ vh
        if h0 is not None:
            if self._decay is None:
                return S + h0
            decay = _decay_exp(self._decay.log_decay_to_last(self._last)).to(S.dtype)
            S = S + decay[..., None, None] * h0
        return S

    def apply(self, v: torch.Tensor, initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
              outputs: str = "all", head_major: bool = False) -> Output:
        """Values ``v: (B, T, H, V)`` in the plan's dtype -> ``(o, final_state (B, H, K, V) or None)``.

        ``outputs="all"``: ``o (B, T, H, V)``; ``"last"``: ``o (B, H, V)`` at each sequence's last token only
        (from its final state: no score matrix is needed); ``"none"``: ``o`` is None. ``head_major``: ``v`` and
        ``o`` are ``(B, H, T, V)`` instead.
        """
        vh = v if head_major else v.transpose(1, 2)  # (B, H, T, V)
        T = vh.shape[2]
        if not vh.is_contiguous():  # once here, instead of inside each product that reads it
            vh = vh.contiguous()
        h0 = initial_state
        S = self.final_state(vh, h0) if (output_final_state or outputs == "last") else None
        if outputs == "last":
            o = (self.last_query.unsqueeze(-2) @ S).squeeze(-2)
        elif outputs == "all":
            if self.segments is None:
                raise ValueError("this DecayAttentionPlan was prepared without all_outputs")
            C = self.C
            pieces, carry = [], h0
            last_segment = self.segments[-1]
            for seg in self.segments:
                stop = min(T, seg.start + seg.nc * C)
                vs = vh[:, :, seg.start:stop] if (seg.start, stop) != (0, T) else vh
                pad = seg.nc * C - (stop - seg.start)
                vc = (torch.nn.functional.pad(vs, (0, 0, 0, pad)) if pad else vs).unflatten(2, (seg.nc, C))
                o = seg.scores @ vc  # (B, H, nc, C, V)
                if seg.query_in is not None:
                    entering, carry = seg.states(vc, carry, seg is not last_segment)
                    # K = 1 (q = k = 1): an outer product, cheaper as a broadcast than as a matmul
                    o = o + (seg.query_in * entering if seg.query_in.shape[-1] == 1 else seg.query_in @ entering)
                pieces.append(o.flatten(2, 3))
            o = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
            o = o[:, :, :T] if o.shape[2] != T else o
            o = o if head_major else o.transpose(1, 2)
        else:
            o = None
        return o, (S if output_final_state else None)


def prepare_decay_attention(
    q: Optional[torch.Tensor],
    k: Optional[torch.Tensor],
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    scale: float = 1.0,
    lengths: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    all_outputs: bool = True,
    last_outputs: bool = False,
    final_state: bool = True,
    initial_state: bool = False,
    value_dim: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> DecayAttentionPlan:
    """Build a :class:`DecayAttentionPlan` (no validation: callers check their inputs).

    Args:
        q, k: ``(Bq, T, H, K)`` in the compute dtype (float32/float64); Bq = 1 shares them with every sequence.
            Both None: ``q = k = 1`` (K = 1), the plain decayed sum ``o_t = sum_{s<=t} exp(G_t - G_s) v_s``;
            ``g`` is then required and ``dtype`` names the compute dtype.
        g: ``(Bg, T, H)`` per-token log-decay (<= 0), or g_gamma: ``(H,)`` per head (or a :class:`HeadDecay` of
            it, reused), or neither.
        scale: multiplies the outputs.
        lengths: ``(B,)`` lengths of right-padded sequences (final states and last outputs are taken at
            ``lengths - 1``), or None (all T).
        chunk_size: C (None: :func:`auto_chunk_size` for key width K and value width ``value_dim``).
        all_outputs / last_outputs / final_state: which of ``apply``'s results will be asked for; only the
            pieces they need are built. initial_state: whether a state will enter the sequences.
    """
    if q is None:
        Bq, (T, H), K = 1, g.shape[1:], 1
        cdt, dev = dtype, g.device
        qh = kh = None
    else:
        Bq, T, H, K = q.shape
        cdt, dev = q.dtype, q.device
        qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # (Bq, H, T, K)
    if scale != 1.0:
        if qh is None:
            raise ValueError("scale needs q")
        qh = qh * scale
    C = min(chunk_size or auto_chunk_size(K, value_dim or K), T)
    if isinstance(g_gamma, HeadDecay):
        decay = g_gamma
    else:
        decay = _TokenDecay(g, cdt) if g is not None else (HeadDecay(g_gamma, T, cdt) if g_gamma is not None else None)
    segments = None
    if all_outputs:
        nc_total = -(-T // C)
        Bs = max(Bq, decay.batch if decay is not None else 1)
        per_segment = max(1, min(MAX_SEGMENT_CHUNKS, SEGMENT_ELEMENTS // (Bs * H * C * C)))
        with_states = nc_total > 1 or initial_state
        segments = [_segment(qh, kh, decay, c0 * C, min(per_segment, nc_total - c0), C, T, H, with_states, cdt, dev)
                    for c0 in range(0, nc_total, per_segment)]
    final_key = last_query = last = None
    if final_state or last_outputs:
        last = lengths.to(device=dev, dtype=torch.long) - 1 if lengths is not None else None
        if decay is not None:
            weights = decay.to_last(last)  # (Bf, H, T)
        elif last is not None:
            weights = (torch.arange(T, device=dev) <= last[:, None]).to(cdt)[:, None, :]  # (B, 1, T)
        else:
            weights = None
        if kh is None:
            final_key = (weights if weights is not None else torch.ones(1, H, T, dtype=cdt, device=dev)).unsqueeze(-2)
        else:
            # transposed before the product: the key comes out (.., K, T) contiguous, as the matmul reads it
            final_key = kh.transpose(-1, -2) if weights is None else kh.transpose(-1, -2) * weights.unsqueeze(-2)
        if last_outputs:
            if qh is None:
                last_query = torch.ones(1, H, 1, dtype=cdt, device=dev)
            elif last is None:
                last_query = qh[:, :, -1]
            else:
                rows = torch.arange(last.numel(), device=dev) if Bq > 1 else torch.zeros_like(last)
                last_query = qh[rows, :, last]  # (B, H, K)
    return DecayAttentionPlan(T, C, segments, final_key, last_query, decay, last)


def _segment(qh, kh, decay, start, nc, C, T, H, with_states, cdt, dev) -> _Segment:
    """The :class:`_Segment` of chunks ``[start, start + nc C)`` (the last one zero-padded past T); ``qh, kh``
    None: q = k = 1."""
    stop = min(T, start + nc * C)
    pad = nc * C - (stop - start)

    def chunked(x):  # (.., H, T, d) -> (.., H, nc, C, d)
        x = x[:, :, start:stop] if (start, stop) != (0, T) else x
        return (torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(2, (nc, C))

    qc = kc = scores = query_in = key_out = mix = carry = None
    if qh is not None:
        qc, kc = chunked(qh), chunked(kh)
        scores = qc @ kc.transpose(-1, -2)
    if decay is None:
        ones = _offsets(C, dev, cdt)[3]
        scores = scores * ones if scores is not None else ones.expand(1, H, nc, C, C)
        if with_states:
            if qc is None:
                qc = kc = torch.ones(1, H, nc, C, 1, dtype=cdt, device=dev)
            query_in, key_out = qc, kc.transpose(-1, -2).contiguous()
        return _Segment(start, nc, scores, query_in, key_out, mix, carry)
    f = decay.chunks(start, stop, nc, C, with_states)
    scores = f["intra"] if scores is None else scores * f["intra"]
    if with_states:
        query_in = f["into"][..., None] if qc is None else qc * f["into"][..., None]
        key_out = (f["out_of"][..., None, :] if kc is None else (kc * f["out_of"][..., None]).transpose(-1, -2))
        key_out, mix, carry = key_out.contiguous(), f["mix"], f["carry"]
    return _Segment(start, nc, scores, query_in, key_out, mix, carry)
