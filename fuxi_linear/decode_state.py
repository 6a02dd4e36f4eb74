"""Per-user decode state of FuXi-Linear: everything ``step`` needs, O(1) in the history length."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import List, Sequence, Union

import torch


@dataclass
class DecodeState:
    """Channel states of every block plus each user's last event time and next position.

    Attributes:
        retention: ``(L, N, H, dqk, dv)`` float32 — retention state of each block.
        temporal: ``(L, N, 2Ht, 2, D / 2Ht)`` float32 — temporal retention state of each block.
        positional: ``(L, N, 1, P, D)`` float32 — linear positional state of each block.
        last_timestamp: ``(N,)`` int64 — time of each user's last event.
        position: ``(N,)`` int64 — number of events seen, i.e. the position of the next event.

    ``FuXiLinear.step`` advances a state in place. Users are independent rows: :meth:`select` and
    :meth:`cat` move them between pools.
    """

    retention: torch.Tensor
    temporal: torch.Tensor
    positional: torch.Tensor
    last_timestamp: torch.Tensor
    position: torch.Tensor

    _USER_DIM = {"retention": 1, "temporal": 1, "positional": 1, "last_timestamp": 0, "position": 0}

    @property
    def num_users(self) -> int:
        return int(self.position.shape[0])

    @property
    def device(self) -> torch.device:
        return self.position.device

    def _map(self, fn) -> "DecodeState":
        return DecodeState(**{f.name: fn(f.name, getattr(self, f.name)) for f in fields(self)})

    def to(self, device: Union[str, torch.device]) -> "DecodeState":
        return self._map(lambda name, t: t.to(device))

    def clone(self) -> "DecodeState":
        return self._map(lambda name, t: t.clone())

    def select(self, users: Union[torch.Tensor, Sequence[int]]) -> "DecodeState":
        """A new state holding the given users (indices or a boolean mask over users), in that order."""
        index = torch.as_tensor(users, device=self.device)
        if index.dtype == torch.bool:
            if index.shape != (self.num_users,):
                raise ValueError(f"a boolean users mask must have shape ({self.num_users},), got {tuple(index.shape)}")
            index = index.nonzero().squeeze(1)
        if index.dtype not in (torch.int32, torch.int64) or index.ndim != 1:
            raise TypeError(f"users must be a 1-D int or bool index, got dtype {index.dtype} shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -self.num_users or int(index.max()) >= self.num_users):
            raise ValueError(f"users indices must lie in [0, {self.num_users}), got {index.tolist()}")
        return self._map(lambda name, t: t.index_select(self._USER_DIM[name], index.long()))

    @staticmethod
    def cat(states: Sequence["DecodeState"]) -> "DecodeState":
        """Concatenate the users of several states (same model configuration)."""
        if not states:
            raise ValueError("DecodeState.cat needs at least one state")
        first = states[0]
        for s in states[1:]:
            for f in fields(first):
                a, b = getattr(first, f.name), getattr(s, f.name)
                d = DecodeState._USER_DIM[f.name]
                if a.shape[:d] + a.shape[d + 1:] != b.shape[:d] + b.shape[d + 1:] or a.dtype != b.dtype:
                    raise ValueError(f"cannot concatenate states of different shapes in {f.name}: "
                                     f"{tuple(a.shape)} vs {tuple(b.shape)}")
        return DecodeState(**{
            f.name: torch.cat([getattr(s, f.name) for s in states], dim=DecodeState._USER_DIM[f.name])
            for f in fields(first)
        })

    def write_rows(self, rows: Union[torch.Tensor, Sequence[int]], source: "DecodeState") -> "DecodeState":
        """Copy every user of ``source`` into rows ``rows`` of this state (a pool), in place; returns self.

        ``rows``: ``(M,)`` distinct indices in ``[0, num_users)``, M = ``source.num_users``; ``source`` has this
        state's layout (the same model).
        """
        index = torch.as_tensor(rows, device=self.device)
        if index.dtype not in (torch.int32, torch.int64) or index.ndim != 1:
            raise TypeError(f"rows must be a 1-D int index, got dtype {index.dtype} shape {tuple(index.shape)}")
        if not isinstance(source, DecodeState):
            raise TypeError(f"source must be a DecodeState, got {type(source).__name__}")
        if index.numel() != source.num_users:
            raise ValueError(f"rows names {index.numel()} rows for a source of {source.num_users} users")
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(source, f.name)
            d = self._USER_DIM[f.name]
            if a.shape[:d] + a.shape[d + 1:] != b.shape[:d] + b.shape[d + 1:] or a.dtype != b.dtype:
                raise ValueError(f"source does not match this state's layout in {f.name}: {tuple(b.shape)} {b.dtype} "
                                 f"vs {tuple(a.shape)} {a.dtype}")
        if index.numel():
            values = index.tolist()
            if min(values) < 0 or max(values) >= self.num_users or len(set(values)) != len(values):
                raise ValueError(f"rows must be distinct indices in [0, {self.num_users}), got {values}")
        for f in fields(self):
            getattr(self, f.name).index_copy_(self._USER_DIM[f.name], index.long(),
                                              getattr(source, f.name).to(self.device))
        return self

    def nbytes_per_user(self) -> int:
        """Bytes of state one user holds."""
        return sum(t.element_size() * t.numel() for t in self.tensors()) // max(self.num_users, 1)

    def tensors(self) -> List[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def save(self, path: Union[str, os.PathLike]) -> None:
        torch.save({f.name: getattr(self, f.name).cpu() for f in fields(self)}, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "DecodeState":
        data = torch.load(path, map_location=map_location, weights_only=True)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"{path} is not a saved DecodeState (expected keys {sorted(names)})")
        return cls(**data)
