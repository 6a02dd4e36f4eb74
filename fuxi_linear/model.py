"""The FuXi-Linear model (SPEC §6): item/position embeddings, L blocks, L2-normalised user vectors,
sampled-softmax training and O(1)-per-event decode."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import FuXiLinearConfig
from .decoding.decode_state import DecodeState
from .history_inputs import check_history, check_step_events
from .ops.value_checks import ValueChecks, add_distinct_rows_check, resolve_value_check_mode
from .layers.block import FuXiLinearBlock
from .derived_cache import DerivedCache
from .layers.temporal_encoding import TemporalEncoding, temporal_periods
from .layers.temporal_step import temporal_step_constants
from .ops.channel_prefill import uses_cpu_path
from .ops.dtypes import cast
from .embedding_scoring_loss import SequentialRetrievalMixin, l2_normalize
from .decoding.decode_step import ModelStepOperands, decode_step
from .decoding.compiled_step import CompiledDecodeStep


_STATE_FLOATS = (torch.float32, torch.float64)
_STATE_INTS = (torch.int64,)


class FuXiLinear(SequentialRetrievalMixin, nn.Module):
    """FuXi-Linear sequential recommender.

    Histories are right-padded: ``item_ids (B, T)`` int64 with 0 after each user's ``lengths[b]`` events,
    ``timestamps (B, T)`` int64 (entries past a length are ignored), ``query_timestamps (B,)`` int64 = the time
    of the request after the last event (the target's time in training and evaluation).
    """

    def __init__(self, config: FuXiLinearConfig):
        super().__init__()
        if not isinstance(config, FuXiLinearConfig):
            raise TypeError(f"config must be a FuXiLinearConfig, got {type(config).__name__}")
        self.config = config
        c = config
        D = c.embedding_dim
        self._init_input_layer(c.num_items, D, c.absolute_position_table_size, c.dropout)
        periods = (torch.tensor(c.temporal_periods, dtype=torch.int64) if c.temporal_periods is not None else
                   temporal_periods(c.temporal_base, c.temporal_start, c.temporal_stride, c.temporal_num_periods))
        self.temporal = TemporalEncoding(periods, c.learn_temporal_decay, c.temporal_max_log_decay)
        # the public block, with the one encoding above shared by all blocks instead of one per block (SPEC §3)
        self.blocks = nn.ModuleList(
            FuXiLinearBlock._sharing_temporal_encoding(
                D, c.num_heads, c.qk_dim, c.ffn_hidden_dim, c.temporal_num_periods, c.temporal_skip, c.use_temporal,
                c.positional_dim, c.positional_table_size, c.dropout, c.backend)
            for _ in range(c.num_blocks)
        )
        self._step_cache = DerivedCache()  # step_operands
        self._compiled_step: Optional[CompiledDecodeStep] = None  # see compile_step

    # ------------------------------------------------------------------ inputs
    def _check(self, item_ids, timestamps, lengths, query_timestamps) -> Tuple[int, int]:
        """Validates a batch of histories; returns the shortest and the longest length (columns past the longest
        are padding everywhere)."""
        return check_history(item_ids, timestamps, lengths, query_timestamps, self.config.num_items,
                             self.config.max_positions)

    # ------------------------------------------------------------------ full histories
    def _forward_padded(self, item_ids, timestamps, lengths, query_timestamps, ragged: bool,
                        output_final_state: bool = False, last_only: bool = False):
        """Right-padded histories ``(B, T)`` through the blocks; returns ``(x, per-block channel states or None)``
        with ``x (B, T, D)``, or ``(B, D)`` at each user's last event when ``last_only`` (the last block then
        gates and mixes only those rows).

        Final states and last events are taken at ``lengths - 1``; a batch whose histories all fill the T
        columns (``ragged`` False) passes no lengths at all. The histories are never packed: on the CPU path each channel takes its
        state at the right event directly, so ragged batches are exact too (the Triton backend packs ragged
        batches instead, :meth:`_forward_packed`).
        """
        B, T = item_ids.shape
        dev = item_ids.device
        x = self._embed(item_ids, torch.arange(T, device=dev)[None, :])
        ends = lengths if ragged and (output_final_state or last_only) else None
        n = len(self.blocks)
        feats = None
        if self.config.use_temporal:  # the temporal operands are the same in every block: computed once
            feats = self.temporal.prefill_features(
                timestamps, lengths, query_timestamps, x.dtype, self.config.backend, ends=ends,
                all_outputs=not last_only or n > 1, last_outputs=last_only, final_state=output_final_state,
                ragged=ragged, head_width=self.config.embedding_dim // (2 * self.temporal.num_periods))
        states = []
        for i, block in enumerate(self.blocks):
            x, s = block._forward(x, feats, lengths=ends, output_final_state=output_final_state,
                                  outputs="last" if last_only and i == n - 1 else "all", backend=self.config.backend)
            states.append(s)
        return x, (states if output_final_state else None)

    def _forward_packed(self, item_ids, timestamps, lengths, query_timestamps, output_final_state: bool,
                        last_only: bool = False):
        """Runs the valid events only, packed as one sequence with ``cu_seqlens``; returns
        ``(y: (total, D) — (B, D) at each user's last event when last_only —, valid mask (B, T), per-block
        channel states or None)``."""
        B, T = item_ids.shape
        dev = item_ids.device
        valid = torch.arange(T, device=dev)[None, :] < lengths[:, None]
        positions = torch.arange(T, device=dev)[None, :].expand(B, T)[valid][None, :]  # (1, total)
        cu_seqlens = F.pad(torch.cumsum(lengths.long(), 0), (1, 0))
        x = self._embed(item_ids[valid][None, :], positions)
        feats = (self.temporal(timestamps, lengths, query_timestamps).select_rows(valid) if self.config.use_temporal
                 else None)
        states = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x, s = block._forward(x, feats, positions=positions, cu_seqlens=cu_seqlens, output_final_state=output_final_state,
                         outputs="last" if last_only and i == n - 1 else "all", backend=self.config.backend)
            states.append(s)
        return (x if last_only else x[0]), valid, (states if output_final_state else None)

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
            timestamps: ``(B, T)`` int64; entries past a user's length are ignored. Decreasing times are legal
                (their gaps clamp to 0: no decay).
            lengths: ``(B,)`` int64 in [1, T].
            query_timestamps: ``(B,)`` int64, the time of the request after each user's last event.
            packed: run only the valid events, packed with ``cu_seqlens`` (faster with the Triton kernels when
                lengths vary a lot; the CPU path computes padded rows either way).
        Returns:
            ``(B, T, D)`` L2-normalised user vectors (float32 for a float32 model); zero at padding.
        """
        shortest, used = self._check(item_ids, timestamps, lengths, query_timestamps)
        item_ids, lengths = cast(item_ids, torch.int64), cast(lengths, torch.int64)
        T = item_ids.shape[1]
        if packed:
            y, valid, _ = self._forward_packed(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps,
                                               False)
            out = y.new_zeros(item_ids.shape[0], used, y.shape[-1])
            out[valid] = y
        else:
            out, _ = self._forward_padded(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps,
                                          ragged=shortest < used)
            out = out * (item_ids[:, :used] != 0).unsqueeze(-1).to(out.dtype)
        out = l2_normalize(out)
        return F.pad(out, (0, 0, 0, T - used)) if used < T else out

    # ------------------------------------------------------------------ serving
    def prefill(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> Tuple[torch.Tensor, DecodeState]:
        """Encode whole histories once; returns the user vector at each user's last event ``(B, D)`` and the
        :class:`DecodeState` from which :meth:`step` appends events. Arguments as in :meth:`encode`.

        Only the last events go through the last block's gate and FFN; histories are packed only for the Triton
        backend when their lengths differ."""
        shortest, used = self._check(item_ids, timestamps, lengths, query_timestamps)
        item_ids, lengths = cast(item_ids, torch.int64), cast(lengths, torch.int64)
        ragged = shortest < used
        ids, ts = (item_ids[:, :used], timestamps[:, :used]) if used < item_ids.shape[1] else (item_ids, timestamps)
        if not ragged or uses_cpu_path(self.config.backend, ids.device):
            y, states = self._forward_padded(ids, ts, lengths, query_timestamps, ragged, True, last_only=True)
        else:
            y, _, states = self._forward_packed(ids, ts, lengths, query_timestamps, True, last_only=True)
        last_timestamp = (timestamps.gather(1, (lengths - 1)[:, None]).squeeze(1) if ragged else
                          timestamps[:, used - 1]).clone()
        state = DecodeState(
            retention=torch.stack([s[0] for s in states]),
            temporal=torch.stack([s[1] for s in states]),
            positional=torch.stack([s[2] for s in states]),
            last_timestamp=last_timestamp,
            position=lengths.clone(),
        )
        return l2_normalize(y), state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> DecodeState:
        """An all-zero :class:`DecodeState` of ``num_users`` rows for this model (a pool to prefill into):
        float64 states for a float64 model, float32 otherwise; on the model's device unless ``device``."""
        ref = self.blocks[0].uvqk
        device = ref.device if device is None else torch.device(device)
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        return DecodeState(**{name: torch.zeros(shape, dtype=dtype if kinds is _STATE_FLOATS else torch.int64,
                                                device=device)
                              for name, shape, kinds in self._state_layout(num_users)})

    def _state_layout(self, P: int) -> tuple:
        """``(field, shape, allowed dtypes)`` of each tensor of a :class:`DecodeState` of ``P`` rows."""
        c = self.config
        L, D, H, Ht = c.num_blocks, c.embedding_dim, c.num_heads, 2 * c.temporal_num_periods
        return (("retention", (L, P, H, c.qk_dim, D // H), _STATE_FLOATS),
                ("temporal", (L, P, Ht, 2, D // Ht), _STATE_FLOATS),
                ("positional", (L, P, 1, c.positional_dim, D), _STATE_FLOATS),
                ("last_timestamp", (P,), _STATE_INTS), ("position", (P,), _STATE_INTS))

    def _check_state(self, state: object) -> DecodeState:
        """A :class:`DecodeState` laid out for this model (shapes, dtypes, one device): metadata only."""
        if not isinstance(state, DecodeState):
            raise TypeError(f"state must be a DecodeState, got {type(state).__name__}")
        device = state.device
        for name, shape, kinds in self._state_layout(state.num_users):  # a decode step pays for every line here
            t = getattr(state, name)
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                raise ValueError(f"state.{name} must have shape {shape} for this model, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.device != device:
                raise ValueError(f"state.{name} is on {t.device}, the rest of the state on {device}")
            if t.dtype not in kinds:
                raise TypeError(f"state.{name} must have dtype in {kinds}, got {t.dtype}")
        return state

    def check_step(
        self,
        state: DecodeState,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
        state_indices: Optional[torch.Tensor] = None,
        validate: Union[bool, str] = True,
    ) -> None:
        """The checks :meth:`step` runs (see its ``validate``); raises ``TypeError``/``ValueError`` naming the
        argument. Metadata on the host; the values (item ids, positions, state rows) in one batch."""
        mode = resolve_value_check_mode(validate, state.device if isinstance(state, DecodeState) else
                                        torch.device("cpu"))
        if mode is None:
            return
        state = self._check_state(state)
        P = state.num_users
        checks = ValueChecks()
        if state_indices is None:
            N, positions = P, state.position
        else:
            if not isinstance(state_indices, torch.Tensor) or state_indices.ndim != 1 or \
                    state_indices.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"state_indices must be a 1-D int64 (or int32) tensor (N,), got "
                                f"{getattr(state_indices, 'dtype', type(state_indices).__name__)} "
                                f"{tuple(getattr(state_indices, 'shape', ()))}")
            if state_indices.device != state.device:
                raise ValueError(f"state_indices must be on the state's device {state.device}, got "
                                 f"{state_indices.device}")
            N = state_indices.shape[0]
            add_distinct_rows_check(checks, "state_indices", state_indices, P)
            # clamped so that an index out of range is reported by the check above, not by the gather
            positions = state.position.index_select(0, state_indices.clamp(0, max(P - 1, 0))) if P else \
                state.position[:0]
        check_step_events(item_ids, timestamps, query_timestamps, N, self.config.num_items, "state", state.device,
                          checks)
        limit = self.config.max_positions
        if positions.numel():
            checks.add([positions.max()], 0, limit - 1,
                       lambda v: f"a user would reach position {v[0]}, beyond the model's position tables "
                                 f"({limit} positions); re-prefill the most recent events instead",
                       f"a user would reach a position beyond the model's position tables ({limit} positions)")
        checks.run(mode)

    def step(
        self,
        state: DecodeState,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
        state_indices: Optional[torch.Tensor] = None,
        validate: Union[bool, str] = True,
    ) -> Tuple[torch.Tensor, DecodeState]:
        """Append one event per user in O(1) of the history length.

        Args:
            state: from :meth:`prefill`, an earlier step or :meth:`empty_state`; advanced IN PLACE and returned.
            item_ids: ``(N,)`` int64 ids of the new events (no padding: 1..num_items).
            timestamps: ``(N,)`` int64 times of the new events.
            query_timestamps: ``(N,)`` int64 request times after the new events.
            state_indices: optional ``(N,)`` int64 distinct rows of ``state`` (a pool) that the N events belong
                to; the other rows are left untouched. Without it, user n is row n and N = ``state.num_users``.
            validate: ``True`` (default) checks everything: shapes, dtypes and devices on the host, then the
                values (item ids in range, positions within the tables, state rows in range and distinct) in
                one batch -- on a CPU read back at once (``ValueError``), on CUDA as device-side asserts
                (``torch._assert_async``: no host synchronisation, capturable in a CUDA graph; a failure
                surfaces at the next synchronisation and leaves the CUDA context unusable). ``"sync"``:
                the values read back on any device (one host synchronisation; a clear ``ValueError`` at
                once, also on CUDA). ``"async"``: device-side asserts on any device (a ``RuntimeError``
                on a CPU). ``False``: no checks at all, for callers that guarantee their inputs (bad
                values are then undefined behaviour: out-of-range gathers, racing rows).
        Returns:
            ``(user vectors (N, D), state)``.

        The step runs without autograd (decode is inference) and never synchronises with the device
        itself: with ``validate=False`` or the CUDA default it issues no host synchronisation at all. After
        :meth:`compile_step`, steps of CPU states run compiled (the checks stay as they are).
        """
        self.check_step(state, item_ids, timestamps, query_timestamps, state_indices, validate)
        with torch.no_grad():
            rows = None if state_indices is None else state_indices.long()
            args = (self.step_operands(), item_ids, timestamps, query_timestamps, state.retention, state.temporal,
                    state.positional, state.last_timestamp, state.position, rows)
            compiled = self._compiled_step
            if compiled is not None and state.device.type == "cpu":
                user = compiled(*args)
            else:
                user = decode_step(*args, backend=self.config.backend)
            return user, state

    def step_operands(self) -> ModelStepOperands:
        """The operands of a decode step besides the events and the states
        (:class:`~fuxi_linear.decoding.decode_step.ModelStepOperands`): the embeddings, the temporal constants and every
        block's step weights, cached together (one check of the parameters per step) and rebuilt only when
        one of the parameters they derive from changes."""
        return self._step_cache.get(self._step_sources, self._build_step_operands)

    def _step_sources(self) -> list:
        sources = [self.item_embedding.weight, self.position_embedding.weight]
        if self.config.use_temporal:
            sources += self.temporal.step_sources()
        for block in self.blocks:
            sources += block.step_sources()
        return sources

    def _build_step_operands(self) -> ModelStepOperands:
        return ModelStepOperands(
            item_table=self.item_embedding.weight, position_table=self.position_embedding.weight,
            temporal=temporal_step_constants(self.temporal) if self.config.use_temporal else None,
            blocks=tuple(block.step_weights() for block in self.blocks))

    def compile_step(self, enabled: bool = True, options: Optional[dict] = None) -> "FuXiLinear":
        """Run :meth:`step` on CPU states through ``torch.compile``: the whole step
        (:func:`~fuxi_linear.decoding.decode_step.decode_step`) as one graph of inductor's C++ code, about half the time
        of the eager step at the CPU bench defaults (a step of a few users is bound by per-operation
        overhead); returns ``self``.

        The first step compiles, which takes tens of seconds on a small CPU (inductor keeps the result in its
        on-disk cache for later processes); one graph then serves every batch size above 1, with or without
        ``state_indices``; a new dtype, a batch of one, a second pool size or another thread count compile
        once more (:class:`~fuxi_linear.decoding.compiled_step.CompiledDecodeStep`). If compiling fails
        (no C++ compiler, an unsupported platform) the step warns once and runs eagerly. Steps on CUDA states
        are not affected (they run the fused Triton kernel; :class:`fuxi_linear.serving.Decoder` replays
        them from CUDA graphs). ``enabled=False`` switches back to eager steps; ``options``: inductor options
        for ``torch.compile`` (on top of :data:`~fuxi_linear.decoding.compiled_step.DEFAULT_OPTIONS`).
        """
        self._compiled_step = CompiledDecodeStep(options) if enabled else None
        return self

    @property
    def compiled_step(self) -> Optional[CompiledDecodeStep]:
        """The :class:`~fuxi_linear.decoding.compiled_step.CompiledDecodeStep` after :meth:`compile_step` (its
        ``active`` and ``failure`` say whether steps still run compiled), None while steps run eagerly."""
        return self._compiled_step
