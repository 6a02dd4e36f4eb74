"""The FuXi-Linear model (SPEC §6): item/position embeddings, L blocks, L2-normalised user vectors,
sampled-softmax training and O(1)-per-event decode."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import FuXiLinearConfig
from .decode_state import DecodeState
from .history_inputs import check_history, check_step_events
from .layers.block import FuXiLinearBlock
from .layers.temporal import TemporalEncoding, TemporalFeatures, temporal_periods
from .ops.prefill import cast, uses_plan
from .retrieval import SequentialRetrievalMixin, l2_normalize


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
        self.blocks = nn.ModuleList(
            FuXiLinearBlock(D, c.num_heads, c.qk_dim, c.ffn_hidden_dim, c.temporal_num_periods, c.positional_dim,
                            c.positional_table_size, c.dropout)
            for _ in range(c.num_blocks)
        )

    # ------------------------------------------------------------------ inputs
    def _check(self, item_ids, timestamps, lengths, query_timestamps) -> Tuple[int, int]:
        """Validates a batch of histories; returns the shortest and the longest length (columns past the longest
        are padding everywhere)."""
        return check_history(item_ids, timestamps, lengths, query_timestamps, self.config.num_items,
                             self.config.max_positions)

    # ------------------------------------------------------------------ full histories
    def _forward_padded(self, item_ids, timestamps, lengths, query_timestamps, output_final_state: bool = False,
                        last_only: bool = False, ragged: Optional[bool] = None):
        """Right-padded histories ``(B, T)`` through the blocks; returns ``(x, per-block channel states or None)``
        with ``x (B, T, D)``, or ``(B, D)`` at each user's last event when ``last_only`` (the last block then
        gates and mixes only those rows).

        Final states and last events are taken at ``lengths - 1``; a batch whose histories all fill the T
        columns (``ragged`` False; None: find out) passes no lengths at all. The histories are never packed: on the CPU path each channel takes its
        state at the right event directly, so ragged batches are exact too (the Triton backend packs ragged
        batches instead, :meth:`_forward_packed`).
        """
        B, T = item_ids.shape
        dev = item_ids.device
        x = self._embed(item_ids, torch.arange(T, device=dev)[None, :])
        if not output_final_state and not last_only:
            ends = None
        elif ragged is None:
            ends = None if bool((lengths == T).all()) else lengths
        else:
            ends = lengths if ragged else None
        n = len(self.blocks)
        if not self.config.use_temporal:
            feats = None
        elif uses_plan(self.config.backend, dev):  # the temporal operands are the same in every block: once
            feats = self.temporal.prepare(timestamps, lengths, query_timestamps, x.dtype, ends=ends,
                                          all_outputs=not last_only or n > 1, last_outputs=last_only,
                                          final_state=output_final_state, ragged=ragged is not False,
                                          head_width=self.config.embedding_dim // (2 * self.temporal.num_periods))
        else:
            feats = self.temporal(timestamps, lengths, query_timestamps)
        states = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, feats, lengths=ends, output_final_state=output_final_state,
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
        feats = self.temporal(timestamps, lengths, query_timestamps) if self.config.use_temporal else None
        if feats is not None:
            feats = TemporalFeatures(q=feats.q[valid][None], k=feats.k[valid][None], g=feats.g[valid][None])
        states = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x, s = block(x, feats, positions=positions, cu_seqlens=cu_seqlens, output_final_state=output_final_state,
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
        _, used = self._check(item_ids, timestamps, lengths, query_timestamps)
        item_ids, lengths = cast(item_ids, torch.int64), cast(lengths, torch.int64)
        T = item_ids.shape[1]
        if packed:
            y, valid, _ = self._forward_packed(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps,
                                               False)
            out = y.new_zeros(item_ids.shape[0], used, y.shape[-1])
            out[valid] = y
        else:
            out, _ = self._forward_padded(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps)
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
        if not ragged or uses_plan(self.config.backend, ids.device):
            y, states = self._forward_padded(ids, ts, lengths, query_timestamps, True, last_only=True, ragged=ragged)
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

    def step(
        self,
        state: DecodeState,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> Tuple[torch.Tensor, DecodeState]:
        """Append one event per user in O(1) of the history length.

        Args:
            state: from :meth:`prefill` or an earlier step; it is advanced IN PLACE and returned.
            item_ids: ``(N,)`` int64 ids of the new events (no padding: 1..num_items).
            timestamps: ``(N,)`` int64 times of the new events.
            query_timestamps: ``(N,)`` int64 request times after the new events.
        Returns:
            ``(user vectors (N, D), state)``.
        """
        if not isinstance(state, DecodeState):
            raise TypeError(f"state must be a DecodeState, got {type(state).__name__}")
        N = state.num_users
        check_step_events(item_ids, timestamps, query_timestamps, N, self.config.num_items, "state", state.device)
        if N and int(state.position.max()) >= self.config.max_positions:
            raise ValueError(
                f"a user would reach position {int(state.position.max())}, beyond the model's position tables "
                f"({self.config.max_positions} positions); re-prefill the most recent events instead"
            )
        item_ids = item_ids.long()
        positions = state.position
        x = self._embed(item_ids, positions)
        feats = self.temporal.features(timestamps, query_timestamps, timestamps - state.last_timestamp)
        for i, block in enumerate(self.blocks):
            states = (state.retention[i], state.temporal[i], state.positional[i])
            x = block.step(x, feats if self.config.use_temporal else None, positions, states,
                           backend=self.config.backend)
        state.last_timestamp.copy_(timestamps)
        state.position.add_(1)
        return l2_normalize(x), state
