"""The temporal channel's operands from timestamps (SPEC §3): periodic query/key and the decay from time gaps.

The query, key and log-decay depend only on timestamps and the learnable ``b``: :class:`TemporalEncoding`
computes them, as :class:`TemporalFeatures` (q, k, g) or, for the CPU path, as a :class:`PairedHeadsPlan`. A
:class:`~fuxi_linear.layers.TemporalRetention` layer owns one; inside :class:`~fuxi_linear.FuXiLinear` the model
owns the only one and computes them once per forward for all blocks' channels, as the released implementation
does. The decode step's features of one event are in :mod:`fuxi_linear.layers.temporal_step`.

Timestamps are int64 (seconds or milliseconds since the epoch; the periods are in the same unit). The modulo
and the gaps are taken in int64 and only the results are cast to float: a float32 cannot hold an epoch time
to the second. Decreasing timestamps are legal: negative gaps clamp to 0 (no decay, no growth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import default_temporal_periods
from ..derived_cache import inference_cache
from ..ops.channel_prefill import last_tokens, repeat_last, uses_cpu_path, without_autocast
from ..ops.decay_plan import DecayAttentionPlan, prepare_decay_attention
from ..ops.dtypes import cast, compute_dtype
from ..utils import check_int, is_int

__all__ = ["TemporalFeatures", "TemporalEncoding", "PairedHeadsPlan", "temporal_periods", "default_num_periods",
           "resolve_periods", "DEFAULT_NUM_PERIODS"]


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

    def step_sources(self) -> Tuple[torch.Tensor, ...]:
        """The tensors :func:`~fuxi_linear.layers.temporal_step.temporal_step_constants` derives from."""
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
        if uses_cpu_path(backend, timestamps.device):
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
