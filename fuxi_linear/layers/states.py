"""Decode states of the public layers: one small typed object per layer, O(1) in the history length.

Each holds its channel state(s) and the counters a step needs: ``position`` (events seen, i.e. the position of
the next event) and, where time matters, ``last_timestamp`` (the time of the last event). Users are rows:
``.to(device)``, ``.clone()``, ``.select(users)``, ``cls.cat([...])`` and ``.nbytes_per_user()`` come from
:class:`~fuxi_linear.user_rows.UserRows`. A layer's ``step`` advances its state in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..user_rows import UserRows

__all__ = ["RetentionState", "TemporalRetentionState", "LinearPositionalState", "FuXiLinearBlockState"]


class _LayerState(UserRows):
    """Rows are users; ``position (N,)`` int64 is every layer state's last field."""

    position: torch.Tensor

    @property
    def num_users(self) -> int:
        return int(self.position.shape[0])

    @property
    def device(self) -> torch.device:
        return self.position.device


@dataclass
class RetentionState(_LayerState):
    """State of :class:`~fuxi_linear.layers.Retention`.

    Attributes:
        retention: ``(N, H, dqk, dv)`` float32 (float64 for a float64 layer): ``sum_s d^(t-s) k_s (x) v_s``.
        position: ``(N,)`` int64, events seen.
    """

    retention: torch.Tensor
    position: torch.Tensor

    _USER_DIM = {"retention": 0, "position": 0}


@dataclass
class TemporalRetentionState(_LayerState):
    """State of :class:`~fuxi_linear.layers.TemporalRetention`.

    Attributes:
        temporal: ``(N, 2Ht, 2, D / 2Ht)`` float32 (float64 for a float64 layer).
        last_timestamp: ``(N,)`` int64, the time of each user's last event (the next step decays by the gap).
        position: ``(N,)`` int64, events seen.
    """

    temporal: torch.Tensor
    last_timestamp: torch.Tensor
    position: torch.Tensor

    _USER_DIM = {"temporal": 0, "last_timestamp": 0, "position": 0}


@dataclass
class LinearPositionalState(_LayerState):
    """State of :class:`~fuxi_linear.layers.LinearPositional`.

    Attributes:
        positional: ``(N, 1, P, D)`` float32 (float64 for a float64 layer).
        position: ``(N,)`` int64, events seen: the table row of the next event.
    """

    positional: torch.Tensor
    position: torch.Tensor

    _USER_DIM = {"positional": 0, "position": 0}


@dataclass
class FuXiLinearBlockState(_LayerState):
    """State of :class:`~fuxi_linear.layers.FuXiLinearBlock`: its three channels' states (one block's slice of
    :class:`~fuxi_linear.DecodeState`) and the two counters.

    Attributes:
        retention: ``(N, H, dqk, dv)``; temporal: ``(N, 2Ht, 2, D / 2Ht)`` (all zero when the block's temporal
            channel is switched off); positional: ``(N, 1, P, D)``; float32 (float64 for a float64 block).
        last_timestamp: ``(N,)`` int64; position: ``(N,)`` int64.
    """

    retention: torch.Tensor
    temporal: torch.Tensor
    positional: torch.Tensor
    last_timestamp: torch.Tensor
    position: torch.Tensor

    _USER_DIM = {"retention": 0, "temporal": 0, "positional": 0, "last_timestamp": 0, "position": 0}
