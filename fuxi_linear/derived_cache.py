"""Tensors derived from parameters, reused until the parameters change: :class:`DerivedCache` (the decode
step's weights) and :func:`inference_cache` (a prefill's parameter-derived operands).

A decode step is a few hundred tiny operations on a CPU, and a short prefill not many more, so recomputing what
only depends on the weights (concatenated projection matrices, decay factors of the retention heads,
positional scores, ...) at every call costs as much as the call's real work. Both keep such values and
recompute them when a tensor they come from changes:

* in place (an optimizer step, ``load_state_dict``): the tensor's version counter moves;
* its storage (``.to()``, ``.half()``, ``param.data = ...``): its data pointer moves;
* the object itself (``module.weight = nn.Parameter(...)``, ``load_state_dict(assign=True)``): every
  parameter or buffer registration in the process bumps a global epoch (module registration hooks), and
  the caches start over.

Both are only used where no gradient can flow (``FuXiLinear.step``; prefills without autograd), so training
and its gradients never see a cached tensor. Checking a cache costs two attribute reads per source tensor.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_parameter_registration_hook)

T = TypeVar("T")

_epoch = [0]


def _bump_epoch(module, name, tensor):  # registration hook: returns None, so the tensor is kept as given
    _epoch[0] += 1


register_module_parameter_registration_hook(_bump_epoch)
register_module_buffer_registration_hook(_bump_epoch)


def _fingerprint(tensors: Sequence[torch.Tensor]) -> Optional[Tuple]:
    """Storage, version counter and dtype of each tensor: what moves when one is changed in place or moved;
    None for inference tensors (no version counter: never cache what depends on them)."""
    try:
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    except RuntimeError:
        return None


class DerivedCache(Generic[T]):
    """``cache.get(sources, compute)`` returns ``compute()``'s value, recomputed only when a source changes.

    ``sources`` is called (to read the current parameters/buffers the value derives from) only when the value
    is recomputed; ``compute`` runs under ``torch.no_grad()``. The cache is not a module buffer: nothing of it
    is saved in a ``state_dict``.
    """

    def __init__(self) -> None:
        self._epoch = -1
        self._sources: List[torch.Tensor] = []
        self._key: Tuple = ()
        self._value: Optional[T] = None

    @staticmethod
    def registration_epoch() -> int:
        """Counts parameter and buffer registrations in this process (it moves when one is replaced)."""
        return _epoch[0]

    def get(self, sources: Callable[[], Sequence[torch.Tensor]], compute: Callable[[], T]) -> T:
        if self._epoch == _epoch[0] and self._key == _fingerprint(self._sources):
            return self._value  # type: ignore[return-value]
        tensors = list(sources())
        with torch.no_grad():
            value = compute()
        key = _fingerprint(tensors)
        if key is None:
            self.clear()
        else:
            self._epoch, self._sources, self._key, self._value = _epoch[0], tensors, key, value
        return value

    def clear(self) -> None:
        self._epoch, self._sources, self._key, self._value = -1, [], (), None


class _InferenceCache(dict):
    """Per-module store of :func:`inference_cache`: not copied with the module (a copy starts empty) and not
    pickled, so no cached tensor outlives the parameters it was derived from."""

    def __deepcopy__(self, memo):
        return _InferenceCache()

    def __reduce__(self):
        return (_InferenceCache, ())


def inference_cache(owner: torch.nn.Module, name: str, params: Tuple[torch.Tensor, ...], key: tuple,
                    build: Callable[[], Any]) -> Any:
    """``build()``, kept on ``owner`` and reused while ``params`` hold the same values (their storage and version
    counters, and no parameter or buffer registered anywhere since, as :class:`DerivedCache`) and ``key`` is the
    same — only where no gradient can flow (inference); otherwise built every call.

    A prefill's parameter-derived operands (per-head decay factors, positional scores) depend on nothing else;
    on a CPU, at short lengths, building them again costs more than using them.
    """
    if torch.compiler.is_compiling():  # traced: the graph derives them (a Python-side store would break it)
        return build()
    fingerprint = None if torch.is_grad_enabled() else _fingerprint(params)
    if fingerprint is None:
        return build()
    stamp = (key, _epoch[0], torch.is_inference_mode_enabled(), fingerprint)
    cache = owner.__dict__.setdefault("_inference_cache", _InferenceCache())
    hit = cache.get(name)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = build()
    cache[name] = (stamp, value)
    return value
