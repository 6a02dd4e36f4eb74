"""The base classes of the baselines: :class:`SequentialRecommenderBase` gives every baseline exactly the public
interface of :class:`fuxi_linear.FuXiLinear` (``encode``, ``prefill``, ``step``, ``loss``, ``score``,
``item_vectors``) on top of the shared input layer, loss and scoring of :mod:`fuxi_linear.embedding_scoring_loss`; a
subclass only supplies the blocks (``_forward`` over padded histories, ``_step`` for one new event per user).
:class:`PointwiseAttentionRecommender` is the common stack of HSTU and FuXi-alpha.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...history_inputs import check_history, check_step_events
from ...embedding_scoring_loss import SequentialRetrievalMixin, l2_normalize
from ...utils import check_int
from .compiled_step import CompiledKVStep
from .config import BaselineConfig
from .kv_cache import KVCache
from .time_buckets import query_times

#: Auto query-chunk size of the O(T^2) pointwise attentions keeps one score block below this many elements,
#: so a long prefill does not materialise a (B, H, T, T) tensor at once.
DEFAULT_ATTENTION_BLOCK_ELEMENTS = 1 << 27


def query_chunks(T: int, chunk: int) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of consecutive query blocks; with causal attention block [s, e) needs keys [0, e)."""
    for s in range(0, T, chunk):
        yield s, min(T, s + chunk)


def auto_query_chunk(batch: int, heads: int, T: int, configured: Optional[int]) -> int:
    """Query rows per block so a ``(B, H, chunk, T)`` score block stays under the element budget."""
    if configured is not None:
        return max(1, min(T, configured))
    return max(1, min(T, DEFAULT_ATTENTION_BLOCK_ELEMENTS // max(1, batch * heads * T)))


def _slot_index(lengths: torch.Tensor, layer: int, heads: int) -> Tuple[torch.Tensor, ...]:
    """Indices ``(layer, user, head, slot)``, each ``(N, H)``, of slot ``lengths[n]`` of block ``layer`` in a
    ``(L, N, H, C, d)`` cache tensor."""
    N = lengths.shape[0]
    users = torch.arange(N, device=lengths.device)[:, None].expand(N, heads)
    return (torch.full((N, heads), layer, dtype=torch.int64, device=lengths.device), users,
            torch.arange(heads, device=lengths.device)[None, :].expand(N, heads), lengths[:, None].expand(N, heads))


class StepWindow(NamedTuple):
    """What a decode step of a KV-cache model reads and writes, as plain tensors (a traceable argument of
    :meth:`SequentialRecommenderBase.decode_step`).

    ``keys (L, N, H, C, dqk)``, ``values (L, N, H, C, dv)``, ``lengths (N,)`` int64 and ``timestamps (N, C)``
    int64 (or None) are the :class:`KVCache`'s tensors; ``slots (M,)`` = ``arange(M)``: the step attends over
    cache slots ``[0, M)``, its size the only length the step's code sees; ``mask (N, M)``: slot ``j <= lengths[n]``
    (the new event's slot included).
    """

    keys: torch.Tensor
    values: torch.Tensor
    lengths: torch.Tensor
    timestamps: Optional[torch.Tensor]
    slots: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> int:
        """M, the slots attended over."""
        return self.slots.shape[0]


class SequentialRecommenderBase(SequentialRetrievalMixin, nn.Module):
    """Embedding, input, loss and scoring shared by the baselines; the interface of ``FuXiLinear``.

    Histories are right-padded: ``item_ids (B, T)`` int64 with 0 after each user's ``lengths[b]`` events,
    ``timestamps (B, T)`` int64 (entries past a length are ignored), ``query_timestamps (B,)`` int64 = time of
    the request after the last event. Subclasses set ``uses_time`` and implement:

    - ``_forward(x (B, T, D), timestamps (B, T), query_times (B, T), cache | None) -> (B, T, D)``: all blocks
      over padded inputs, causal, writing each block's keys/values (slots [0, T)) into ``cache`` when given;
    - ``_step(x (N, D), window, query_timestamps (N,)) -> (N, D)``: one new event per user whose keys/values
      go to slot ``window.lengths[n]``; attention covers the slots ``[0, M)`` of the :class:`StepWindow`
      with slots ``> lengths[n]`` masked.

    :meth:`compile_step` runs the decode steps of CPU caches through ``torch.compile`` (one graph for every
    history length), as :meth:`fuxi_linear.FuXiLinear.compile_step` does for FuXi-Linear.
    """

    uses_time: bool = False

    def __init__(self, config: BaselineConfig):
        super().__init__()
        if not isinstance(config, BaselineConfig):
            raise TypeError(f"config must be a BaselineConfig, got {type(config).__name__}")
        self.config = config
        self._init_input_layer(config.num_items, config.embedding_dim, config.max_positions, config.dropout)
        self._compiled_step: Optional[CompiledKVStep] = None  # see compile_step

    # ------------------------------------------------------------------ to implement
    def _forward(self, x: torch.Tensor, timestamps: torch.Tensor, query_times: torch.Tensor,
                 cache: Optional[KVCache]) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, window: StepWindow, query_timestamps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
    def _prepare(self, item_ids, timestamps, lengths, query_timestamps):
        """Validate, drop columns past the longest history, and neutralise padded timestamps (so garbage
        there can never reach a bias table). Returns ``(x, ts, qt, lengths, used, T)``."""
        c = self.config
        _, used = check_history(item_ids, timestamps, lengths, query_timestamps, c.num_items, c.max_positions)
        T = item_ids.shape[1]
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
        check_int("capacity", capacity)
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
        compiled = self._compiled_step if cache.device.type == "cpu" else None
        slots = torch.arange(cache.max_length + 1, device=cache.device)  # the filled slots and the new event's
        args = (item_ids, timestamps, query_timestamps, cache.keys, cache.values, cache.lengths, cache.timestamps,
                slots)
        user = compiled(self.decode_step, args) if compiled is not None else self.decode_step(*args)
        cache.max_length += 1
        return user, cache

    def decode_step(self, item_ids: torch.Tensor, timestamps: torch.Tensor, query_timestamps: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                    cached_timestamps: Optional[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """The tensor work of :meth:`step`, unchecked: one event per user written to slot ``lengths[n]`` of the
        cache tensors (keys, values and timestamps, in place), attention over slots ``[0, M)``, ``lengths``
        advanced by one. Every size comes from a shape (``slots (M,)`` = ``arange(M)``) and nothing is read back
        on the host, so ``torch.compile`` traces it as one graph with M symbolic (:meth:`compile_step`).

        Shapes as in :class:`StepWindow`; ``item_ids, timestamps, query_timestamps: (N,)``. Returns the
        L2-normalised user vectors ``(N, D)``.
        """
        N, M = lengths.shape[0], slots.shape[0]
        if cached_timestamps is not None:  # in place, as the keys and values (see _write_step)
            cached_timestamps.index_put_((torch.arange(N, device=lengths.device), lengths), timestamps)
            cached_timestamps = cached_timestamps[:, :M]
        window = StepWindow(keys, values, lengths, cached_timestamps, slots, slots[None, :] <= lengths[:, None])
        y = self._step(self._embed(item_ids.long(), lengths), window, query_timestamps)
        lengths.add_(1)
        return l2_normalize(y)

    def compile_step(self, enabled: bool = True, options: Optional[dict] = None) -> "SequentialRecommenderBase":
        """Run :meth:`step` on CPU caches through ``torch.compile``: :meth:`decode_step` as one inductor graph
        for every history length and batch size above 1 (the attended slots M, the capacity and the batch are
        symbolic sizes, so a step whose M grows by one per event does not compile again); the checks stay
        eager, as in :meth:`fuxi_linear.FuXiLinear.compile_step`. Returns ``self``.

        The first step compiles (seconds to tens of seconds on a small CPU); a compile failure warns once and
        the steps run eagerly (``compiled_step.active`` turns False, ``compiled_step.failure`` says why).
        ``enabled=False`` switches back to eager steps; ``options``: inductor options (on top of
        :data:`~fuxi_linear.models.baselines.compiled_step.DEFAULT_OPTIONS`).

        The step attends over the filled slots only (a size that changes at every step, symbolic in the graph)
        rather than over the whole preallocated capacity with a length mask (fixed sizes): at the bench's
        capacities (T + a few dozen) the two timed alike (within 3% at T = 256, 2048 and 8192 for all three
        models, the CPU bench model, B=4, 1 thread, on a shared and busy 2-core CPU), and only the filled
        window keeps a step's work proportional to the history when the capacity is larger.
        """
        self._compiled_step = CompiledKVStep(options) if enabled else None
        return self

    @property
    def compiled_step(self) -> Optional[CompiledKVStep]:
        """The :class:`~fuxi_linear.models.baselines.compiled_step.CompiledKVStep` after :meth:`compile_step`, None
        while steps run eagerly."""
        return self._compiled_step

    @staticmethod
    def _write_step(window: StepWindow, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one event's ``k (N, H, dqk)``, ``v (N, H, dv)`` in slot ``lengths[n]`` of block ``layer``.

        Eagerly, an indexed assignment into block ``layer``'s view (the fastest form: ~10 us). Traced by
        ``torch.compile``, that assignment into a view is functionalised into copies of the whole cache per
        step (O(C) bytes moved for an O(1) write: slower than the eager step from T ~ 1000 on), so the compiled
        step writes with one ``index_put_`` into the whole cache tensor, an index per dimension
        (:func:`_slot_index`), which inductor does in place (eagerly it costs ~15 us more per write)."""
        if torch.compiler.is_compiling():
            index = _slot_index(window.lengths, layer, window.keys.shape[2])
            window.keys.index_put_(index, k)
            window.values.index_put_(index, v)
            return
        rows = torch.arange(window.lengths.shape[0], device=window.lengths.device)
        window.keys[layer, rows, :, window.lengths] = k
        window.values[layer, rows, :, window.lengths] = v

    @staticmethod
    def _cached(window: StepWindow, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Block ``layer``'s keys and values over the attended slots, ``(N, H, M, d)`` views."""
        M = window.size
        return window.keys[layer, :, :, :M], window.values[layer, :, :, :M]


class PointwiseAttentionRecommender(SequentialRecommenderBase):
    """Base of HSTU and FuXi-α: a stack of ``block_class`` blocks with quadratic pointwise attention over
    relative-position and time-bucket biases (prefill in query chunks, decode over the KV cache).

    Subclasses set ``config_class`` and ``block_class``; the block takes
    ``(x, timestamps, query_times, cache, layer, query_chunk)`` and has
    ``step(x, window, layer, rel, bucket)`` and a ``bias`` with ``step_indices``.
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

    def _step(self, x, window, query_timestamps):
        # Bias indices depend only on positions and times, not on the block: compute them once per step.
        rel, bucket = self.blocks[0].bias.step_indices(query_timestamps, window.lengths, window.timestamps,
                                                       window.slots)
        for i, block in enumerate(self.blocks):
            x = block.step(x, window, i, rel, bucket)
        return x
