"""Per-user decode state of FuXi-Linear: everything ``step`` needs, O(1) in the history length."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .fingerprint import check_fingerprint, model_fingerprint
from ..user_rows import UserRows
from ..utils import INT_DTYPES, atomic_write

#: ``DecodeState.save`` files: the format name and version they carry.
STATE_FORMAT = "fuxi_linear.DecodeState"
STATE_VERSION = 2


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

    def save(self, path: Union[str, os.PathLike], model: Optional[torch.nn.Module] = None) -> Path:
        """Write the state to ``path`` atomically (a synced temporary file renamed into place: a crash leaves the
        previous file or the complete new one) with a format version and, given the ``model`` that made the
        state, its fingerprint (:func:`fuxi_linear.decoding.fingerprint.model_fingerprint`), which :meth:`load` checks.
        The tensors are saved on the CPU."""
        payload = {"format": STATE_FORMAT, "version": STATE_VERSION,
                   "fingerprint": model_fingerprint(model) if model is not None else None,
                   "tensors": {f.name: getattr(self, f.name).detach().cpu() for f in fields(self)}}
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], model: Optional[torch.nn.Module] = None,
             map_location: Union[str, torch.device] = "cpu", check_model: bool = True) -> "DecodeState":
        """Read a state written by :meth:`save`.

        Given ``model``, the file must carry that model's fingerprint (else ``ValueError``; ``check_model=False``
        skips this) and the state must have its layout. A missing file raises ``FileNotFoundError``; a
        truncated, foreign or newer-format file a ``ValueError`` naming it. Files of the first format (a plain
        dict of the tensors, no fingerprint) still load when no model is given or ``check_model=False``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"decode state file {path} does not exist")
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated or foreign: torch raises zip, pickle and runtime errors
            raise ValueError(f"{path} is not a saved DecodeState: it cannot be read ({type(err).__name__}: "
                             f"{err}); truncated, or another kind of file") from None
        names = {f.name for f in fields(cls)}
        if isinstance(data, dict) and data.get("format") == STATE_FORMAT:
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"{path} is a DecodeState of format version {data.get('version')!r}; this "
                                 f"fuxi-linear reads version {STATE_VERSION}")
            fingerprint, tensors = data.get("fingerprint"), data.get("tensors")
        elif isinstance(data, dict) and set(data) == names:  # version 1: the tensors alone
            fingerprint, tensors = None, data
        else:
            raise ValueError(f"{path} is not a saved DecodeState (expected a fuxi-linear DecodeState file with "
                             f"tensors {sorted(names)})")
        if not isinstance(tensors, dict) or set(tensors) != names or \
                not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError(f"{path} is not a saved DecodeState (expected tensors {sorted(names)})")
        state = cls(**tensors)
        if model is not None:
            check_fingerprint(fingerprint, model, f"decode state {path}", check_model)
            empty = model.empty_state(0, state.device)
            empty.check_same_layout(state, f"decode state {path} does not fit this model")
        return state

