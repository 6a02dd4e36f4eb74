"""Per-user serving containers (FuXi-Linear's :class:`~fuxi_linear.decoding.decode_state.DecodeState`, the baselines'
:class:`~fuxi_linear.models.baselines.kv_cache.KVCache`): dataclasses of tensors that each hold one row per user along
a known axis. :class:`UserRows` gives them one implementation of moving users around: ``to``, ``clone``,
``select`` (a subset, in a given order), ``cat`` (several containers' users), byte counts.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar, Union

import torch

from .utils import INT_DTYPES

R = TypeVar("R", bound="UserRows")


class UserRows:
    """Mixin for a dataclass whose tensor fields hold users along the axis :attr:`_USER_DIM` names per field.

    Fields not in ``_USER_DIM`` (e.g. a host-side bound) are carried over unchanged by :meth:`to`,
    :meth:`clone` and :meth:`select`, and combined by the subclass's :meth:`_combine_extra` in :meth:`cat`;
    tensor fields may be None (absent), and stay None. The subclass provides ``num_users`` and ``device``.
    """

    _USER_DIM: Dict[str, int] = {}

    # ------------------------------------------------------------------ fields
    def _user_tensors(self) -> Iterator[Tuple[str, torch.Tensor, int]]:
        for name, dim in self._USER_DIM.items():
            value = getattr(self, name)
            if value is not None:
                yield name, value, dim

    def tensors(self) -> List[torch.Tensor]:
        """The tensors that hold users (absent ones skipped)."""
        return [t for _, t, _ in self._user_tensors()]

    def _rebuild(self: R, fn: Callable[[str, torch.Tensor, int], torch.Tensor], **extra: Any) -> R:
        """A new container with ``fn(name, tensor, user_dim)`` in every user tensor, the other fields as they are
        unless given in ``extra``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({name: fn(name, t, dim) for name, t, dim in self._user_tensors()})
        values.update(extra)
        return type(self)(**values)

    # ------------------------------------------------------------------ moves
    def to(self: R, device: Union[str, torch.device]) -> R:
        return self._rebuild(lambda name, t, dim: t.to(device))

    def clone(self: R) -> R:
        return self._rebuild(lambda name, t, dim: t.clone())

    def user_index(self, users: Union[torch.Tensor, Sequence[int]], argument: str = "users") -> torch.Tensor:
        """``users`` (int indices, negatives counting from the end, or a boolean mask over the users) as an
        int64 index in ``[0, num_users)`` on this container's device; a clear error otherwise."""
        n = self.num_users
        index = torch.as_tensor(users, device=self.device)
        if index.dtype == torch.bool:
            if tuple(index.shape) != (n,):
                raise ValueError(f"a boolean {argument} mask must have shape ({n},), got {tuple(index.shape)}")
            index = index.nonzero().squeeze(1)
        if index.dtype not in INT_DTYPES or index.ndim != 1:
            raise TypeError(f"{argument} must be a 1-D int or bool index, got dtype {index.dtype} "
                            f"shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
            raise ValueError(f"{argument} indices must lie in [-{n}, {n}), got {index.tolist()}")
        return torch.where(index < 0, index + n, index).long()  # index_select wants indices >= 0

    def select(self: R, users: Union[torch.Tensor, Sequence[int]]) -> R:
        """A new container holding the given users (indices or a boolean mask over users), in that order (the
        non-tensor fields are carried over as they are)."""
        index = self.user_index(users)
        return self._rebuild(lambda name, t, dim: t.index_select(dim, index))

    @classmethod
    def cat(cls, items: Sequence[R]) -> R:
        """Concatenate the users of several containers of one layout (one model)."""
        if not items:
            raise ValueError(f"{cls.__name__}.cat needs at least one {cls.__name__}")
        first = items[0]
        for other in items[1:]:
            if not isinstance(other, cls):
                raise TypeError(f"{cls.__name__}.cat takes {cls.__name__}s, got {type(other).__name__}")
            first.check_same_layout(other, "cannot concatenate")
        joined = {name: torch.cat([getattr(c, name) for c in items], dim=dim) for name, _, dim in first._user_tensors()}
        return first._rebuild(lambda name, t, dim: joined[name], **first._combine_extra(items))

    def check_same_layout(self, other: "UserRows", what: str) -> None:
        """``other`` holds the same tensors with the same per-user shapes and dtypes, else ``ValueError``."""
        for name, dim in self._USER_DIM.items():
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                raise ValueError(f"{what}: {name} is present in one {type(self).__name__} and absent in the other")
            if a is None:
                continue
            if a.shape[:dim] + a.shape[dim + 1:] != b.shape[:dim] + b.shape[dim + 1:] or a.dtype != b.dtype:
                raise ValueError(f"{what}: different layouts in {name}: {tuple(a.shape)} {a.dtype} vs "
                                 f"{tuple(b.shape)} {b.dtype}")

    def _combine_extra(self, items: Sequence["UserRows"]) -> Dict[str, Any]:
        """Values of the non-tensor fields of :meth:`cat`'s result, from ``items`` (default: the first's)."""
        return {}

    def nbytes_per_user(self) -> int:
        """Bytes one user holds (the whole per-user extent of every tensor, e.g. a cache's full capacity)."""
        return sum(t.element_size() * t.numel() for t in self.tensors()) // max(self.num_users, 1)
