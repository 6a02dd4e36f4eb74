"""Bytes of decode memory: what a user's decode state or KV cache holds, and what one decode step must move."""
from __future__ import annotations

import torch


def kv_cache_bytes_per_user(cache, filled: int) -> int:
    """Bytes one user's KV cache holds at ``filled`` events (keys, values and, for the time-aware models,
    timestamps of each layer), plus its length counter: computed from the cache's dims and dtypes, not the
    preallocated capacity that ``KVCache.nbytes_per_user`` counts."""
    L, _, H, _, dqk = cache.keys.shape
    dv = cache.values.shape[-1]
    per_event = L * H * (dqk * cache.keys.element_size() + dv * cache.values.element_size())
    if cache.timestamps is not None:
        per_event += cache.timestamps.element_size()
    return per_event * filled + cache.lengths.element_size()


def state_bytes_per_user(state, filled: int) -> int:
    """Decode memory per user after ``filled`` events: a DecodeState's (constant), a KV cache's at ``filled``."""
    if hasattr(state, "keys") and hasattr(state, "values"):
        return kv_cache_bytes_per_user(state, filled)
    return int(state.nbytes_per_user())


def decode_bytes_per_user(state, filled: int, embedding_dim: int, dtype: torch.dtype) -> int:
    """Bytes one decode step must move per user, at least: FuXi-Linear reads and writes its state (2x its
    bytes); a KV cache is read at ``filled`` events and one event is written. Plus the inputs (an item id, two
    int64 times) and the output user vector."""
    io = 8 + 2 * 8 + embedding_dim * torch.empty(0, dtype=dtype).element_size()
    if hasattr(state, "keys") and hasattr(state, "values"):
        per_event = kv_cache_bytes_per_user(state, 1) - state.lengths.element_size()
        return kv_cache_bytes_per_user(state, filled) + per_event + io
    return 2 * int(state.nbytes_per_user()) + io
