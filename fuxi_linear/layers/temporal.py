"""Temporal retention (SPEC §3): periodic query/key from timestamps, decay from time gaps.

The query, key and log-decay depend only on timestamps and the learnable ``b``: :class:`TemporalEncoding`
computes them. A :class:`TemporalRetention` layer owns one; inside :class:`~fuxi_linear.FuXiLinear` the model
owns the only one and computes them once per forward for all blocks' channels, as the released implementation
does.

Timestamps are int64 (seconds or milliseconds since the epoch; the periods are in the same unit). The modulo
and the gaps are taken in int64 and only the results are cast to float: a float32 cannot hold an epoch time
to the second. Decreasing timestamps are legal: negative gaps clamp to 0 (no decay, no growth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import default_temporal_periods
from ..ops.fused_block_step import StepChannel, fused_block_step
from ..ops.prefill import (cast, compute_dtype, last_tokens, prefill_decay_attention, repeat_last, uses_plan,
                           without_autocast)
from ..ops.decay_plan import DecayAttentionPlan, prepare_decay_attention
from ..derived_cache import inference_cache
from ..utils import check_int, is_int
from .layer_inputs import (check_lengths, check_sequence, check_state, check_step_input, check_times,
                           final_positions, last_times, mask_padding, pack_rows, packs_rows, state_dtype,
                           unpack_rows)
from .norms import layer_norm
from .retention import check_backend
from .states import TemporalRetentionState


@dataclass
class TemporalFeatures:
    """Shared temporal operands: ``q, k: (..., 2Ht, 2)`` and log-decay ``g: (..., 2Ht)``, float32.

    ``q`` already carries the inclusive decay to the next event (``exp(-lambda_i)``), ``g_i = -lambda_{i-1}``.
    ``plan``: the CPU path's operands (:meth:`TemporalEncoding.prepare`, shared by the blocks of one forward;
    ``q``, ``k``, ``g`` are then None).
    """

    q: Optional[torch.Tensor]
    k: Optional[torch.Tensor]
    g: Optional[torch.Tensor]
    plan: Optional[DecayAttentionPlan] = None

    def select_rows(self, valid: torch.Tensor) -> "TemporalFeatures":
        """The features of the events ``valid (B, T)`` packed as one sequence, ``(1, total, ...)`` (q, k, g only)."""
        return TemporalFeatures(q=self.q[valid][None], k=self.k[valid][None], g=self.g[valid][None])


def temporal_periods(base: int, start: int, stride: int, num_periods: int) -> torch.Tensor:
    """Periods ``T_m = base^(start + m*stride)``, m < num_periods, as int64 ``(Ht,)``."""
    periods = [int(base) ** (int(start) + m * int(stride)) for m in range(num_periods)]
    if any(p <= 0 or p >= 2**62 for p in periods):
        raise ValueError(f"temporal periods must lie in [1, 2^62), got {periods}")
    return torch.tensor(periods, dtype=torch.int64)


#: The most periods a default temporal channel uses (SPEC §3: Ht = 8).
DEFAULT_NUM_PERIODS = 8


def default_num_periods(dim: int) -> int:
    """The most periods up to :data:`DEFAULT_NUM_PERIODS` whose 2Ht heads divide ``dim`` (1 for any even dim)."""
    for n in range(DEFAULT_NUM_PERIODS, 0, -1):
        if dim % (2 * n) == 0:
            return n
    raise ValueError(f"dim={dim} must be even: the temporal channel has 2 x num_periods heads")


def resolve_periods(dim: int, num_periods: Optional[int], periods: Optional[Sequence[int]],
                    timestamp_unit: str) -> torch.Tensor:
    """The periods ``(Ht,)`` int64 of a temporal channel of width ``dim``: ``periods`` as given, or
    ``num_periods`` (default :func:`default_num_periods`) of the ``timestamp_unit`` rule (SPEC §3)."""
    if periods is not None:
        values = periods.tolist() if isinstance(periods, torch.Tensor) else list(periods)
        if not values or not all(is_int(p) and 1 <= p < 2**62 for p in values):
            raise ValueError(f"periods must be a non-empty sequence of ints in [1, 2^62) (in the timestamps' "
                             f"unit), got {periods!r}")
        if num_periods is not None and check_int("num_periods", num_periods) != len(values):
            raise ValueError(f"num_periods={num_periods} does not match the {len(values)} periods given")
        return torch.tensor(values, dtype=torch.int64)
    rule = default_temporal_periods(timestamp_unit)
    n = default_num_periods(dim) if num_periods is None else check_int("num_periods", num_periods)
    return temporal_periods(rule["base"], rule["start"], rule["stride"], n)


class TemporalStepConstants(NamedTuple):
    """What :func:`temporal_step_features` reads besides the events (derived from ``periods`` and
    ``decay_logits``; :meth:`TemporalEncoding.step_constants` caches them).

    ``periods`` int64, ``omega = 2 pi / periods`` float64 and ``log_gamma = ln(sigmoid(b))`` float32, each
    ``(1, 1, Ht)``; ``qk_index (2 x 2Ht x 2,)``: the flat positions of q's and then k's entries in the per-user
    trigonometric row ``[cos theta_k | sin theta_k | cos theta_q | sin theta_q]`` (4Ht,); ``q_decay_index
    (2Ht x 2,)``: the period of each of q's entries; ``q_sign (2Ht, 2)`` float32; ``head_period (2Ht,)``: the
    period of each head; ``max_log_decay``: the clamp of the log-decays.
    """

    periods: torch.Tensor
    omega: torch.Tensor
    log_gamma: torch.Tensor
    qk_index: torch.Tensor
    q_decay_index: torch.Tensor
    q_sign: torch.Tensor
    head_period: torch.Tensor
    max_log_decay: float


def temporal_step_features(c: TemporalStepConstants, t_last: torch.Tensor, t_key: torch.Tensor,
                           t_query: torch.Tensor, dtype: torch.dtype = torch.float32) -> TemporalFeatures:
    """:meth:`TemporalEncoding.features` for one event per user at ``t_key``, after the user's previous event
    at ``t_last`` and before the request at ``t_query`` (``(N,)`` int64 each), in few operations: the two gaps
    in one difference, both phases and both decays in one pass each, q and k gathered at once from one row of
    cosines and sines. The same operations on the same numbers as :meth:`TemporalEncoding.features` (so the
    same values). Returns q, k ``(N, 2Ht, 2)`` in ``dtype`` and g ``(N, 2Ht)`` float32.

    A pure function of its arguments (no caches, no data-dependent control flow): the compiled decode step
    traces it.
    """
    N, H = t_key.shape[0], c.q_sign.shape[0]
    times = torch.stack([t_last, t_key, t_query], dim=-1)  # (N, 3)
    # int64 (t mod T) times float64 omega: the product promotes to float64, as .double() * omega does
    theta = torch.remainder(times[:, 1:].unsqueeze(-1), c.periods) * c.omega  # (N, 2 (key, query), Ht)
    trig = torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1).float().view(N, 2 * H)
    gaps = torch.diff(times, dim=-1).clamp(min=0).unsqueeze(-1)  # (N, 2, 1): from the last event, to the query
    log_decay = (c.log_gamma * (gaps * c.omega).float()).clamp(min=-c.max_log_decay)  # (N, 2, Ht)
    qk = trig.index_select(1, c.qk_index).view(N, 2, H, 2)
    q, k = qk[:, 0], qk[:, 1]  # (not unbind: a compiled graph would fix N to update its output in place)
    q = q.mul_(torch.exp(log_decay[:, 1]).index_select(1, c.q_decay_index).view(N, H, 2).mul_(c.q_sign))
    g = log_decay[:, 0].index_select(1, c.head_period)
    if dtype != torch.float32:
        q, k = q.to(dtype), k.to(dtype)
    return TemporalFeatures(q=q, k=k, g=g)


class TemporalEncoding(nn.Module):
    """Computes the temporal channel's q, k and log-decay from int64 timestamps (once per forward).

    Args:
        periods: int64 ``(Ht,)`` periods in the timestamps' unit.
        learn_decay: learn ``b`` (``gamma = sigmoid(b)``, init N(0, 0.02)); otherwise ``b = 0`` (gamma = 0.5).
        max_log_decay: per-step ``lambda`` is clamped to this bound, keeping log-decays finite (exp(-20) is
            already far below float32 resolution of the weights it multiplies).
    """

    def __init__(self, periods: torch.Tensor, learn_decay: bool = True, max_log_decay: float = 20.0):
        super().__init__()
        periods = periods.to(torch.int64)
        self.num_periods = int(periods.numel())
        self.register_buffer("periods", periods)
        if learn_decay:
            self.decay_logits = nn.Parameter(torch.randn(self.num_periods) * 0.02)  # "b" of SPEC §3
        else:
            self.register_buffer("decay_logits", torch.zeros(self.num_periods))
        self.max_log_decay = float(max_log_decay)

    @property
    def omega(self) -> torch.Tensor:
        """Angular rates ``2 pi / T_m`` ``(Ht,)`` in float64, derived from the periods (never stale)."""
        return (2 * math.pi) / self.periods.double()

    def phases(self, t: torch.Tensor, omega: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``theta_m(t) = omega_m (t mod T_m)``: int64 ``(...)`` -> float64 ``(..., Ht)`` (``omega``: the
        angular rates, when the caller has them already)."""
        return torch.remainder(t.unsqueeze(-1), self.periods).double() * (self.omega if omega is None else omega)

    def log_decay(self, gap: torch.Tensor) -> torch.Tensor:
        """``-lambda = ln(gamma) * omega * max(gap, 0)``, clamped: int64 ``(...)`` -> float32 ``(..., 2Ht)``."""
        g = self.period_log_decay(gap)
        return torch.cat([g, g], dim=-1)

    def period_log_decay(self, gap: torch.Tensor, omega: Optional[torch.Tensor] = None,
                         log_gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`log_decay` once per period (heads m and Ht + m share it): ``(...)`` -> float32 ``(..., Ht)``
        (``omega``, ``log_gamma = logsigmoid(b)``: when the caller has them already)."""
        scaled_gap = (gap.clamp(min=0).unsqueeze(-1).double() * (self.omega if omega is None else omega)).float()
        log_gamma = F.logsigmoid(self.decay_logits.float()) if log_gamma is None else log_gamma
        return (log_gamma * scaled_gap).clamp(min=-self.max_log_decay)

    def features(self, t_key: torch.Tensor, t_query: torch.Tensor, gap_prev: torch.Tensor) -> TemporalFeatures:
        """Operands for events at ``t_key`` whose next event (or request) is at ``t_query``.

        All three arguments are int64 of one shape ``(...)``; ``gap_prev`` is the gap to the previous event.
        """
        theta_k = self.phases(t_key)
        theta_q = self.phases(t_query)
        cos_k, sin_k = torch.cos(theta_k).float(), torch.sin(theta_k).float()
        cos_q, sin_q = torch.cos(theta_q).float(), torch.sin(theta_q).float()
        # heads m < Ht score sin(theta_q - theta_k), heads Ht + m score cos(theta_q - theta_k)
        k = torch.cat([torch.stack([cos_k, sin_k], -1), torch.stack([cos_k, sin_k], -1)], dim=-2)
        q = torch.cat([torch.stack([sin_q, -cos_q], -1), torch.stack([cos_q, sin_q], -1)], dim=-2)
        q = q * torch.exp(self.log_decay(t_query - t_key)).unsqueeze(-1)
        return TemporalFeatures(q=q, k=k, g=self.log_decay(gap_prev))

    def step_constants(self) -> "TemporalStepConstants":
        """The :class:`TemporalStepConstants` of this encoding (cached with the other decode-step operands by
        :meth:`fuxi_linear.FuXiLinear.step_operands`)."""
        Ht, dev = self.num_periods, self.periods.device
        m = torch.arange(Ht, device=dev)
        k_index = torch.stack([m, Ht + m], -1).repeat(2, 1)  # (2Ht, 2): (cos_k, sin_k) in both halves
        q_index = torch.cat([torch.stack([3 * Ht + m, 2 * Ht + m], -1),  # heads m: (sin_q, -cos_q)
                             torch.stack([2 * Ht + m, 3 * Ht + m], -1)])  # heads Ht + m: (cos_q, sin_q)
        q_sign = torch.ones(2 * Ht, 2, device=dev)
        q_sign[:Ht, 1] = -1.0
        head_period = torch.cat([m, m])
        return TemporalStepConstants(
            periods=self.periods.view(1, 1, Ht), omega=self.omega.view(1, 1, Ht),
            log_gamma=F.logsigmoid(self.decay_logits.float()).view(1, 1, Ht),
            qk_index=torch.cat([q_index.flatten(), k_index.flatten()]),
            q_decay_index=head_period.repeat_interleave(2), q_sign=q_sign, head_period=head_period,
            max_log_decay=self.max_log_decay)

    def step_sources(self) -> Tuple[torch.Tensor, ...]:
        """The tensors :meth:`step_constants` derives from."""
        return self.periods, self.decay_logits

    @staticmethod
    def _event_times(timestamps, lengths, query_timestamps):
        """Key times ``t``, query times ``t_next`` and gaps to the previous event, int64 ``(B, T)``; entries past a
        user's length are replaced by the request time, so they have zero gaps and stay finite."""
        T = timestamps.shape[1]
        valid = torch.arange(T, device=timestamps.device) < lengths[:, None]
        t = torch.where(valid, timestamps, query_timestamps[:, None])
        t_next = torch.cat([t[:, 1:], query_timestamps[:, None]], dim=1)
        gap_prev = torch.diff(t, dim=1, prepend=t[:, :1])  # 0 before the first event
        return t, t_next, gap_prev

    def forward(self, timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor) -> TemporalFeatures:
        """Padded histories: ``timestamps (B, T)`` int64, ``lengths (B,)``, ``query_timestamps (B,)`` int64.

        Event i's query time is ``t_{i+1}``, and the request time for the last event. Entries past a user's
        length are replaced by the request time, so they have zero gaps and stay finite.
        """
        return self.features(*self._event_times(timestamps, lengths, query_timestamps))

    def prefill_features(self, timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor,
                         dtype: torch.dtype, backend: str, **plan_options) -> TemporalFeatures:
        """The features of a prefill of padded histories (arguments as :meth:`forward`) on ``backend``: the CPU
        path's :class:`PairedHeadsPlan` for values of ``dtype`` (:meth:`prepare`, with ``plan_options``), else
        q, k and g (:meth:`forward`)."""
        if uses_plan(backend, timestamps.device):
            return self.prepare(timestamps, lengths, query_timestamps, dtype, **plan_options)
        return self(timestamps, lengths, query_timestamps)

    @without_autocast
    def prepare(self, timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor,
                dtype: torch.dtype, ends: Optional[torch.Tensor] = None, all_outputs: bool = True,
                last_outputs: bool = False, final_state: bool = False, ragged: bool = True,
                head_width: int = 1) -> TemporalFeatures:
        """The CPU path's features of padded histories (arguments as :meth:`forward`): only a
        :class:`PairedHeadsPlan` for values of ``dtype`` (``q, k, g`` are None).

        Heads m and Ht + m have the same key and decay (only their queries differ), so the plan is the decayed
        sum ``Z_t = sum_{s<=t} exp(G_t - G_s) U_s`` over the Ht periods, applied to ``U_s = k_s (x) [v_m, v_Ht+m]``
        (see :meth:`TemporalRetention._paired_heads`): no q.k score matrix, half the heads. The arithmetic of
        the phases and decays is :meth:`features`'s, once per time (an event's query time is the next key time). ``ends`` (lengths where final
        states and last outputs are taken, None: all T) and the flags as in
        :func:`fuxi_linear.ops.decay_plan.prepare_decay_attention`; ``ragged=False`` promises that every history
        fills the T columns. ``head_width``: the value width of a temporal head, D / 2Ht.
        """
        T = timestamps.shape[1]
        if ragged:  # entries past a user's length take the request time (zero gaps)
            valid = torch.arange(T, device=timestamps.device) < lengths[:, None]
            timestamps = torch.where(valid, timestamps, query_timestamps[:, None])
        # times of the events and of the request after the last one, (B, T + 1): event i's key time is column i,
        # its query time column i + 1; the gap before column i is column i of the differences (0 before the first)
        times = torch.cat([timestamps, query_timestamps[:, None]], 1)
        gaps = torch.diff(times, dim=1, prepend=times[:, :1])
        cdt = compute_dtype(dtype)
        omega, log_gamma = inference_cache(self, "rates", (self.periods, self.decay_logits), (),
                                           lambda: (self.omega, F.logsigmoid(self.decay_logits.float())))
        theta = self.phases(times, omega)  # (B, T + 1, Ht) float64
        # float32 operands as in :meth:`features` (decode must see the same numbers), then the compute dtype
        cos, sin = torch.cos(theta).float(), torch.sin(theta).float()
        log_decay = self.period_log_decay(gaps, omega, log_gamma)  # (B, T + 1, Ht): [:, :T] per event, [:, 1:] to next
        key = cast(torch.stack([cos[:, :T], sin[:, :T]], -1), cdt)  # (B, T, Ht, 2): (cos, sin) of the key phase
        decay = prepare_decay_attention(None, None, g=log_decay[:, :T], lengths=ends, all_outputs=all_outputs,
                                        last_outputs=last_outputs, final_state=final_state, dtype=cdt,
                                        value_dim=4 * key.shape[-1])
        # queries (B, T, Ht, 2 (key dim), 2 heads): head m scores sin(theta_q - theta_k), head Ht + m
        # cos(theta_q - theta_k), with the inclusive decay to the next event
        cos_q, sin_q = cos[:, 1:], sin[:, 1:]
        query = torch.stack([sin_q, cos_q, -cos_q, sin_q], -1) * torch.exp(log_decay[:, 1:]).unsqueeze(-1)
        query = cast(query, cdt)
        # repeated over the value width, so the products with the state-valued sums are between equal shapes
        # (a CPU is several times slower at broadcasting over a tiny innermost dimension)
        plan = PairedHeadsPlan(
            decay=decay, key=key.transpose(1, 2),  # (B, Ht, T, 2)
            final_key=(decay.final_key * key.permute(0, 2, 3, 1)).flatten(1, 2) if last_outputs else None,
            query=repeat_last(query, head_width).transpose(1, 2).contiguous() if all_outputs else None,
            last_query=repeat_last(last_tokens(query, ends), head_width) if last_outputs else None,
        )
        return TemporalFeatures(q=None, k=None, g=None, plan=plan)


@dataclass
class PairedHeadsPlan:
    """The temporal channel's operands for the CPU path, prepared once per forward (:meth:`TemporalEncoding.prepare`).

    ``decay``: the decayed sum over the Ht periods (q = k = 1); ``key (B, Ht, T, 2)``: the key shared by heads
    m and Ht + m; ``final_key (B, Ht x 2, T)``: the key times its decay to each user's last event (the final
    state from the block's inputs, for ``outputs="last"``); ``query (B, Ht, T, 2 x 2 x w)`` / ``last_query
    (B, Ht, 2 x 2 x w)``: each pair's queries (key dim, head of the pair) repeated over the value width w, at
    every event / at each user's last event. Head-major (Ht before T), the layout the operator computes in.
    """

    decay: DecayAttentionPlan
    key: torch.Tensor
    final_key: Optional[torch.Tensor]
    query: Optional[torch.Tensor]
    last_query: Optional[torch.Tensor]


def _pair_outputs(query: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Each head's output ``sum_k q[k, r] Z[k, r, :]`` from its pair's state-valued sum ``Z (..., 2 x 2 x w)``
    (key dim, head of the pair, value) and the repeated queries of :class:`PairedHeadsPlan` -> ``(..., 2 x w)``."""
    P = query * Z
    half = P.shape[-1] // 2
    return P[..., :half] + P[..., half:]


class TemporalRetention(nn.Module):
    """Temporal retention (SPEC §3) as a layer: ``(B, T, D)`` and int64 times in, ``(B, T, D)`` out.

    ``v = W_v LN(x)`` split into 2Ht heads of width D / 2Ht; heads m and Ht + m score ``sin`` and ``cos`` of
    ``omega_m (t_{i+1} - t_j)``, the phase difference between event i's query time (the next event's time;
    ``query_timestamps`` after a row's last event) and event j's time, weighted by the decay
    ``gamma_m^(omega_m (t_{i+1} - t_j))`` from the time gaps (``gamma = sigmoid(b)``); the output is
    ``y_h = alpha_h o_h + beta_h v_h`` (``skip=True``, the released ``aug_current``) or ``y_h = o_h``
    (``skip=False``: no ``alpha``/``beta`` parameters, the released ML-20M configuration). Periods
    ``omega_m = 2 pi / T_m`` are in the timestamps' unit; phases and gaps are taken in int64.

    Args:
        dim: D (divisible by 2 x num_periods).
        num_periods: Ht (default: the most periods up to 8 that divide D into 2Ht heads).
        periods: explicit int periods in the timestamps' unit (instead of the ``timestamp_unit`` rule).
        timestamp_unit: ``"s"`` (periods 16^0 .. 16^(Ht-1) s) or ``"ms"`` (2^10, 2^13, ... ms), SPEC §3.
        learn_decay: learn ``b`` (init N(0, 0.02)); False: ``b = 0``, gamma = 0.5 (a buffer).
        skip: the ``alpha o + beta v`` output. max_log_decay: clamp of a gap's log-decay.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (as :class:`~fuxi_linear.layers.Retention`).

    Parameters: ``encoding`` (:class:`TemporalEncoding`: the periods and ``b``), ``proj_v`` (D -> D, no bias),
    ``alpha (2Ht)`` N(0, 0.02), ``beta (2Ht)`` ones. Decode state: :class:`TemporalRetentionState`,
    ``2Ht x 2 x D / 2Ht`` plus the last event time per user.

    Inside :class:`~fuxi_linear.FuXiLinear` the query, key and decay depend only on the timestamps and ``b``, so
    the model owns one encoding and its blocks' channels have none (SPEC §3: computed once per forward).
    """

    def __init__(self, dim: int, num_periods: Optional[int] = None, *, periods: Optional[Sequence[int]] = None,
                 timestamp_unit: str = "s", learn_decay: bool = True, skip: bool = True,
                 max_log_decay: float = 20.0, backend: str = "auto"):
        super().__init__()
        check_int("dim", dim)
        resolved = resolve_periods(dim, num_periods, periods, timestamp_unit)
        self._init_channel(dim, int(resolved.numel()), skip, backend)
        if not isinstance(learn_decay, bool):
            raise TypeError(f"learn_decay must be a bool, got {learn_decay!r}")
        self.encoding = TemporalEncoding(resolved, learn_decay, max_log_decay)

    @classmethod
    def _channel_of_block(cls, dim: int, num_periods: int, skip: bool, backend: str) -> "TemporalRetention":
        """The channel of a block whose temporal operands come from elsewhere (FuXiLinear's one encoding): no
        encoding of its own."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._init_channel(dim, num_periods, skip, backend)
        return layer

    def _init_channel(self, dim: int, num_periods: int, skip: bool, backend: str) -> None:
        check_int("num_periods", num_periods)
        if dim % (2 * num_periods):
            raise ValueError(f"dim={dim} must be divisible by 2 * num_periods={2 * num_periods}")
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be a bool, got {skip!r}")
        self.dim, self.num_periods = dim, num_periods
        self.num_heads = 2 * num_periods
        self.skip = skip
        self.backend = check_backend(backend)
        self.register_module("encoding", None)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        if self.skip:
            self.alpha = nn.Parameter(torch.randn(self.num_heads) * 0.02)
            self.beta = nn.Parameter(torch.ones(self.num_heads))
        else:  # registered as None so that the attributes exist and the state dict has no entries for them
            self.register_parameter("alpha", None)
            self.register_parameter("beta", None)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_periods={self.num_periods}, skip={self.skip}"

    # ------------------------------------------------------------------ the layer
    def forward(
        self,
        x: torch.Tensor,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
        return_state: bool = False,
    ):
        """``x (B, T, D)``, ``timestamps (B, T)`` int64, ``query_timestamps (B,)`` int64 (the time of the request
        after each row's last event) -> ``y (B, T, D)``, or ``(y, TemporalRetentionState)`` with
        ``return_state``.

        Event i's query time is event i + 1's time. ``lengths (B,)``: right-padded rows (timestamps past a
        row's length are ignored, ``y`` is zero there, the state is taken at ``lengths - 1``). Decreasing
        times are legal: a negative gap clamps to 0 (no decay).
        """
        encoding = self._require_encoding()
        B, T = check_sequence(x, self.dim, self.proj_v.weight)
        timestamps, query_timestamps = check_times(timestamps, query_timestamps, (B, T), x.device,
                                                   "TemporalRetention")
        lengths = check_lengths(lengths, B, T, x.device)
        x_hat = layer_norm(x)
        if packs_rows(self.backend, x.device, lengths, return_state):
            rows = pack_rows(lengths, T)
            feats = encoding(timestamps, lengths, query_timestamps).select_rows(rows.valid)
            y, s = self._forward_features(x_hat[rows.valid][None], feats, cu_seqlens=rows.cu_seqlens,
                                          output_final_state=True, backend=self.backend)
            y = unpack_rows(y, rows)
        else:
            full = lengths if lengths is not None else torch.full((B,), T, dtype=torch.int64, device=x.device)
            feats = encoding.prefill_features(timestamps, full, query_timestamps, x_hat.dtype, self.backend,
                                              ends=lengths if return_state else None, final_state=return_state,
                                              ragged=lengths is not None, head_width=self.dim // self.num_heads)
            y, s = self._forward_features(x_hat, feats, output_final_state=return_state, backend=self.backend,
                                          lengths=lengths if return_state else None)
            y = mask_padding(y, lengths)
        if not return_state:
            return y
        return y, TemporalRetentionState(temporal=s, last_timestamp=last_times(timestamps, lengths),
                                         position=final_positions(lengths, B, T, x.device))

    def step(
        self,
        x_t: torch.Tensor,
        state: TemporalRetentionState,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, TemporalRetentionState]:
        """One new event per user: ``x_t (N, D)``, its time ``timestamps (N,)`` int64 and the time of the
        request after it ``query_timestamps (N,)`` int64 -> ``(y_t (N, D), state)``; ``state`` is advanced in
        place, O(1) in the history (the decay from the previous event uses ``state.last_timestamp``). Equals the
        last row of :meth:`forward` on the history plus this event. Inference only (no autograd graph)."""
        encoding = self._require_encoding()
        N = check_step_input(x_t, self.dim, self.proj_v.weight)
        timestamps, query_timestamps = check_times(timestamps, query_timestamps, (N,), x_t.device,
                                                   "TemporalRetention.step")
        check_state(state, TemporalRetentionState, self._state_layout(N), x_t.device)
        with torch.no_grad():
            v = self._values(layer_norm(x_t))  # (N, 2Ht, w)
            feats = temporal_step_features(encoding.step_constants(), state.last_timestamp, timestamps,
                                           query_timestamps, v.dtype)
            o = fused_block_step([temporal_step_channel(v, feats, state.temporal)], backend=self.backend,
                                 validate=False)
            y = self._augment(o.view_as(v), v)
            state.last_timestamp.copy_(timestamps)
            state.position.add_(1)
        return y, state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> TemporalRetentionState:
        """All-zero state of ``num_users`` users who have seen nothing yet (their first step's gap decays the
        zero state only, so steps from it equal a forward)."""
        w = self.proj_v.weight
        device = w.device if device is None else torch.device(device)
        zeros = torch.zeros(num_users, dtype=torch.int64, device=device)
        return TemporalRetentionState(
            temporal=torch.zeros(num_users, self.num_heads, 2, self.dim // self.num_heads, dtype=state_dtype(w),
                                 device=device),
            last_timestamp=zeros, position=zeros.clone())

    def _state_layout(self, N: int) -> tuple:
        return (("temporal", (N, self.num_heads, 2, self.dim // self.num_heads), "float"),
                ("last_timestamp", (N,), "int"), ("position", (N,), "int"))

    def _require_encoding(self) -> "TemporalEncoding":
        if self.encoding is None:
            raise RuntimeError("this TemporalRetention is a channel of a FuXiLinear block, whose temporal operands "
                               "the model computes once for all blocks; call the model, or build a "
                               "TemporalRetention(dim, num_periods) of its own")
        return self.encoding

    # ------------------------------------------------------------------ the channel
    def zero_state(self, num_sequences: int, like: torch.Tensor) -> torch.Tensor:
        """An all-zero state ``(N, 2Ht, 2, D / 2Ht)`` on ``like``'s device: float64 for a float64 layer, float32
        otherwise (the dtype of the other channels' states, so that the model's states stack)."""
        dim = self.proj_v.weight.shape[0]
        return torch.zeros(num_sequences, self.num_heads, 2, dim // self.num_heads, device=like.device,
                           dtype=state_dtype(self.proj_v.weight))

    def _values(self, x_hat: torch.Tensor) -> torch.Tensor:
        return F.linear(x_hat, self.proj_v.weight).unflatten(-1, (self.num_heads, -1))

    def _augment(self, o: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``alpha_h o_h + beta_h v_h`` (``o_h`` without the skip connection) for ``o, v (..., 2Ht, w)``, flattened
        to ``(..., D)``."""
        if not self.skip:
            return o.flatten(-2)
        if o.dtype == v.dtype == self.alpha.dtype:
            # alpha, beta repeated over w: a CPU is several times slower at broadcasting a (2Ht, 1) weight
            alpha, beta = inference_cache(self, "augment", (self.alpha, self.beta), (v.shape[-1],), lambda: (
                self.alpha.unsqueeze(-1).repeat(1, v.shape[-1]), self.beta.unsqueeze(-1).repeat(1, v.shape[-1])))
            return torch.addcmul(beta * v, alpha, o).flatten(-2)
        alpha, beta = self.alpha.unsqueeze(-1), self.beta.unsqueeze(-1)
        return (alpha.to(o.dtype) * o + beta.to(v.dtype) * v).flatten(-2)

    def _forward_features(
        self,
        x_hat: torch.Tensor,
        feats: TemporalFeatures,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ):
        """The channel on the block's normalised input with the shared temporal operands: ``x_hat: (B, T, D)``,
        features ``(B, T, 2Ht, ...)`` (or a :class:`PairedHeadsPlan`) -> ``(y: (B, T, D), state | None)``;
        ``outputs="last"``: ``y (B, D)`` at each sequence's last token (``lengths``: right-padded rows)."""
        if feats.plan is not None and outputs == "last":
            return self._last_from_inputs(x_hat, feats.plan, lengths, output_final_state)
        v = self._values(x_hat)
        if feats.plan is not None:
            o, state = self._paired_heads(v, feats, output_final_state, outputs, lengths)
        else:
            o, state = prefill_decay_attention(
                feats.q.to(v.dtype), feats.k.to(v.dtype), v, g=feats.g, lengths=lengths, cu_seqlens=cu_seqlens,
                output_final_state=output_final_state, outputs=outputs, backend=backend,
            )
        if outputs == "last":
            v = last_tokens(v, lengths, cu_seqlens)
        return self._augment(o, v), state

    @without_autocast
    def _paired_heads(self, v, feats: TemporalFeatures, output_final_state, outputs, lengths):
        """The operator on the plan of :meth:`TemporalEncoding.prepare`: heads m and Ht + m share key and decay,
        so ``o_{r Ht + m, t} = q_{r Ht + m, t} . Z_{m, t}[:, r]`` with ``Z_m = sum_s exp(G_t - G_s) k_s (x)
        [v_m, v_{Ht + m}]_s``: ``v (B, T, 2Ht, w)`` -> ``(o, state (B, 2Ht, 2, w) | None)`` as the operator."""
        Ht, w = self.num_heads // 2, v.shape[-1]
        B, T = v.shape[:2]
        plan = feats.plan
        pairs = v.unflatten(2, (2, Ht)).permute(0, 3, 1, 2, 4).reshape(B, Ht, T, 2 * w)  # [v_m, v_Ht+m]
        k = plan.key
        U = torch.cat([k[..., :1] * pairs, k[..., 1:] * pairs], dim=-1)  # (B, Ht, T, 2 x 2 x w): k (x) pair
        Z, S = plan.decay.apply(U, output_final_state=output_final_state, outputs=outputs, head_major=True)
        if outputs == "all":  # (B, Ht, T, 2 heads, w) -> (B, T, 2Ht, w)
            o = _pair_outputs(plan.query, Z).unflatten(-1, (2, w)).permute(0, 2, 3, 1, 4).flatten(2, 3)
        else:
            o = _pair_outputs(plan.last_query, Z).unflatten(-1, (2, w)).transpose(1, 2).flatten(1, 2)
        if S is not None:  # (B, Ht, 1, 2 x 2 x w) -> per head (B, 2Ht, 2, w)
            S = S.squeeze(2).unflatten(-1, (2, 2, w)).permute(0, 3, 1, 2, 4).flatten(1, 2)
        return (o if o.dtype == v.dtype else o.to(v.dtype)), S

    @without_autocast
    def _last_from_inputs(self, x_hat, plan: PairedHeadsPlan, lengths, output_final_state):
        """``outputs="last"`` on the CPU path: as the value projection is linear, each pair's final state
        ``sum_s w_s k_s (x) [v_m, v_Ht+m]_s`` is ``(sum_s w_s k_s (x) x_hat_s)`` times the pair's rows of W_v,
        built from the inputs in one product instead of projecting every event."""
        Ht, D = self.num_heads // 2, x_hat.shape[-1]
        w = D // self.num_heads
        cdt = plan.key.dtype
        Zx = (plan.final_key @ cast(x_hat, cdt)).unflatten(1, (Ht, 2))  # (B, Ht, 2, D)
        W = inference_cache(self, "pair_weights", (self.proj_v.weight,), (cdt,), lambda: cast(
            self.proj_v.weight, cdt).view(2, Ht, w, D).permute(1, 3, 0, 2).reshape(Ht, D, 2 * w))
        Z = (Zx @ W).flatten(-2)  # (B, Ht, 2 (key dim) x 2 heads x w): the state is the output at the last event
        o = _pair_outputs(plan.last_query, Z).unflatten(-1, (2, w)).transpose(1, 2).flatten(1, 2)  # (B, 2Ht, w)
        v_last = self._values(last_tokens(x_hat, lengths))
        y = self._augment(cast(o, v_last.dtype), v_last)
        state = Z.unflatten(-1, (2, 2, w)).permute(0, 3, 1, 2, 4).flatten(1, 2) if output_final_state else None
        return y, state

def temporal_step_channel(v: torch.Tensor, feats: TemporalFeatures, state: torch.Tensor) -> StepChannel:
    """The temporal channel as a fused-decode-step channel: values ``v (N, 2Ht, D/2Ht)``, the features of
    :func:`temporal_step_features` and the state pool ``(P, 2Ht, 2, D/2Ht)``; ``alpha o + beta v`` is the
    caller's."""
    return StepChannel(feats.q, feats.k, v, state, g=feats.g)
