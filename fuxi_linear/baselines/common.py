"""Pieces shared by the baseline recommenders (and meant to be shared with FuXi-Linear).

Everything that is not the sequence encoder lives here, written once: the input layer
(``sqrt(D) E_item[id] + P_abs[pos]``, dropout, zero at padding), L2-normalised user and item vectors, the
autoregressive sampled-softmax loss (SPEC §6), the per-layer key/value cache used by ``prefill``/``step``,
HSTU's time bucketing, and :class:`SequentialRecommenderBase`, which gives every baseline exactly the public
interface of :class:`fuxi_linear.FuXiLinear` (``encode``, ``prefill``, ``step``, ``loss``, ``score``,
``item_vectors``). A subclass only supplies the blocks: ``_forward`` over padded histories and ``_step`` for
one new event per user.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigDictMixin
from ..history_inputs import INT_DTYPES, check_history, check_step_events
from ..retrieval import SequentialRetrievalMixin, _positive_int, l2_normalize

#: Base of HSTU's logarithmic time buckets: ``floor(ln(max(|dt|, 1)) / TIME_BUCKET_LOG_BASE)`` (SPEC §9).
TIME_BUCKET_LOG_BASE = 0.301

#: Auto query-chunk size of the O(T^2) pointwise attentions keeps one score block below this many elements,
#: so a long prefill does not materialise a (B, H, T, T) tensor at once.
DEFAULT_ATTENTION_BLOCK_ELEMENTS = 1 << 27


# ---------------------------------------------------------------------------------------------- functions
def time_bucket(delta: torch.Tensor, max_bucket: int = 128) -> torch.Tensor:
    """HSTU's logarithmic time bucket ``floor(ln(max(|delta|, 1)) / 0.301)`` clamped to ``[0, max_bucket]``.

    ``delta`` is an int64 tensor of time differences (any shape, any unit). The absolute value and the
    clamp stay in int64 (an epoch-scale difference does not fit a float32 exactly, though its log does);
    the log is taken in float32 — enough, since only its integer part after /0.301 is kept. Returns int64,
    same shape. Examples: 0 or ±1 -> 0, 10 -> 7, 3600 -> 27, 10**12 -> 91, 2**62 -> max_bucket.
    """
    if not isinstance(delta, torch.Tensor) or delta.dtype != torch.int64:
        raise TypeError(f"delta must be an int64 tensor, got {getattr(delta, 'dtype', type(delta).__name__)}")
    # abs() of INT64_MIN overflows to itself: clamp(min=1) then maps it to bucket 0 instead of a crash.
    mag = delta.abs().clamp(min=1).to(torch.float32)
    return torch.floor(torch.log(mag) / TIME_BUCKET_LOG_BASE).clamp(0, max_bucket).long()


def query_times(timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor) -> torch.Tensor:
    """Time each position queries at, ``(B, T)`` int64: the NEXT event's time ``t_{i+1}``, and the request
    time ``query_timestamps[b]`` for a user's last event (and, harmlessly, for padding).

    This is HSTU's convention (its time bias compares the following event's time with each key's) and
    SPEC §3's for FuXi-Linear: the representation at event i is the one used to predict event i+1, so it
    should know when event i+1 happens. In ``step`` the new event's query time is the caller's
    ``query_timestamps``, so decode equals encode when each step's query time is the next event's time.
    """
    B, T = timestamps.shape
    qt = torch.cat([timestamps[:, 1:], query_timestamps[:, None]], dim=1)
    return qt.scatter(1, (lengths.long() - 1)[:, None], query_timestamps[:, None])


def query_chunks(T: int, chunk: int) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of consecutive query blocks; with causal attention block [s, e) needs keys [0, e)."""
    for s in range(0, T, chunk):
        yield s, min(T, s + chunk)


def auto_query_chunk(batch: int, heads: int, T: int, configured: Optional[int]) -> int:
    """Query rows per block so a ``(B, H, chunk, T)`` score block stays under the element budget."""
    if configured is not None:
        return max(1, min(T, configured))
    return max(1, min(T, DEFAULT_ATTENTION_BLOCK_ELEMENTS // max(1, batch * heads * T)))


# ---------------------------------------------------------------------------------------------- config
@dataclass
class BaselineConfig(ConfigDictMixin):
    """Hyper-parameters every baseline shares (model-specific fields live in the subclasses).

    Attributes:
        num_items: catalogue size; ids are 1..num_items, 0 is padding.
        max_seq_len: L, the longest history the model is built for.
        embedding_dim: D. num_blocks: number of blocks. num_heads: H (D must be divisible by H).
        qk_dim: per-head query/key width (default D / H); the per-head value width is D / H.
        dropout: input, attention-output and FFN dropout rate.
        temperature: tau of the sampled softmax and of ``score``. num_negatives: negatives per position.
        absolute_position_table_size: rows of the learned absolute position table (default L + 11, as
            :class:`fuxi_linear.FuXiLinearConfig`, so both models accept the same histories and decode steps).
        query_chunk_size: query rows per attention block in encode/prefill of the O(T^2) models
            (None = automatic, bounded memory).
    """

    num_items: int
    max_seq_len: int = 200
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    qk_dim: Optional[int] = None
    dropout: float = 0.2
    temperature: float = 0.05
    num_negatives: int = 128
    absolute_position_table_size: Optional[int] = None
    query_chunk_size: Optional[int] = None

    _POSITIVE_INTS = ("num_items", "max_seq_len", "embedding_dim", "num_blocks", "num_heads", "num_negatives")

    def __post_init__(self) -> None:
        for name in self._POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}")
        if self.qk_dim is None:
            self.qk_dim = self.embedding_dim // self.num_heads
        for name in ("qk_dim", "absolute_position_table_size", "query_chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.absolute_position_table_size is None:
            self.absolute_position_table_size = self.max_seq_len + 11
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    @property
    def value_dim(self) -> int:
        """Per-head value width D / H."""
        return self.embedding_dim // self.num_heads

    @property
    def max_positions(self) -> int:
        """Events a user's history may hold, in encode and after decode steps."""
        return self.absolute_position_table_size


# ---------------------------------------------------------------------------------------------- cache
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


# ---------------------------------------------------------------------------------------------- base model
class SequentialRecommenderBase(SequentialRetrievalMixin, nn.Module):
    """Embedding, input, loss and scoring shared by the baselines; the interface of ``FuXiLinear``.

    Histories are right-padded: ``item_ids (B, T)`` int64 with 0 after each user's ``lengths[b]`` events,
    ``timestamps (B, T)`` int64 (entries past a length are ignored), ``query_timestamps (B,)`` int64 = time of
    the request after the last event. Subclasses set ``uses_time`` and implement:

    - ``_forward(x (B, T, D), timestamps (B, T), query_times (B, T), cache | None) -> (B, T, D)``: all blocks
      over padded inputs, causal, writing each block's keys/values (slots [0, T)) into ``cache`` when given;
    - ``_step(x (N, D), cache, query_timestamps (N,)) -> (N, D)``: one new event per user whose keys/values
      go to slot ``cache.lengths[n]``; attention covers slots ``[0, cache.max_length]`` (M of them) with
      slots ``> lengths[n]`` masked.
    """

    uses_time: bool = False

    def __init__(self, config: BaselineConfig):
        super().__init__()
        if not isinstance(config, BaselineConfig):
            raise TypeError(f"config must be a BaselineConfig, got {type(config).__name__}")
        self.config = config
        self._init_input_layer(config.num_items, config.embedding_dim, config.max_positions, config.dropout)

    # ------------------------------------------------------------------ to implement
    def _forward(self, x: torch.Tensor, timestamps: torch.Tensor, query_times: torch.Tensor,
                 cache: Optional[KVCache]) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, cache: KVCache, query_timestamps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
    def _prepare(self, item_ids, timestamps, lengths, query_timestamps):
        """Validate, drop columns past the longest history, and neutralise padded timestamps (so garbage
        there can never reach a bias table). Returns ``(x, ts, qt, lengths, used, T)``."""
        c = self.config
        check_history(item_ids, timestamps, lengths, query_timestamps, c.num_items, c.max_positions)
        T = item_ids.shape[1]
        used = int(lengths.max())
        lengths = lengths.long()
        item_ids = item_ids[:, :used].long()
        valid = torch.arange(used, device=item_ids.device)[None, :] < lengths[:, None]
        ts = torch.where(valid, timestamps[:, :used], query_timestamps[:, None])
        qt = query_times(ts, lengths, query_timestamps)
        x = self._embed(item_ids, torch.arange(used, device=item_ids.device)[None, :])
        return x, ts, qt, lengths, used, T

    @property
    def _cache_dims(self) -> Tuple[int, int, int, int]:
        c = self.config
        return c.num_blocks, c.num_heads, c.qk_dim, c.value_dim

    # ------------------------------------------------------------------ full histories
    def encode(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
        packed: bool = False,
    ) -> torch.Tensor:
        """User vectors at every position.

        Args:
            item_ids: ``(B, T)`` int64, 0-padded after each user's ``lengths[b]`` events.
            timestamps: ``(B, T)`` int64; entries past a user's length are ignored.
            lengths: ``(B,)`` int64 in [1, T].
            query_timestamps: ``(B,)`` int64, the time of the request after each user's last event.
            packed: accepted for interface parity with ``FuXiLinear.encode``; the baselines always run the
                padded layout (right padding plus causal attention already keeps padding out of valid rows).
        Returns:
            ``(B, T, D)`` L2-normalised user vectors; zero at padding.
        """
        x, ts, qt, lengths, used, T = self._prepare(item_ids, timestamps, lengths, query_timestamps)
        y = self._forward(x, ts, qt, None)
        y = y * (item_ids[:, :used] != 0).unsqueeze(-1).to(y.dtype)
        return F.pad(l2_normalize(y), (0, 0, 0, T - used))

    # ------------------------------------------------------------------ serving
    def prefill(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
        capacity: Optional[int] = None,
    ) -> Tuple[torch.Tensor, KVCache]:
        """Encode whole histories once; returns the user vector at each user's last event ``(B, D)`` and a
        :class:`KVCache` from which :meth:`step` appends events. Arguments as in :meth:`encode`, plus
        ``capacity``: event slots to preallocate per user (default ``config.max_positions``; at least the
        longest history)."""
        if capacity is None:
            capacity = self.config.max_positions
        _positive_int("capacity", capacity)
        x, ts, qt, lengths, used, _ = self._prepare(item_ids, timestamps, lengths, query_timestamps)
        if capacity < used:
            raise ValueError(f"capacity={capacity} is smaller than the longest history ({used} events)")
        L, H, dqk, dv = self._cache_dims
        cache = KVCache.empty(L, x.shape[0], H, capacity, dqk, dv, self.uses_time, x.dtype, x.device)
        if cache.timestamps is not None:
            cache.timestamps[:, :used] = ts
        y = self._forward(x, ts, qt, cache)
        cache.lengths.copy_(lengths)
        cache.max_length = used
        last = y.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, y.shape[-1])).squeeze(1)
        return l2_normalize(last), cache

    def _check_cache(self, cache: object) -> KVCache:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache (from prefill), got {type(cache).__name__}")
        L, H, dqk, dv = self._cache_dims
        expect = (L, cache.num_users, H, cache.capacity)
        if tuple(cache.keys.shape) != expect + (dqk,) or tuple(cache.values.shape) != expect + (dv,):
            raise ValueError(f"cache does not belong to this model: keys {tuple(cache.keys.shape)}, values "
                             f"{tuple(cache.values.shape)}, expected (L={L}, N, H={H}, C, {dqk} / {dv})")
        if (cache.timestamps is None) == self.uses_time:
            raise ValueError(f"cache {'lacks' if self.uses_time else 'has'} timestamps; it does not belong to "
                             f"{type(self).__name__}")
        return cache

    def step(
        self,
        cache: KVCache,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> Tuple[torch.Tensor, KVCache]:
        """Append one event per user: O(current length) attention against the cache, no re-encode.

        Args:
            cache: from :meth:`prefill` or an earlier step; it is advanced IN PLACE and returned.
            item_ids: ``(N,)`` int64 ids of the new events (no padding: 1..num_items).
            timestamps: ``(N,)`` int64 times of the new events.
            query_timestamps: ``(N,)`` int64 request times after the new events.
        Returns:
            ``(user vectors (N, D), cache)``.
        """
        cache = self._check_cache(cache)
        N = cache.num_users
        check_step_events(item_ids, timestamps, query_timestamps, N, self.config.num_items, "cache", cache.device)
        if cache.max_length >= self.config.max_positions:
            raise ValueError(f"a user would reach position {cache.max_length}, beyond the model's position table "
                             f"({self.config.max_positions} positions); re-prefill the most recent events instead")
        if cache.max_length >= cache.capacity:
            raise ValueError(f"the cache is full (capacity {cache.capacity} events); prefill with a larger capacity")
        positions = cache.lengths
        if cache.timestamps is not None:
            cache.timestamps[torch.arange(N, device=positions.device), positions] = timestamps
        x = self._embed(item_ids.long(), positions)
        y = self._step(x, cache, query_timestamps)
        cache.lengths.add_(1)
        cache.max_length += 1
        return l2_normalize(y), cache

    def _window(self, cache: KVCache) -> Tuple[int, torch.Tensor, torch.Tensor]:
        """For a step: ``M`` slots to attend over (the new event included), the slot indices ``(M,)`` and the
        validity mask ``(N, M)`` (slot j <= the new event's slot)."""
        M = cache.max_length + 1
        slots = torch.arange(M, device=cache.device)
        return M, slots, slots[None, :] <= cache.lengths[:, None]

    @staticmethod
    def _write_step(cache: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one event's ``k (N, H, dqk)``, ``v (N, H, dv)`` in slot ``lengths[n]`` of block ``layer``."""
        rows = torch.arange(cache.num_users, device=cache.device)
        cache.keys[layer, rows, :, cache.lengths] = k
        cache.values[layer, rows, :, cache.lengths] = v


class PointwiseAttentionRecommender(SequentialRecommenderBase):
    """Base of HSTU and FuXi-α: a stack of ``block_class`` blocks with quadratic pointwise attention over
    relative-position and time-bucket biases (prefill in query chunks, decode over the KV cache).

    Subclasses set ``config_class`` and ``block_class``; the block takes
    ``(x, timestamps, query_times, cache, layer, query_chunk)`` and has
    ``step(x, cache, layer, M, mask, rel, bucket)`` and a ``bias`` with ``step_indices``.
    """

    uses_time = True
    config_class: type = BaselineConfig
    block_class: type = nn.Module

    def __init__(self, config: BaselineConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        super().__init__(config)
        self.blocks = nn.ModuleList(self.block_class(config) for _ in range(config.num_blocks))

    def _forward(self, x, timestamps, query_times, cache):
        B, T, _ = x.shape
        chunk = auto_query_chunk(B, self.config.num_heads, T, self.config.query_chunk_size)
        for i, block in enumerate(self.blocks):
            x = block(x, timestamps, query_times, cache, i, chunk)
        return x

    def _step(self, x, cache, query_timestamps):
        M, slots, mask = self._window(cache)
        # Bias indices depend only on positions and times, not on the block: compute them once per step.
        rel, bucket = self.blocks[0].bias.step_indices(query_timestamps, cache.lengths, cache.timestamps[:, :M], slots)
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache, i, M, mask, rel, bucket)
        return x
