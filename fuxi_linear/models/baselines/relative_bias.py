"""Learned relative-position and bucketed-time bias tables of HSTU and FuXi-α, and the pointwise attention's
normaliser.

For a query at position i (query time ``qt_i`` = the next event's time, see
:func:`fuxi_linear.models.baselines.time_buckets.query_times`) and a key at position j <= i with time ``t_j``:

    pos_bias[i, j]  = w_pos[min(i - j, P - 1)]                 (P = rows of the table = max positions)
    time_bias[i, j] = w_time[time_bucket(qt_i - t_j)]          (bucket in [0, max_bucket])

Entries with j > i are computed (clamped indices) but always masked by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch
import torch.nn as nn

from .config import BaselineConfig
from .time_buckets import time_bucket


@dataclass
class PointwiseAttentionConfig(BaselineConfig):
    """:class:`BaselineConfig` plus the fields of the SiLU-attention models (HSTU, FuXi-α).

    Attributes:
        max_time_bucket: time buckets are clamped to [0, max_time_bucket] (SPEC §9: 128).
        attention_norm: N of ``SiLU(.) / N``: "max_len" (the constant max_seq_len, HSTU's choice) or
            "count" (the number of events the query attends to). See :func:`attention_divisor`.
    """

    max_time_bucket: int = 128
    attention_norm: str = "max_len"

    _POSITIVE_INTS = BaselineConfig._POSITIVE_INTS + ("max_time_bucket",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_norm not in ("max_len", "count"):
            raise ValueError(f"attention_norm must be 'max_len' or 'count', got {self.attention_norm!r}")


class RelativeBias(nn.Module):
    """Per-block tables ``w_pos (P,)`` and ``w_time (max_bucket + 1,)``, init N(0, 0.02) as in HSTU.

    Args:
        num_positions: P, the largest relative distance + 1 (distances beyond are clamped).
        max_bucket: largest time bucket (SPEC §9: 128).
    """

    def __init__(self, num_positions: int, max_bucket: int):
        super().__init__()
        self.max_bucket = max_bucket
        self.pos_weight = nn.Parameter(torch.empty(num_positions).normal_(std=0.02))
        self.time_weight = nn.Parameter(torch.empty(max_bucket + 1).normal_(std=0.02))

    def block_indices(self, query_times: torch.Tensor, timestamps: torch.Tensor, start: int,
                      end: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices for queries ``[start, end)`` against keys ``[0, end)`` of padded histories.

        Args:
            query_times: ``(B, T)`` int64. timestamps: ``(B, T)`` int64.
        Returns:
            ``(relative position (c, e) int64, time bucket (B, c, e) int64)`` with c = end - start, e = end.
        """
        i = torch.arange(start, end, device=timestamps.device)
        j = torch.arange(end, device=timestamps.device)
        rel = (i[:, None] - j[None, :]).clamp(0, self.pos_weight.shape[0] - 1)
        dt = query_times[:, start:end, None] - timestamps[:, None, :end]
        return rel, time_bucket(dt, self.max_bucket)

    def step_indices(self, query_timestamps: torch.Tensor, positions: torch.Tensor, cached_timestamps: torch.Tensor,
                     slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices for one new event per user against cache slots.

        Args:
            query_timestamps: ``(N,)`` int64 query time of the new event. positions: ``(N,)`` its slot.
            cached_timestamps: ``(N, M)`` int64 times in slots [0, M). slots: ``(M,)`` = arange(M).
        Returns:
            ``(relative position (N, M), time bucket (N, M))``, both int64.
        """
        rel = (positions[:, None] - slots[None, :]).clamp(0, self.pos_weight.shape[0] - 1)
        return rel, time_bucket(query_timestamps[:, None] - cached_timestamps, self.max_bucket)

    def maps(self, rel: torch.Tensor, bucket: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Look the indices up in this block's tables: ``(w_pos[rel], w_time[bucket])``, same shapes."""
        return self.pos_weight[rel], self.time_weight[bucket]


def attention_divisor(norm: str, max_seq_len: int, positions: torch.Tensor,
                      dtype: torch.dtype) -> Union[float, torch.Tensor]:
    """Divisor N of ``SiLU(scores) / N`` for queries at ``positions`` (any shape, int64).

    "max_len": the constant ``max_seq_len`` — HSTU's n is the padded sequence length, which in its pipeline
    is the fixed maximum length; using the config value (not this batch's padding) keeps outputs independent
    of how a batch is padded, which encode == prefill + step needs. "count": ``position + 1``, the number
    of events the query attends to (a mean; scale-free in the history length).
    """
    if norm == "max_len":
        return float(max_seq_len)
    return (positions + 1).to(dtype).unsqueeze(-1)
