"""Temporal retention channel (SPEC §3): periodic query/key from timestamps, decay from time gaps.

The query, key and log-decay depend only on timestamps and the learnable ``b``, so :class:`TemporalEncoding`
(owned by the model) computes them once per forward and every block's :class:`TemporalRetentionChannel`
reuses them, as the released implementation does.

Timestamps are int64 (seconds or milliseconds since the epoch; the periods are in the same unit). The modulo
and the gaps are taken in int64 and only the results are cast to float: a float32 cannot hold an epoch time
to the second. Decreasing timestamps are legal: negative gaps clamp to 0 (no decay, no growth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import chunk_decay_attention
from ..ops.fused_block_step import StepChannel, fused_block_step
from .step_cache import DerivedCache


@dataclass
class TemporalFeatures:
    """Shared temporal operands: ``q, k: (..., 2Ht, 2)`` and log-decay ``g: (..., 2Ht)``, float32.

    ``q`` already carries the inclusive decay to the next event (``exp(-lambda_i)``), ``g_i = -lambda_{i-1}``.
    """

    q: torch.Tensor
    k: torch.Tensor
    g: torch.Tensor


def temporal_periods(base: int, start: int, stride: int, num_periods: int) -> torch.Tensor:
    """Periods ``T_m = base^(start + m*stride)``, m < num_periods, as int64 ``(Ht,)``."""
    periods = [int(base) ** (int(start) + m * int(stride)) for m in range(num_periods)]
    if any(p <= 0 or p >= 2**62 for p in periods):
        raise ValueError(f"temporal periods must lie in [1, 2^62), got {periods}")
    return torch.tensor(periods, dtype=torch.int64)


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
        self._step_cache = DerivedCache()

    @property
    def omega(self) -> torch.Tensor:
        """Angular rates ``2 pi / T_m`` ``(Ht,)`` in float64, derived from the periods (never stale)."""
        return (2 * math.pi) / self.periods.double()

    def phases(self, t: torch.Tensor) -> torch.Tensor:
        """``theta_m(t) = omega_m (t mod T_m)``: int64 ``(...)`` -> float64 ``(..., Ht)``."""
        return torch.remainder(t.unsqueeze(-1), self.periods).double() * self.omega

    def log_decay(self, gap: torch.Tensor) -> torch.Tensor:
        """``-lambda = ln(gamma) * omega * max(gap, 0)``, clamped: int64 ``(...)`` -> float32 ``(..., 2Ht)``."""
        scaled_gap = (gap.clamp(min=0).unsqueeze(-1).double() * self.omega).float()
        g = (F.logsigmoid(self.decay_logits.float()) * scaled_gap).clamp(min=-self.max_log_decay)
        return torch.cat([g, g], dim=-1)

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

    def _step_constants(self):
        """What :meth:`step_features` reuses until ``periods`` or ``decay_logits`` change: ``periods``,
        ``omega`` (float64) and ``ln(gamma)`` (float32), each ``(1, 1, Ht)``; the flat index maps that gather
        q and k from the per-user trigonometric row ``[cos theta_k | sin theta_k | cos theta_q | sin theta_q]``
        (4Ht,) and q's decay from ``exp(log-decay to the query)`` (Ht,); q's signs ``(2Ht, 2)``; the period of
        each head ``(2Ht,)``."""

        def compute():
            Ht, dev = self.num_periods, self.periods.device
            m = torch.arange(Ht, device=dev)
            k_index = torch.stack([m, Ht + m], -1).repeat(2, 1)  # (2Ht, 2): (cos_k, sin_k) in both halves
            q_index = torch.cat([torch.stack([3 * Ht + m, 2 * Ht + m], -1),  # heads m: (sin_q, -cos_q)
                                 torch.stack([2 * Ht + m, 3 * Ht + m], -1)])  # heads Ht + m: (cos_q, sin_q)
            q_sign = torch.ones(2 * Ht, 2, device=dev)
            q_sign[:Ht, 1] = -1.0
            head_period = torch.cat([m, m])
            return (self.periods.view(1, 1, Ht), self.omega.view(1, 1, Ht),
                    F.logsigmoid(self.decay_logits.float()).view(1, 1, Ht), k_index.flatten(), q_index.flatten(),
                    head_period.repeat_interleave(2), q_sign, head_period)

        return self._step_cache.get(lambda: (self.periods, self.decay_logits), compute)

    def step_features(self, t_key: torch.Tensor, t_query: torch.Tensor, gap_prev: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> TemporalFeatures:
        """:meth:`features` for one event per user (``(N,)`` int64 each), in fewer operations: both phases and
        both gaps in one pass each, q and k gathered from one row of cosines and sines. The same operations
        on the same numbers as :meth:`features` (so the same values). Returns q, k ``(N, 2Ht, 2)`` in
        ``dtype`` and g ``(N, 2Ht)`` float32. Not differentiable (decode only)."""
        periods, omega, log_gamma, k_index, q_index, q_decay_index, q_sign, head_period = self._step_constants()
        N, H = t_key.shape[0], 2 * self.num_periods
        # int64 (t mod T) times float64 omega: the product promotes to float64, as .double() * omega does
        theta = torch.remainder(torch.stack([t_key, t_query], dim=-1).unsqueeze(-1), periods) * omega  # (N, 2, Ht)
        trig = torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1).float().view(N, 2 * H)
        gaps = torch.stack([t_query - t_key, gap_prev], dim=-1).clamp(min=0).unsqueeze(-1)  # to the query, from the last
        log_decay = (log_gamma * (gaps * omega).float()).clamp(min=-self.max_log_decay)  # (N, 2, Ht)
        q_decay = torch.exp(log_decay[:, 0]).index_select(1, q_decay_index).view(N, H, 2)
        q = trig.index_select(1, q_index).view(N, H, 2).mul_(q_decay.mul_(q_sign))
        k = trig.index_select(1, k_index).view(N, H, 2)
        g = log_decay[:, 1].index_select(1, head_period)
        if dtype != torch.float32:
            q, k = q.to(dtype), k.to(dtype)
        return TemporalFeatures(q=q, k=k, g=g)

    def forward(self, timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor) -> TemporalFeatures:
        """Padded histories: ``timestamps (B, T)`` int64, ``lengths (B,)``, ``query_timestamps (B,)`` int64.

        Event i's query time is ``t_{i+1}``, and the request time for the last event. Entries past a user's
        length are replaced by the request time, so they have zero gaps and stay finite.
        """
        B, T = timestamps.shape
        valid = torch.arange(T, device=timestamps.device)[None, :] < lengths[:, None]
        t = torch.where(valid, timestamps, query_timestamps[:, None])
        t_next = torch.cat([t[:, 1:], query_timestamps[:, None]], dim=1)
        gap_prev = torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:] - t[:, :-1]], dim=1)
        return self.features(t, t_next, gap_prev)


class TemporalRetentionChannel(nn.Module):
    """Per-block part of the temporal channel: values ``v = W_v LN(x)`` split into 2Ht heads, and the
    augmented output ``y_h = alpha_h o_h + beta_h v_h``.

    Decode state: ``(N, 2Ht, 2, D / 2Ht)`` float32.
    """

    def __init__(self, dim: int, num_periods: int):
        super().__init__()
        if dim % (2 * num_periods):
            raise ValueError(f"embedding_dim={dim} must be divisible by 2 * num_periods={2 * num_periods}")
        self.num_heads = 2 * num_periods
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(self.num_heads) * 0.02)
        self.beta = nn.Parameter(torch.ones(self.num_heads))

    def zero_state(self, num_sequences: int, like: torch.Tensor) -> torch.Tensor:
        """An all-zero state ``(N, 2Ht, 2, D / 2Ht)`` float32 on ``like``'s device."""
        dim = self.proj_v.weight.shape[0]
        return torch.zeros(num_sequences, self.num_heads, 2, dim // self.num_heads, device=like.device)

    def _values(self, x_hat: torch.Tensor) -> torch.Tensor:
        return self.proj_v(x_hat).unflatten(-1, (self.num_heads, -1))

    def _augment(self, o: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = self.alpha[:, None].to(o.dtype) * o + self.beta[:, None].to(v.dtype) * v
        return y.flatten(-2)

    def forward(
        self,
        x_hat: torch.Tensor,
        feats: TemporalFeatures,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
    ):
        """``x_hat: (B, T, D)``, features ``(B, T, 2Ht, ...)`` -> ``(y: (B, T, D), state | None)``."""
        v = self._values(x_hat)
        o, state = chunk_decay_attention(
            feats.q.to(v.dtype), feats.k.to(v.dtype), v, g=feats.g,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend,
        )
        return self._augment(o, v), state

    def step_channel(self, v: torch.Tensor, feats: TemporalFeatures, state: torch.Tensor) -> StepChannel:
        """The temporal channel as a fused-decode-step channel: values ``v: (N, 2Ht, D/2Ht)``, features of
        :meth:`TemporalEncoding.step_features`, state pool ``(P, 2Ht, 2, D/2Ht)``. The augmented output
        ``alpha o + beta v`` is left to the caller."""
        return StepChannel(feats.q, feats.k, v, state, g=feats.g)

    def step(self, x_hat: torch.Tensor, feats: TemporalFeatures, state: torch.Tensor, backend: str = "auto",
             state_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x_hat: (N, D)``, features ``(N, 2Ht, ...)``; advances ``state`` in place (rows ``state_indices``
        of a pool, if given); returns ``y: (N, D)``. Not differentiable."""
        v = self._values(x_hat)
        feats = TemporalFeatures(q=feats.q.to(v.dtype), k=feats.k.to(v.dtype), g=feats.g)
        o = fused_block_step([self.step_channel(v, feats, state)], state_indices, backend=backend)
        return self._augment(o.view_as(v), v)
