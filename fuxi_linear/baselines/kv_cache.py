"""The per-layer key/value cache with which the quadratic baselines decode (``prefill`` fills it, ``step``
appends one event per user in place)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Union

import torch

from ..utils import INT_DTYPES


@dataclass
class KVCache:
    """Per-layer keys/values of every cached event, preallocated to a fixed capacity and written in place.

    Attributes:
        keys: ``(L, N, H, C, dqk)`` — block l's keys; slot j holds the user's event j (j < lengths[n]).
        values: ``(L, N, H, C, dv)`` — block l's values, same slots.
        lengths: ``(N,)`` int64 — events cached per user = the position of the next event.
        timestamps: ``(N, C)`` int64 times of the cached events (time-aware models), or None.
        max_length: host-side upper bound on ``lengths`` (exact after prefill/step/select/cat). A step
            attends over slots ``[0, max_length]`` only, and checks capacity, without a device sync.

    The (N, H, C, d) per-layer layout is what attention kernels consume directly (a step's query against
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

    def tensors(self) -> List[torch.Tensor]:
        return [t for t in (self.keys, self.values, self.lengths, self.timestamps) if t is not None]

    def _map(self, fn, max_length: Optional[int] = None) -> "KVCache":
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if f.name == "max_length" or value is None else fn(f.name, value)
        if max_length is not None:
            out["max_length"] = max_length
        return KVCache(**out)

    def to(self, device: Union[str, torch.device]) -> "KVCache":
        return self._map(lambda name, t: t.to(device))

    def clone(self) -> "KVCache":
        return self._map(lambda name, t: t.clone())

    def select(self, users: Union[torch.Tensor, Sequence[int]]) -> "KVCache":
        """A new cache holding the given users (int indices or a boolean mask over users), in that order."""
        index = torch.as_tensor(users, device=self.device)
        if index.dtype == torch.bool:
            if tuple(index.shape) != (self.num_users,):
                raise ValueError(f"a boolean users mask must have shape ({self.num_users},), got {tuple(index.shape)}")
            index = index.nonzero().squeeze(1)
        if index.dtype not in INT_DTYPES or index.ndim != 1:
            raise TypeError(f"users must be a 1-D int or bool index, got dtype {index.dtype} "
                            f"shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -self.num_users or int(index.max()) >= self.num_users):
            raise ValueError(f"users indices must lie in [0, {self.num_users}), got {index.tolist()}")
        index = torch.where(index < 0, index + self.num_users, index).long()  # index_select wants >= 0
        lengths = self.lengths.index_select(0, index)
        max_length = int(lengths.max()) if lengths.numel() else 0
        return self._map(lambda name, t: t.index_select(self._USER_DIM[name], index), max_length)

    @staticmethod
    def cat(caches: Sequence["KVCache"]) -> "KVCache":
        """Concatenate the users of several caches of one model and one capacity."""
        if not caches:
            raise ValueError("KVCache.cat needs at least one cache")
        first = caches[0]
        for c in caches[1:]:
            if (c.timestamps is None) != (first.timestamps is None):
                raise ValueError("cannot concatenate caches with and without timestamps")
            for a, b, name in ((first.keys, c.keys, "keys"), (first.values, c.values, "values")):
                if a.shape[:1] + a.shape[2:] != b.shape[:1] + b.shape[2:] or a.dtype != b.dtype:
                    raise ValueError(f"cannot concatenate caches of different shapes in {name}: "
                                     f"{tuple(a.shape)} vs {tuple(b.shape)}")
        joined = {}
        for name, dim in KVCache._USER_DIM.items():
            if getattr(first, name) is not None:
                joined[name] = torch.cat([getattr(c, name) for c in caches], dim=dim)
        return KVCache(**joined, max_length=max(c.max_length for c in caches))

    def nbytes_per_user(self) -> int:
        """Bytes one user holds in this cache, counting the whole preallocated capacity."""
        return sum(t.element_size() * t.numel() for t in self.tensors()) // max(self.num_users, 1)
