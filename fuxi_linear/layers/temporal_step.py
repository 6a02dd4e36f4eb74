"""The temporal channel in a decode step: the features of one new event per user, in few operations.

:func:`temporal_step_features` computes what :meth:`TemporalEncoding.features
<fuxi_linear.layers.temporal_encoding.TemporalEncoding.features>` computes for a history, for one event after the
user's previous one and before the request, from the encoding's :class:`TemporalStepConstants`
(:func:`temporal_step_constants`); :func:`temporal_step_channel` makes the channel's operands for the fused
decode step, :func:`temporal_cpu_operands` those of the FuXi block's CPU step (laid out once for all blocks).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..ops.step_channel import StepChannel
from .temporal_encoding import TemporalEncoding, TemporalFeatures

__all__ = ["TemporalStepConstants", "temporal_step_constants", "temporal_step_features", "temporal_step_channel",
           "TemporalCpuOperands", "temporal_cpu_operands"]


class TemporalStepConstants(NamedTuple):
    """What :func:`temporal_step_features` reads besides the events (derived from ``periods`` and
    ``decay_logits``; :func:`temporal_step_constants` builds them).

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


def temporal_step_constants(encoding: TemporalEncoding) -> TemporalStepConstants:
    """The :class:`TemporalStepConstants` of ``encoding`` (derived from :meth:`TemporalEncoding.step_sources`;
    cached with the other decode-step operands by :meth:`fuxi_linear.FuXiLinear.step_operands`)."""
    Ht, dev = encoding.num_periods, encoding.periods.device
    m = torch.arange(Ht, device=dev)
    k_index = torch.stack([m, Ht + m], -1).repeat(2, 1)  # (2Ht, 2): (cos_k, sin_k) in both halves
    q_index = torch.cat([torch.stack([3 * Ht + m, 2 * Ht + m], -1),  # heads m: (sin_q, -cos_q)
                         torch.stack([2 * Ht + m, 3 * Ht + m], -1)])  # heads Ht + m: (cos_q, sin_q)
    q_sign = torch.ones(2 * Ht, 2, device=dev)
    q_sign[:Ht, 1] = -1.0
    head_period = torch.cat([m, m])
    return TemporalStepConstants(
        periods=encoding.periods.view(1, 1, Ht), omega=encoding.omega.view(1, 1, Ht),
        log_gamma=F.logsigmoid(encoding.decay_logits.float()).view(1, 1, Ht),
        qk_index=torch.cat([q_index.flatten(), k_index.flatten()]),
        q_decay_index=head_period.repeat_interleave(2), q_sign=q_sign, head_period=head_period,
        max_log_decay=encoding.max_log_decay)


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


def temporal_step_channel(v: torch.Tensor, feats: TemporalFeatures, state: torch.Tensor) -> StepChannel:
    """The temporal channel as a fused-decode-step channel: values ``v (N, 2Ht, D/2Ht)``, the features of
    :func:`temporal_step_features` and the state pool ``(P, 2Ht, 2, D/2Ht)``; ``alpha o + beta v`` is the
    caller's."""
    return StepChannel(feats.q, feats.k, v, state, g=feats.g)


class TemporalCpuOperands(NamedTuple):
    """The temporal channel's operands of one decode step on the CPU path, shared by every block: ``q, k (N, 2Ht,
    2, 1)`` and ``decay = exp(g)`` ``(N, 2Ht, 1, 1)``, in the state's dtype (what
    :func:`~fuxi_linear.ops.fused_block_step.advance_channel_cpu` reads)."""

    q: torch.Tensor
    k: torch.Tensor
    decay: torch.Tensor


def temporal_cpu_operands(feats: TemporalFeatures, dtype: torch.dtype) -> TemporalCpuOperands:
    """The features of :func:`temporal_step_features` laid out for the CPU path's state update in the state
    ``dtype``, once per step instead of once per block (the same numbers as the fused step's CPU path reads)."""
    q, k, g = feats.q, feats.k, feats.g
    N, H = g.shape
    if q.dtype != dtype:
        q, k = q.to(dtype), k.to(dtype)
    return TemporalCpuOperands(q.unsqueeze(-1), k.unsqueeze(-1),
                               torch.exp(g if g.dtype == dtype else g.to(dtype)).view(N, H, 1, 1))
