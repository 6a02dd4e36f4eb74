"""Per-user decode state of FuXi-Linear: everything ``step`` needs, O(1) in the history length."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Sequence, Union

import torch

from .user_rows import UserRows
from .utils import INT_DTYPES


@dataclass
class DecodeState(UserRows):
    """Channel states of every block plus each user's last event time and next position.

    Attributes:
        retention: ``(L, N, H, dqk, dv)`` float32 — retention state of each block.
        temporal: ``(L, N, 2Ht, 2, D / 2Ht)`` float32 — temporal retention state of each block.
        positional: ``(L, N, 1, P, D)`` float32 — linear positional state of each block.
        last_timestamp: ``(N,)`` int64 — time of each user's last event.
        position: ``(N,)`` int64 — number of events seen, i.e. the position of the next event.

    ``FuXiLinear.step`` advances a state in place. Users are independent rows: ``select``, ``cat`` (from
    :class:`~fuxi_linear.user_rows.UserRows`) and :meth:`write_rows` move them between pools.
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

    def write_rows(self, rows: Union[torch.Tensor, Sequence[int]], source: "DecodeState") -> "DecodeState":
        """Copy every user of ``source`` into rows ``rows`` of this state (a pool), in place; returns self.

        ``rows``: ``(M,)`` distinct indices in ``[0, num_users)``, M = ``source.num_users``; ``source`` has this
        state's layout (the same model).
        """
        index = torch.as_tensor(rows, device=self.device)
        if index.dtype not in INT_DTYPES or index.ndim != 1:
            raise TypeError(f"rows must be a 1-D int index, got dtype {index.dtype} shape {tuple(index.shape)}")
        if not isinstance(source, DecodeState):
            raise TypeError(f"source must be a DecodeState, got {type(source).__name__}")
        if index.numel() != source.num_users:
            raise ValueError(f"rows names {index.numel()} rows for a source of {source.num_users} users")
        self.check_same_layout(source, "source does not match this state's layout")
        if index.numel():
            values = index.tolist()
            if min(values) < 0 or max(values) >= self.num_users or len(set(values)) != len(values):
                raise ValueError(f"rows must be distinct indices in [0, {self.num_users}), got {values}")
        for name, t, dim in self._user_tensors():
            t.index_copy_(dim, index.long(), getattr(source, name).to(self.device))
        return self

    def save(self, path: Union[str, os.PathLike]) -> None:
        torch.save({f.name: getattr(self, f.name).cpu() for f in fields(self)}, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "DecodeState":
        data = torch.load(path, map_location=map_location, weights_only=True)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"{path} is not a saved DecodeState (expected keys {sorted(names)})")
        return cls(**data)
