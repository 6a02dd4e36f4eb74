"""The per-layer key/value cache with which the quadratic baselines decode (``prefill`` fills it, ``step``
appends one event per user in place)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ...user_rows import UserRows


@dataclass
class KVCache(UserRows):
    """Per-layer keys/values of every cached event, preallocated to a fixed capacity and written in place.

    Attributes:
        keys: ``(L, N, H, C, dqk)`` — block l's keys; slot j holds the user's event j (j < lengths[n]).
        values: ``(L, N, H, C, dv)`` — block l's values, same slots.
        lengths: ``(N,)`` int64 — events cached per user = the position of the next event.
        timestamps: ``(N, C)`` int64 times of the cached events (time-aware models), or None.
        max_length: host-side upper bound on ``lengths`` (exact after prefill/step/select/cat). A step
            attends over slots ``[0, max_length]`` only, and checks capacity, without a device sync.

    Users move between caches with ``to``, ``clone``, ``select``, ``cat`` (:class:`~fuxi_linear.user_rows.UserRows`;
    ``nbytes_per_user`` counts the whole preallocated capacity). The (N, H, C, d) per-layer layout is what attention kernels consume directly (a step's query against
    ``keys[l, :, :, :M]`` is one batched matmul or SDPA call). Slots past a user's length hold stale or zero
    values and are masked out; they are never NaN, so masked weights (exact zeros) times them stay zero.
    """

    keys: torch.Tensor
    values: torch.Tensor
    lengths: torch.Tensor
    timestamps: Optional[torch.Tensor] = None
    max_length: int = 0

    _USER_DIM = {"keys": 1, "values": 1, "lengths": 0, "timestamps": 0}

    @classmethod
    def empty(cls, num_layers: int, num_users: int, num_heads: int, capacity: int, qk_dim: int, value_dim: int,
              with_timestamps: bool, dtype: torch.dtype, device: Union[str, torch.device]) -> "KVCache":
        """A zero-filled cache (zeros, not ``torch.empty``: masked slots must hold finite values)."""
        return cls(
            keys=torch.zeros(num_layers, num_users, num_heads, capacity, qk_dim, dtype=dtype, device=device),
            values=torch.zeros(num_layers, num_users, num_heads, capacity, value_dim, dtype=dtype, device=device),
            lengths=torch.zeros(num_users, dtype=torch.int64, device=device),
            timestamps=(torch.zeros(num_users, capacity, dtype=torch.int64, device=device)
                        if with_timestamps else None),
        )

    @property
    def num_users(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[3])

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    def select(self, users: Union[torch.Tensor, Sequence[int]]) -> "KVCache":
        """A new cache holding the given users (int indices or a boolean mask over users), in that order, with
        the exact ``max_length`` of those users (one host read)."""
        picked = super().select(users)
        picked.max_length = int(picked.lengths.max()) if picked.num_users else 0
        return picked

    def _combine_extra(self, items) -> dict:
        return {"max_length": max(c.max_length for c in items)}
